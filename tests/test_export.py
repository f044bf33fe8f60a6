"""ONNX export and ONNX Runtime vs PyTorch parity for both networks (the model contract)."""
import subprocess
import sys

import cv2
import numpy as np
import onnx
import pytest
import torch

from skyloc.errors import ModelMismatchError, SkylocError
from skyloc.export.onnx_export import export_onnx
from skyloc.export.verify import sample_images, verify
from skyloc.models import create_model
from skyloc.models.checkpoint import load_model, save_checkpoint
from skyloc.runtime.embedder import OnnxEmbedder, embed_images
from skyloc.runtime.preprocess import load_image
from skyloc.train.predict import predict

SMALL = ["mlr_convnext_atto", "mlr_convnext_atto_layout", "mift_tiny"]


@pytest.fixture(scope="module", params=SMALL)
def exported(request, tmp_path_factory):
    torch.manual_seed(0)
    model = create_model(request.param, num_classes=11).eval()
    path = tmp_path_factory.mktemp("onnx") / f"{request.param}.onnx"
    meta = export_onnx(model, path)
    return model, path, meta


@pytest.mark.parametrize("batch", [1, 5])
def test_onnxruntime_matches_pytorch(exported, batch):
    model, path, _ = exported
    sess = OnnxEmbedder(path, providers=["CPUExecutionProvider"])
    x = torch.randn(batch, *model.data_config.input_size, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        ref = model.embed(x).numpy()
    got = sess.embed_tensor(x.numpy())
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= 1e-4
    cos = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
    assert cos.min() >= 0.9999


def test_onnx_carries_the_metadata_and_io_contract(exported):
    model, path, meta = exported
    proto = onnx.load(str(path))
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["skyloc.model_name"] == model.model_name
    assert int(props["skyloc.embedding_dim"]) == model.embed_dim
    assert props["skyloc.fingerprint"] == meta.fingerprint
    assert props["skyloc.input_size"] == str(list(model.data_config.input_size)).replace(" ", "").replace(",", ", ")
    assert "skyloc.mean" in props and "skyloc.std" in props and props["skyloc.format_version"] == "1"
    assert [i.name for i in proto.graph.input] == ["image"]
    assert [o.name for o in proto.graph.output] == ["embedding"]
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param == "batch"  # dynamic batch
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) == 17
    onnx.checker.check_model(proto, full_check=True)


def test_image_files_give_the_same_descriptor_in_runtime_and_evaluation(exported, tmp_path):
    """User-level parity: cv2-decoded file -> runtime preprocessing + ORT vs PyTorch eval pipeline."""
    model, path, _ = exported
    files = []
    for i, img in enumerate(sample_images(4, size=300, seed=5)):
        p = tmp_path / f"frame{i}.jpg"
        cv2.imwrite(str(p), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        files.append(p)
    ref = predict(model, files)
    got = embed_images(OnnxEmbedder(path), [load_image(p) for p in files])
    assert np.abs(got - ref).max() <= 1e-4
    report = verify(path, model, image_files=files)
    assert report.ok, report.rows
    assert report.ranking_agreement == 1.0


def test_verify_refuses_other_weights(exported):
    model, path, _ = exported
    other = create_model(model.model_name, num_classes=11)
    with pytest.raises(ModelMismatchError, match="export again"):
        verify(path, other)


def test_checkpoint_round_trip_and_bad_checkpoints(tmp_path):
    m = create_model("mift_tiny", num_classes=4)
    save_checkpoint(tmp_path / "a.pt", m, epoch=1)
    loaded, state = load_model(tmp_path / "a.pt")
    assert state["model_name"] == "mift_tiny" and loaded.num_classes == 4
    with pytest.raises(ModelMismatchError, match="is a mift_tiny checkpoint, not mlr_convnext_atto"):
        load_model(tmp_path / "a.pt", expect_model="mlr_convnext_atto")
    with pytest.raises(SkylocError, match="checkpoint not found"):
        load_model(tmp_path / "missing.pt")
    (tmp_path / "corrupt.pt").write_bytes(b"\x00not a checkpoint")
    with pytest.raises(SkylocError, match="corrupt"):
        load_model(tmp_path / "corrupt.pt")


def test_cli_export_and_verify_give_clear_errors(tmp_path):
    """(export then verify succeeding through the CLI is test_cli's README workflow)"""
    m = create_model("mlr_convnext_atto", num_classes=5)
    save_checkpoint(tmp_path / "m.pt", m)
    skyloc = [sys.executable, "-m", "skyloc.cli"]
    # a checkpoint of the other model, a missing file: one line, no traceback
    r = subprocess.run(skyloc + ["export", str(tmp_path / "m.pt"), "--out", str(tmp_path / "x.onnx"),
                                 "--model-name", "mift_tiny"], capture_output=True, text=True)
    assert r.returncode == 2 and "not mift_tiny" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run(skyloc + ["verify", str(tmp_path / "nope.onnx"), str(tmp_path / "m.pt")], capture_output=True, text=True)
    assert r.returncode == 2 and "model not found" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("name", ["mlr_convnext_tiny", "mift_small"])
def test_paper_sized_variants_export_and_match(tmp_path, name):
    """The paper-sized networks export too (MIFT's grouped attention is plain reshape/permute)."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=701).eval()
    export_onnx(model, tmp_path / f"{name}.onnx")
    x = torch.randn(2, *model.data_config.input_size)
    with torch.no_grad():
        ref = model.embed(x).numpy()
    got = OnnxEmbedder(tmp_path / f"{name}.onnx").embed_tensor(x.numpy())
    assert np.abs(got - ref).max() <= 1e-4
