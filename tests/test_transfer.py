"""Retrieval that transfers: several training roots, cross-date pairs, appearance randomisation,
evaluation as users run it."""
import json
import os
import random
import subprocess
import sys

import cv2
import numpy as np
import pytest

from skyloc.errors import SkylocError
from skyloc.train.appearance import EFFECTS, randomise_appearance
from skyloc.train.datasets import PairDataset, source_balanced_weights, training_views


def _folder(root, classes, views=2, value=100):
    for c in classes:
        (root / "satellite" / c).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "satellite" / c / f"{c}.jpg"), np.full((40, 40, 3), value, np.uint8))
        (root / "drone" / c).mkdir(parents=True, exist_ok=True)
        for v in range(views):
            cv2.imwrite(str(root / "drone" / c / f"{v}.jpg"), np.full((40, 40, 3), value + v, np.uint8))
    return root


def test_several_roots_keep_their_classes_apart_and_are_drawn_equally(tmp_path):
    from skyloc.models import create_model

    a = _folder(tmp_path / "a", ["0001", "0002", "0003", "0004", "0005", "0006"])
    b = _folder(tmp_path / "b", ["0001", "0002"])  # the same class names, other places
    drone, sat = training_views([a, b])
    assert sorted(sat.classes) == ["0/0001", "0/0002", "0/0003", "0/0004", "0/0005", "0/0006", "1/0001", "1/0002"]
    ds = PairDataset(drone, sat, create_model("mlr_convnext_atto", 8).data_config, k_sat=2)
    w = source_balanced_weights(ds)
    assert len(w) == len(ds) == 16
    share_b = sum(float(w[i]) for i in range(len(ds)) if ds.classes[i % ds.num_classes].startswith("1/")) / float(w.sum())
    assert share_b == pytest.approx(0.5)  # 2 classes of b weigh as much as 6 of a


def test_training_on_two_roots_runs(tmp_path, pairs, heldout_pairs):
    from skyloc.train.config import TrainConfig
    from skyloc.train.trainer import train

    cfg = TrainConfig(model="mlr_convnext_atto", data=[str(pairs), str(heldout_pairs / "test")], out=str(tmp_path / "r"),
                      epochs=1, batch_size=8, max_steps=3, workers=0, amp=False, appearance=1.0, clip_grad=5.0)
    with pytest.raises(SkylocError, match="missing folder|not a known layout|no images"):
        train(cfg)  # heldout_pairs/test is not a dataset root: the error names it
    r = train(cfg.model_copy(update={"data": [str(pairs), str(pairs)]}))
    assert r["classes"] == 2 * 64 and np.isfinite(r["loss"][0])


def test_cross_date_pairs_render_the_drone_views_from_the_other_date(tmp_path):
    from skyloc.runtime.geo import GeoMap
    from skyloc.synth.pairs import PairsConfig, make_pairs
    from skyloc.synth.world import generate, write_geotiff

    summer = write_geotiff(generate(640, 1.0, seed=4), tmp_path / "summer.tif")
    autumn = write_geotiff(generate(640, 1.0, seed=4, season="autumn"), tmp_path / "autumn.tif")
    cfg = dict(classes=4, views=2, test_fraction=0.0, altitude=(70.0, 80.0), pitch_max=0.0, yaw_range=0.0,
               offset_m=0.0, seed=1)
    make_pairs(summer, tmp_path / "same", PairsConfig(**cfg))
    make_pairs(summer, tmp_path / "cross", PairsConfig(**cfg, drone_from=(str(autumn),)))
    same = cv2.imread(str(next((tmp_path / "same/train/drone").rglob("*.jpeg"))))
    cross = cv2.imread(str(next((tmp_path / "cross/train/drone").rglob("*.jpeg"))))
    tile = cv2.imread(str(next((tmp_path / "cross/train/satellite").rglob("*.jpg"))))
    hue = lambda im: cv2.cvtColor(im, cv2.COLOR_BGR2HSV)[..., 0].mean()  # noqa: E731
    # the tile is summer; the cross-date view is autumn-coloured, the same-date one is not
    assert abs(hue(cross) - hue(tile)) > abs(hue(same) - hue(tile)) + 2
    other = tmp_path / "other_crs.tif"
    import rasterio
    from rasterio.warp import reproject

    gm = GeoMap(summer)
    with rasterio.open(summer) as s:
        prof = s.profile.copy()
        prof.update(crs="EPSG:3857")
        with rasterio.open(other, "w", **prof) as d:
            d.write(s.read())
    with pytest.raises(SkylocError, match="EPSG:3857.*reproject it first"):
        make_pairs(summer, tmp_path / "bad", PairsConfig(**cfg, drone_from=(str(other),)))
    assert gm.crs.to_string().startswith("EPSG:326") and reproject  # the map itself is UTM


