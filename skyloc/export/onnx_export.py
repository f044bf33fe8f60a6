"""ONNX export of a model's `embed` with dynamic batch and skyloc metadata."""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn as nn

from skyloc.errors import SkylocError
from skyloc.models import CrossViewModel, weights_fingerprint
from skyloc.runtime.metadata import ModelMeta

DEFAULT_OPSET = 17  # JetPack 5 / TensorRT 8.5 reads <= 17; TensorRT 10 reads up to 20
_TWO_GB = 2**31


class _Embed(nn.Module):
    """Wraps `model.embed` as the module's forward so the exporter traces the descriptor path."""

    def __init__(self, model: CrossViewModel):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model.embed(image)


def model_meta(model: CrossViewModel) -> ModelMeta:
    return ModelMeta(
        model_name=model.model_name,
        embedding_dim=model.embed_dim,
        fingerprint=weights_fingerprint(model),
        data_config=model.data_config,
    )


def export_onnx(model: CrossViewModel, out: str | Path, opset: int = DEFAULT_OPSET, batch: int = 2) -> ModelMeta:
    """Export `model.embed` to `out`: input `image` [B,3,H,W], output `embedding` [B,D].

    Uses the TorchScript exporter, which writes any opset from 11 up (TensorRT 8.5 needs <= 17),
    then stamps the metadata and runs the full ONNX checker.
    """
    import onnx

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().cpu()
    meta = model_meta(model)
    c, h, w = model.data_config.input_size
    dummy = torch.randn(batch, c, h, w)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Embed(model).eval(), (dummy,), str(out),
            input_names=["image"], output_names=["embedding"],
            dynamic_axes={"image": {0: "batch"}, "embedding": {0: "batch"}},
            opset_version=opset, do_constant_folding=True, dynamo=False,
        )
    proto = onnx.load(str(out))
    del proto.metadata_props[:]
    for key, value in meta.to_props().items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "skyloc"
    proto.doc_string = f"skyloc {meta.model_name}: image [B,3,{h},{w}] -> unit embedding [B,{meta.embedding_dim}]"
    if proto.ByteSize() >= _TWO_GB:
        onnx.save(proto, str(out), save_as_external_data=True, location=out.name + ".data")
    else:
        onnx.save(proto, str(out))
    try:
        onnx.checker.check_model(str(out), full_check=True)
    except Exception as exc:  # a failure here is a skyloc bug or an unsupported opset
        raise SkylocError(f"exported {out} fails the ONNX checker: {exc}") from None
    return meta
