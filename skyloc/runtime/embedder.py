"""Embedder backends: ONNX Runtime (TensorRT > CUDA > CPU providers) and native TensorRT engines.

Both read the model metadata (input size, mean/std, fingerprint) and use the one shared
preprocessing in `skyloc.runtime.preprocess`.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

import numpy as np

from skyloc.errors import SkylocError
from skyloc.runtime.metadata import ModelMeta, read_onnx_meta, read_sidecar
from skyloc.runtime.preprocess import preprocess_batch

log = logging.getLogger("skyloc.embedder")

_PROVIDER_ORDER = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


class Embedder(Protocol):
    meta: ModelMeta
    backend: str

    def embed_tensor(self, batch: np.ndarray) -> np.ndarray: ...


def embed_images(embedder: Embedder, images: list[np.ndarray], batch_size: int = 32) -> np.ndarray:
    """RGB uint8 images -> float32 [N,D] descriptors, preprocessed the one shared way."""
    out = []
    for i in range(0, len(images), batch_size):
        out.append(embedder.embed_tensor(preprocess_batch(images[i : i + batch_size], embedder.meta.data_config)))
    if not out:
        return np.zeros((0, embedder.meta.embedding_dim), np.float32)
    return np.concatenate(out)


class OnnxEmbedder:
    """ONNX Runtime session over an exported skyloc model."""

    backend = "onnxruntime"

    def __init__(self, path: str | Path, providers: list[str] | None = None, threads: int = 0,
                 trt_cache_dir: str | Path | None = None):
        import onnxruntime as ort

        self.path = Path(path)
        self.meta = read_onnx_meta(self.path)
        available = ort.get_available_providers()
        wanted = providers or _PROVIDER_ORDER
        chosen = [p for p in wanted if p in available] or ["CPUExecutionProvider"]
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
        # Idle ORT threads would otherwise spin and steal the cores that matching, SIFT and
        # MAVLink need right after each frame.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        provider_args = []
        for p in chosen:
            if p == "TensorrtExecutionProvider":
                cache = Path(trt_cache_dir or self.path.parent / "trt_cache")
                cache.mkdir(parents=True, exist_ok=True)
                provider_args.append((p, {"trt_fp16_enable": True, "trt_engine_cache_enable": True,
                                          "trt_engine_cache_path": str(cache), "trt_timing_cache_enable": True}))
            else:
                provider_args.append(p)
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=opts, providers=provider_args)
        except Exception as exc:
            raise SkylocError(f"cannot start ONNX Runtime on {self.path}: {str(exc).splitlines()[0]}") from None
        self.providers = self.session.get_providers()
        self.input_name = self.session.get_inputs()[0].name
        log.info("onnxruntime %s (%s) providers=%s", self.path.name, self.meta.precision, self.providers)

    def embed_tensor(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})[0]


class TensorRTEmbedder:
    """A serialized TensorRT engine run with the TensorRT 10 API (`execute_async_v3`).

    Device buffers come from cuda-python; the engine's metadata comes from its JSON sidecar.
    """

    backend = "tensorrt"

    def __init__(self, engine_path: str | Path, max_batch: int | None = None):
        try:
            import tensorrt as trt
            from cuda.bindings import runtime as cudart
        except ImportError as exc:
            raise SkylocError(f"TensorRT backend needs tensorrt and cuda-python ({exc.name} missing): "
                              "pip install 'skyloc[trt]' or use --backend onnxruntime") from None
        self.trt, self.cudart = trt, cudart
        self.path = Path(engine_path)
        self.meta, sidecar = read_sidecar(self.path.with_suffix(".json"))
        if not self.path.is_file():
            raise SkylocError(f"engine not found: {self.path} (build it with `skyloc build-engine`)")
        self.logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(self.logger)
        self.engine = runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise SkylocError(f"cannot load engine {self.path}: built for another GPU or TensorRT version? "
                              "delete it and rebuild with `skyloc build-engine`")
        self.context = self.engine.create_execution_context()
        self.max_batch = int(max_batch or sidecar.get("max_batch", 1))
        self.dim = self.meta.embedding_dim
        c, h, w = self.meta.data_config.input_size
        self._in_bytes = self.max_batch * c * h * w * 4
        self._out_bytes = self.max_batch * self.dim * 4
        self.d_in = self._check(cudart.cudaMalloc(self._in_bytes))
        self.d_out = self._check(cudart.cudaMalloc(self._out_bytes))
        self.stream = self._check(cudart.cudaStreamCreate())
        self.context.set_tensor_address("image", int(self.d_in))
        self.context.set_tensor_address("embedding", int(self.d_out))

    def _check(self, result):
        err, *rest = result
        if int(err) != 0:
            raise SkylocError(f"CUDA error {err} while running {self.path.name}")
        return rest[0] if len(rest) == 1 else rest

    def embed_tensor(self, batch: np.ndarray) -> np.ndarray:
        cudart = self.cudart
        outs = []
        for i in range(0, len(batch), self.max_batch):
            x = np.ascontiguousarray(batch[i : i + self.max_batch], dtype=np.float32)
            y = np.empty((len(x), self.dim), np.float32)
            self.context.set_input_shape("image", tuple(x.shape))
            kind_h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
            kind_d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
            self._check(cudart.cudaMemcpyAsync(self.d_in, x.ctypes.data, x.nbytes, kind_h2d, self.stream))
            if not self.context.execute_async_v3(int(self.stream)):
                raise SkylocError(f"TensorRT execution failed on {self.path.name}")
            self._check(cudart.cudaMemcpyAsync(y.ctypes.data, self.d_out, y.nbytes, kind_d2h, self.stream))
            self._check(cudart.cudaStreamSynchronize(self.stream))
            outs.append(y)
        return np.concatenate(outs)

    def __del__(self):
        cudart = getattr(self, "cudart", None)
        if cudart is not None and hasattr(self, "d_out"):
            cudart.cudaFree(self.d_in)
            cudart.cudaFree(self.d_out)


def create_embedder(model_path: str | Path, backend: str = "auto", engine_cache: str | Path | None = None,
                    precision: str = "fp16", max_batch: int = 8, threads: int = 0) -> Embedder:
    """Open a model by path: `.engine` runs natively; `.onnx` on ONNX Runtime, or as a TensorRT
    engine built on first use and cached in `engine_cache` (backend='tensorrt').
    threads: ONNX Runtime's CPU threads (0: all cores; one per worker when several share a machine)."""
    path = Path(model_path)
    if not path.exists():
        raise SkylocError(f"model not found: {path} (export one with `skyloc export`)")
    if backend not in ("auto", "onnxruntime", "tensorrt"):
        raise SkylocError(f"unknown backend {backend!r}; use auto, onnxruntime or tensorrt")
    if path.suffix == ".engine":
        return TensorRTEmbedder(path, max_batch=max_batch)
    if backend == "tensorrt":
        from skyloc.runtime.engine import build_engine

        engine = build_engine(path, cache_dir=engine_cache, precision=precision, max_batch=max_batch)
        return TensorRTEmbedder(engine, max_batch=max_batch)
    return OnnxEmbedder(path, threads=threads)