def test_every_appearance_effect_changes_the_image_and_keeps_its_shape():
    rng = np.random.default_rng(0)
    img = np.clip(rng.normal(120, 40, (64, 64, 3)), 0, 255).astype(np.uint8)
    img[:, :, 1] = np.clip(img[:, :, 1].astype(int) + 40, 0, 255)  # greenish, for the season effect
    for name, (fn, p) in EFFECTS.items():
        out = fn(img.copy(), random.Random(1))
        assert out.shape == img.shape and out.dtype == np.uint8, name
        assert np.abs(out.astype(int) - img.astype(int)).mean() > 1.0, name
        assert 0 < p <= 1
    assert np.array_equal(randomise_appearance(img, random.Random(5), 0.0), img)  # strength 0: untouched
    a = randomise_appearance(img, random.Random(7), 1.0)
    assert np.array_equal(a, randomise_appearance(img, random.Random(7), 1.0))  # reproducible from the seed


def test_evaluate_a_plain_folder_with_json_and_an_80_column_table(tmp_path, trained, heldout_pairs):
    plain = tmp_path / "plain"
    for view, src in (("drone", "query_drone"), ("satellite", "gallery_satellite")):
        for d in sorted((heldout_pairs / "test" / src).iterdir())[:8]:
            (plain / view / d.name).mkdir(parents=True)
            for f in d.iterdir():
                (plain / view / d.name / f.name).write_bytes(f.read_bytes())
    cmd = [sys.executable, "-m", "skyloc.cli", "evaluate", trained["checkpoint"], "--data", str(plain)]
    r = subprocess.run(cmd + ["--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-1500:]
    rows = json.loads(r.stdout)["results"]
    assert {x["task"] for x in rows} == {"drone->satellite", "satellite->drone"} and rows[0]["dataset"] == "folder"
    assert rows[0]["gallery"] == 8 and rows[0]["queries"] == 8 * 3
    assert rows[0]["flip"] is True  # University-1652's flip averaging: this model was not trained aligned
    r = subprocess.run(cmd, capture_output=True, text=True, env={"COLUMNS": "80", "PATH": "", "TERM": "dumb"})
    assert r.returncode == 0, r.stderr[-1500:]
    lines = r.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), max(lines, key=len)
    assert any("drone->sat" in line and "full" in line for line in lines)  # labels whole, not cut to "drone…"
    assert "…" not in r.stdout


def test_evaluate_puts_test_sets_side_by_side(tmp_path, trained, heldout_pairs):
    """Same-date and cross-date (here: a set and its copy) in one command, the last table comparing them."""
    import shutil

    again = shutil.copytree(heldout_pairs, tmp_path / "again")
    cmd = [sys.executable, "-m", "skyloc.cli", "evaluate", trained["checkpoint"], "--data", str(heldout_pairs),
           "--data", str(again)]
    r = subprocess.run(cmd + ["--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-1500:]
    out = json.loads(r.stdout)
    assert {x["data"] for x in out["results"]} == {str(heldout_pairs), str(again)}
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "COLUMNS": "80"})
    assert r.returncode == 0, r.stderr[-1500:]
    side = r.stdout[r.stdout.index("drone->sat, full gallery"):]
    assert side.count(heldout_pairs.name) == 1 and side.count("again") == 1
    assert side.count("+0.00") == 2  # the same images twice: no difference


def _textured_folder(root, classes=4, views=3):
    """Classes whose images differ in content, so that two draws of an item can be told apart."""
    rng = np.random.default_rng(0)
    for i in range(classes):
        c = f"{i:04d}"
        (root / "satellite" / c).mkdir(parents=True, exist_ok=True)
        (root / "drone" / c).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "satellite" / c / f"{c}.png"), rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
        for v in range(views):
            cv2.imwrite(str(root / "drone" / c / f"{v}.png"), rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    return root


def test_every_epoch_draws_new_views_and_augmentations_with_persistent_workers(tmp_path):
    """The loader's workers live across epochs: an epoch counter set in the main process never
    reached them, and every epoch repeated the first one's pairs."""
    import torch
    from torch.utils.data import DataLoader

    from skyloc.models import create_model

    drone, sat = training_views([_textured_folder(tmp_path / "a")])
    ds = PairDataset(drone, sat, create_model("mlr_convnext_atto", 4).data_config, k_sat=1)
    torch.manual_seed(0)
    loader = DataLoader(ds, batch_size=4, shuffle=False, num_workers=1, persistent_workers=True)
    epochs = [next(iter(loader)) for _ in range(3)]
    for a, b in zip(epochs, epochs[1:]):
        assert torch.equal(a[2], b[2])  # the same classes in the same order...
        assert not torch.allclose(a[1], b[1])  # ...but other drone views/augmentations
    torch.manual_seed(0)  # and reproducible from the run's seed
    again = DataLoader(ds, batch_size=4, shuffle=False, num_workers=1, persistent_workers=True)
    assert torch.allclose(next(iter(again))[1], epochs[0][1])


def test_aligned_pairs_are_turned_and_mirrored_together():
    from skyloc.train.datasets import turn_together

    img = np.arange(6 * 6 * 3, dtype=np.uint8).reshape(6, 6, 3)  # no symmetry
    outcomes = set()
    for seed in range(40):
        a, b = turn_together([img, img.copy()], random.Random(seed))
        assert np.array_equal(a, b)  # the same turn for both views of the pair
        outcomes.add(a.tobytes())
    assert len(outcomes) == 8  # 4 turns x mirror: every layout of the place is used


def test_adamw_with_cosine_schedule_warms_up_and_ends_near_zero(tmp_path, pairs):
    import csv

    from skyloc.models.checkpoint import read_checkpoint
    from skyloc.train.config import TrainConfig
    from skyloc.train.trainer import train

    cfg = TrainConfig(model="mlr_convnext_atto_layout", data=[str(pairs)], out=str(tmp_path / "r"), epochs=3,
                      batch_size=8, max_steps=4, workers=0, amp=False, optimizer="adamw", lr=1e-3,
                      backbone_lr=1e-3, weight_decay=0.05, schedule="cosine", warmup_epochs=1, ce_weight=0.0,
                      aligned=True, loss="infonce")
    r = train(cfg)
    assert np.isfinite(r["loss"]).all()
    state = read_checkpoint(r["checkpoint"])
    assert state["model_name"] == "mlr_convnext_atto_layout"
    assert state["optimizer"]["param_groups"][0].get("amsgrad") is not None  # AdamW's state, not SGD's
    from skyloc.train.evaluate import default_flip

    assert default_flip(state) is False  # evaluated as the runtime embeds frames: no mirror averaging
    lrs = [float(row["lr"]) for row in csv.DictReader(open(tmp_path / "r" / "log.csv"))]
    assert lrs[0] > lrs[1] > lrs[2] and lrs[2] < 0.1 * 1e-3  # past the warm-up, then down to ~0
    with pytest.raises(SkylocError, match="optimizer"):
        TrainConfig.parse({"optimizer": "adam"}, "recipe.yaml")


def test_model_kwargs_travel_from_the_recipe_to_the_checkpoint(tmp_path, pairs):
    """A recipe can change the model (here: no per-image standardisation); the checkpoint rebuilds
    exactly that model, a wrong argument is named, and a run of other arguments is not resumed."""
    import torch

    from skyloc.models import create_model
    from skyloc.models.checkpoint import load_model
    from skyloc.train.config import TrainConfig
    from skyloc.train.trainer import train

    base = dict(model="mlr_convnext_atto_layout", data=[str(pairs)], out=str(tmp_path / "r"), epochs=1,
                batch_size=8, max_steps=2, workers=0, amp=False, aligned=True, loss="infonce")
    r = train(TrainConfig(**base, model_kwargs={"image_norm": False}))
    model, state = load_model(r["checkpoint"])
    assert state["model_kwargs"] == {"image_norm": False}
    assert isinstance(model.standardise, torch.nn.Identity)
    assert not isinstance(create_model("mlr_convnext_atto_layout", 3).standardise, torch.nn.Identity)  # the default
    with pytest.raises(SkylocError, match="model_kwargs"):
        train(TrainConfig(**base), resume=True)  # same --out, other model: refused, not mixed
    with pytest.raises(SkylocError, match="does not take 'imagenorm'"):
        train(TrainConfig(**{**base, "out": str(tmp_path / "s")}, model_kwargs={"imagenorm": False}))


def test_layout_branch_tells_a_place_from_its_mirror_image():
    """North-up views of two places that differ only in where things are: the global average
    branch cannot tell them apart, the layout branch can, and the descriptor carries it."""
    import torch

    from skyloc.models import create_model

    torch.manual_seed(0)
    model = create_model("mlr_convnext_atto_layout", 4).eval()
    feats = torch.randn(1, model.backbone.num_features, 4, 4)
    mirror = torch.flip(feats, dims=[3])
    with torch.no_grad():
        a, b = model.forward_branches(feats), model.forward_branches(mirror)
    torch.testing.assert_close(a[0], b[0])  # global pooling: blind to the layout
    assert (a[-1] - b[-1]).norm() > 0.3 * a[-1].norm()  # the layout branch sees it
    assert len(a) == model.num_branches == 3  # the learned layout branch is in the descriptor
