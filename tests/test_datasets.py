"""Dataset layouts: University-1652, SUES-200, plain folders, and their errors."""
import cv2
import numpy as np
import pytest

from skyloc.errors import SkylocError
from skyloc.train.datasets import PairDataset, detect_layout, read_view
from skyloc.models import create_model


def _img(path, value=100):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((32, 32, 3), value, np.uint8))


def _u1652(root, classes=("0001", "0002", "0003")):
    for c in classes:
        _img(root / "train" / "satellite" / c / f"{c}.jpg")
        for v in range(2):
            _img(root / "train" / "drone" / c / f"image-{v:02d}.jpeg", 50 + v)
    for c in ("0101", "0102"):
        _img(root / "test" / "query_drone" / c / "image-01.jpeg")
        _img(root / "test" / "gallery_satellite" / c / f"{c}.jpg")
        _img(root / "test" / "query_satellite" / c / f"{c}.jpg")
        _img(root / "test" / "gallery_drone" / c / "image-01.jpeg")
    _img(root / "test" / "gallery_satellite" / "0999" / "0999.jpg")  # a distractor class


def test_university1652_layout(tmp_path):
    _u1652(tmp_path)
    lay = detect_layout(tmp_path)
    assert lay.kind == "university-1652"
    assert set(lay.test) == {"query_drone", "gallery_satellite", "query_satellite", "gallery_drone"}
    drone = read_view(lay.train_drone, "drone")
    assert drone.classes == ["0001", "0002", "0003"] and len(drone.items) == 6
    ds = PairDataset(drone, read_view(lay.train_satellite, "sat"), create_model("mift_tiny", 3).data_config, k_sat=3)
    assert len(ds) == 9 and ds.num_classes == 3
    sat, dr, label = ds[4]
    assert sat.shape == dr.shape == (3, 128, 128) and label.item() == 1


def test_sues200_layout_per_height(tmp_path):
    for h in ("150", "300"):
        _img(tmp_path / "Training" / h / "drone" / "0001" / "a.jpg")
        _img(tmp_path / "Training" / h / "satellite" / "0001" / "0.png")
        _img(tmp_path / "Testing" / h / "query_drone" / "0002" / "a.jpg")
    lay = detect_layout(tmp_path, "150")
    assert lay.kind == "sues-200@150m" and lay.train_drone == tmp_path / "Training" / "150" / "drone"
    assert "query_drone" in lay.test
    with pytest.raises(SkylocError, match="height '175' unknown"):
        detect_layout(tmp_path, "175")


def test_layout_errors_name_the_missing_folder(tmp_path):
    with pytest.raises(SkylocError, match="dataset folder not found"):
        detect_layout(tmp_path / "nope")
    (tmp_path / "random").mkdir()
    with pytest.raises(SkylocError, match="not a known layout"):
        detect_layout(tmp_path / "random")
    _img(tmp_path / "u" / "train" / "drone" / "0001" / "a.jpg")
    lay = detect_layout(tmp_path / "u")
    with pytest.raises(SkylocError, match=r"missing folder .*train/satellite"):
        read_view(lay.train_satellite, "training satellite views")
    (tmp_path / "u" / "train" / "satellite" / "0001").mkdir(parents=True)
    with pytest.raises(SkylocError, match="has no images"):
        read_view(lay.train_satellite, "training satellite views")


def test_evaluate_reports_missing_test_folder(tmp_path):
    from skyloc.train.evaluate import evaluate

    _u1652(tmp_path)
    import shutil

    shutil.rmtree(tmp_path / "test" / "gallery_drone")
    with pytest.raises(SkylocError, match="missing test folder gallery_drone"):
        evaluate(create_model("mift_tiny", 3), tmp_path)


def test_evaluate_runs_both_tasks_and_protocols(tmp_path):
    from skyloc.train.evaluate import evaluate

    _u1652(tmp_path)
    rows = evaluate(create_model("mift_tiny", 3), tmp_path)
    assert [(r["task"], r["protocol"]) for r in rows] == [
        ("drone->satellite", "full gallery"), ("drone->satellite", "distractor-free"),
        ("satellite->drone", "full gallery"), ("satellite->drone", "distractor-free")]
    assert rows[0]["gallery"] == 3 and rows[1]["gallery"] == 2  # the distractor class is dropped


def test_robustness_sweeps_cover_rotation_shift_and_size(tmp_path):
    from skyloc.train.evaluate import robustness

    _u1652(tmp_path)
    model = create_model("mlr_convnext_atto", 3)
    rows = robustness(model, tmp_path)
    names = [r["perturbation"] for r in rows]
    # the papers' 10/20 px shifts at 256 px become 5/10 px at this model's 128 px input
    assert names[:6] == ["none", "rotate 90 deg", "rotate 180 deg", "shift 5px black", "shift 10px black",
                         "shift 10px flip"]
    assert any(n.startswith("input 96px") for n in names) and any(n.startswith("input 160px") for n in names)
    assert model.data_config.height == 128  # restored
