"""Model metadata shared by ONNX files, TensorRT engine sidecars and tile-cache manifests."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from skyloc.errors import ModelMismatchError, SkylocError
from skyloc.runtime.preprocess import DataConfig

FORMAT_VERSION = 1


@dataclass(frozen=True)
class ModelMeta:
    """What the runtime needs to know about an exported model (no torch required)."""

    model_name: str
    embedding_dim: int
    fingerprint: str
    data_config: DataConfig
    format_version: int = FORMAT_VERSION
    precision: str = "fp32"  # "int8": made by `skyloc quantize` from a float model
    quantized_from: str | None = None  # the float model's fingerprint
    # Fingerprints whose caches this model may use: `skyloc quantize` adds the float model's when
    # it measured that the INT8 embeddings retrieve like the float ones on the user's map.
    accepts_caches_of: tuple[str, ...] = ()

    def to_props(self) -> dict[str, str]:
        """String key/values for ONNX metadata_props and engine sidecars."""
        return {
            "skyloc.format_version": str(self.format_version),
            "skyloc.model_name": self.model_name,
            "skyloc.embedding_dim": str(self.embedding_dim),
            "skyloc.fingerprint": self.fingerprint,
            "skyloc.input_size": json.dumps(list(self.data_config.input_size)),
            "skyloc.mean": json.dumps(list(self.data_config.mean)),
            "skyloc.std": json.dumps(list(self.data_config.std)),
            "skyloc.interpolation": self.data_config.interpolation,
            "skyloc.colour": self.data_config.colour,
            "skyloc.precision": self.precision,
            **({"skyloc.quantized_from": self.quantized_from} if self.quantized_from else {}),
            **({"skyloc.accepts_caches_of": json.dumps(list(self.accepts_caches_of))}
               if self.accepts_caches_of else {}),
        }

    @classmethod
    def from_props(cls, props: dict[str, str], source: str) -> "ModelMeta":
        try:
            version = int(props["skyloc.format_version"])
            if version > FORMAT_VERSION:
                raise SkylocError(f"{source} has skyloc format {version}; this skyloc reads <= {FORMAT_VERSION}: upgrade")
            return cls(
                model_name=props["skyloc.model_name"],
                embedding_dim=int(props["skyloc.embedding_dim"]),
                fingerprint=props["skyloc.fingerprint"],
                data_config=DataConfig(
                    input_size=tuple(json.loads(props["skyloc.input_size"])),
                    mean=tuple(json.loads(props["skyloc.mean"])),
                    std=tuple(json.loads(props["skyloc.std"])),
                    interpolation=props.get("skyloc.interpolation", "bicubic"),
                    colour=props.get("skyloc.colour", "rgb"),
                ),
                format_version=version,
                precision=props.get("skyloc.precision", "fp32"),
                quantized_from=props.get("skyloc.quantized_from"),
                accepts_caches_of=tuple(json.loads(props.get("skyloc.accepts_caches_of", "[]"))),
            )
        except KeyError as exc:
            raise SkylocError(
                f"{source} has no skyloc metadata ({exc.args[0]} missing): export it with `skyloc export`"
            ) from None
        except ValueError as exc:
            raise SkylocError(f"{source} has corrupt skyloc metadata ({exc}): export it again") from None

    def check_compatible(self, fingerprint: str, embedding_dim: int, what: str) -> None:
        """Refuse a cache/engine made with other weights: a silent wrong answer is worse."""
        if embedding_dim != self.embedding_dim:
            raise ModelMismatchError(
                f"{what} holds {embedding_dim}-d embeddings but model {self.model_name} makes "
                f"{self.embedding_dim}-d ones: rebuild it with this model (skyloc build-cache)"
            )
        if fingerprint in self.accepts_caches_of:
            return
        if fingerprint == self.quantized_from:
            raise ModelMismatchError(
                f"{what} was built with the float model {fingerprint} that this INT8 model "
                f"({self.fingerprint}) was quantized from, and `skyloc quantize` did not show that their "
                "embeddings match: rebuild it with this model (skyloc build-cache), or quantize again "
                "with --cache pointing at it to check"
            )
        if fingerprint != self.fingerprint:
            raise ModelMismatchError(
                f"{what} was built with model fingerprint {fingerprint}, but the model given has "
                f"{self.fingerprint} ({self.model_name}): rebuild it with this model (skyloc build-cache)"
            )


def write_sidecar(meta: ModelMeta, path: Path, extra: dict | None = None) -> None:
    data = {**meta.to_props(), **(extra or {})}
    path.write_text(json.dumps(data, indent=2))


def read_sidecar(path: Path) -> tuple[ModelMeta, dict]:
    if not path.is_file():
        raise SkylocError(f"engine metadata {path} is missing: rebuild the engine with `skyloc build-engine`")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SkylocError(f"engine metadata {path} is corrupt ({exc.msg}): rebuild the engine") from None
    return ModelMeta.from_props(data, str(path)), data


def read_onnx_meta(path: Path) -> ModelMeta:
    """Read skyloc metadata from an ONNX file with onnxruntime only (no onnx package needed)."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise SkylocError(f"model not found: {path} (export one with `skyloc export`)")
    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise SkylocError(f"cannot load ONNX model {path}: {str(exc).splitlines()[0]}") from None
    return ModelMeta.from_props(dict(sess.get_modelmeta().custom_metadata_map), str(path))
