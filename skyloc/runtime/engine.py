"""TensorRT engine building (TensorRT 10 Python API; 8.5 still parses the ONNX).

Engines are built on the target GPU (a Jetson builds its own on first start) and cached under a
key of TensorRT version + GPU name + ONNX file hash + precision + batch range, with the skyloc
metadata beside them as a JSON sidecar. No torch here: the runtime calls this on the drone.
"""
from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import numpy as np

from skyloc.errors import SkylocError
from skyloc.runtime.metadata import read_onnx_meta, write_sidecar
from skyloc.runtime.preprocess import load_image, preprocess_batch

log = logging.getLogger("skyloc.tensorrt")


def file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _gpu_name() -> str:
    from cuda.bindings import runtime as cudart

    err, props = cudart.cudaGetDeviceProperties(0)
    if int(err) != 0:
        raise SkylocError("no CUDA GPU visible: TensorRT engines are built on the GPU that runs them")
    name = props.name
    return (name.decode() if isinstance(name, bytes) else str(name)).strip("\x00 ")


def engine_key(onnx_path: Path, trt_version: str, gpu: str, precision: str, max_batch: int) -> str:
    raw = f"{trt_version}|{gpu}|{file_hash(onnx_path)}|{precision}|{max_batch}"
    return hashlib.sha256(raw.encode()).hexdigest()[:20]


def build_engine(onnx_path: str | Path, cache_dir: str | Path | None = None, precision: str = "fp16",
                 max_batch: int = 8, opt_batch: int | None = None, calib_images: list[Path] | None = None,
                 workspace_mb: int = 2048, force: bool = False) -> Path:
    """Build (or reuse from the cache) a TensorRT engine for an exported skyloc ONNX model."""
    try:
        import tensorrt as trt
    except ImportError:
        raise SkylocError("TensorRT is not installed: pip install 'skyloc[trt]' (x86) or use JetPack's "
                          "python3-libnvinfer on a Jetson") from None
    onnx_path = Path(onnx_path)
    meta = read_onnx_meta(onnx_path)
    if precision not in ("fp32", "fp16", "int8"):
        raise SkylocError(f"unknown precision {precision!r}; use fp32, fp16 or int8")
    if precision == "int8" and not calib_images:
        raise SkylocError("INT8 needs calibration images: pass --calib DIR with a few hundred frames")
    gpu = _gpu_name()
    key = engine_key(onnx_path, trt.__version__, gpu, precision, max_batch)
    cache = Path(cache_dir or onnx_path.parent / "engines")
    cache.mkdir(parents=True, exist_ok=True)
    engine_path = cache / f"{meta.model_name}-{precision}-{key}.engine"
    if engine_path.is_file() and engine_path.with_suffix(".json").is_file() and not force:
        log.info("engine cache hit: %s", engine_path)
        return engine_path

    logger = trt.Logger(trt.Logger.INFO)
    builder = trt.Builder(logger)
    flags = 0 if int(trt.__version__.split(".")[0]) >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise SkylocError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    c, h, w = meta.data_config.input_size
    profile = builder.create_optimization_profile()
    opt = min(opt_batch or 1, max_batch)  # the batch TensorRT tunes for (1: one camera frame)
    profile.set_shape("image", (1, c, h, w), (opt, c, h, w), (max_batch, c, h, w))
    config.add_optimization_profile(profile)
    if precision in ("fp16", "int8") and builder.platform_has_fast_fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    calibrator = None
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        calibrator = _make_calibrator(trt, calib_images, meta, cache / f"{meta.model_name}-{key}.calib")
        config.int8_calibrator = calibrator
        config.set_calibration_profile(profile)
    timing_path = cache / f"timing-{trt.__version__}-{gpu.replace(' ', '_')}.cache"
    timing = config.create_timing_cache(timing_path.read_bytes() if timing_path.is_file() else b"")
    config.set_timing_cache(timing, ignore_mismatch=True)
    if hasattr(trt, "IProgressMonitor"):
        config.progress_monitor = _progress_monitor(trt)

    log.info("building %s engine for %s on %s (TensorRT %s); this can take minutes on a Jetson",
             precision, meta.model_name, gpu, trt.__version__)
    t0 = time.time()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise SkylocError(f"TensorRT failed to build an engine from {onnx_path}; see the log lines above")
    engine_path.write_bytes(bytes(serialized))
    timing_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    write_sidecar(meta, engine_path.with_suffix(".json"), {
        "tensorrt_version": trt.__version__, "gpu": gpu, "precision": precision, "max_batch": max_batch,
        "onnx_sha256_16": file_hash(onnx_path), "build_seconds": round(time.time() - t0, 1),
    })
    log.info("engine built in %.1f s: %s", time.time() - t0, engine_path)
    return engine_path


def _progress_monitor(trt):
    class _Progress(trt.IProgressMonitor):
        """Log lines while TensorRT builds: phases start and finish."""

        def __init__(self):
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name, parent_phase, num_steps):
            log.info("tensorrt: %s (%d steps)", phase_name, num_steps)

        def step_complete(self, phase_name, step):
            return True

        def phase_finish(self, phase_name):
            log.debug("tensorrt: %s done", phase_name)

    return _Progress()


def _make_calibrator(trt, images: list[Path], meta, cache_file: Path, batch: int = 8):
    from cuda.bindings import runtime as cudart

    class _Calibrator(trt.IInt8EntropyCalibrator2):
        """Feeds preprocessed calibration frames to TensorRT's INT8 calibration."""

        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.files = list(images)
            self.index = 0
            c, h, w = meta.data_config.input_size
            err, self.device = cudart.cudaMalloc(batch * c * h * w * 4)

        def get_batch_size(self):
            return batch

        def get_batch(self, names):
            if self.index + batch > len(self.files):
                return None
            x = preprocess_batch([load_image(p) for p in self.files[self.index : self.index + batch]],
                                 meta.data_config)
            self.index += batch
            cudart.cudaMemcpy(self.device, np.ascontiguousarray(x).ctypes.data, x.nbytes,
                              cudart.cudaMemcpyKind.cudaMemcpyHostToDevice)
            return [int(self.device)]

        def read_calibration_cache(self):
            return cache_file.read_bytes() if cache_file.is_file() else None

        def write_calibration_cache(self, data):
            cache_file.write_bytes(bytes(data))

    return _Calibrator()
