"""TensorRT engines: built and compared with ONNX Runtime where a GPU and TensorRT exist."""
import importlib.util
import shutil

import numpy as np
import pytest
import torch

from skyloc.models import create_model


def _gpu_reason() -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT is not installed (pip install 'skyloc[trt]'; JetPack ships it)"
    if importlib.util.find_spec("cuda") is None:
        return "cuda-python is not installed"
    if shutil.which("nvidia-smi") is None or not torch.cuda.is_available():
        return "no NVIDIA GPU on this machine (CI and developer machines have none)"
    return None


REASON = _gpu_reason()


@pytest.mark.skipif(REASON is not None, reason=REASON or "")
@pytest.mark.parametrize("name", ["mlr_convnext_atto", "mlr_convnext_atto_layout", "mift_tiny"])
@pytest.mark.parametrize("precision,tol", [("fp32", 1e-3), ("fp16", 2e-2)])
def test_engine_matches_onnxruntime(tmp_path, name, precision, tol):
    from skyloc.export.onnx_export import export_onnx
    from skyloc.runtime.engine import build_engine
    from skyloc.runtime.embedder import OnnxEmbedder, TensorRTEmbedder

    torch.manual_seed(0)
    model = create_model(name, num_classes=10).eval()
    export_onnx(model, tmp_path / "m.onnx")
    engine = build_engine(tmp_path / "m.onnx", precision=precision, max_batch=4)
    assert engine.with_suffix(".json").is_file()
    assert build_engine(tmp_path / "m.onnx", precision=precision, max_batch=4) == engine  # cache hit
    x = np.random.default_rng(0).standard_normal((3, *model.data_config.input_size)).astype(np.float32)
    ref = OnnxEmbedder(tmp_path / "m.onnx", providers=["CPUExecutionProvider"]).embed_tensor(x)
    got = TensorRTEmbedder(engine, max_batch=4).embed_tensor(x)
    assert np.abs(got - ref).max() <= tol
    assert ((got * ref).sum(1)).min() >= (0.9999 if precision == "fp32" else 0.999)
