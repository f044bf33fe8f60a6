"""Cross-season check on real NAIP imagery (skipped where ../shared/data/naip is absent)."""
import pytest

from tests.conftest import SHARED_DATA

NAIP = SHARED_DATA / "naip"
pytestmark = pytest.mark.skipif(not (NAIP / "naip_20090818.tif").is_file(),
                                reason="real imagery ../shared/data/naip is absent (only the project's CI has it)")


def test_train_on_2009_west_retrieve_on_2020_east(tmp_path):
    """Train on one region and date, evaluate on another region and date: R@1 above chance."""
    from skyloc.models.checkpoint import load_model
    from skyloc.runtime.geo import GeoMap, crop_geotiff
    from skyloc.synth.pairs import PairsConfig, make_pairs
    from skyloc.train.config import TrainConfig
    from skyloc.train.evaluate import evaluate
    from skyloc.train.trainer import train

    west = crop_geotiff(NAIP / "naip_20090818.tif", tmp_path / "w2009.tif", 0.0, 0.6)
    east = crop_geotiff(NAIP / "naip_20200831.tif", tmp_path / "e2020.tif", 0.6, 1.0)
    assert GeoMap(west).crs.to_string() == "EPSG:26914" and GeoMap(east).gsd == pytest.approx(5.0)
    alt = (330.0, 420.0)
    make_pairs(west, tmp_path / "train", PairsConfig(classes=64, views=6, test_fraction=0.0, altitude=alt, seed=1))
    make_pairs(east, tmp_path / "test", PairsConfig(classes=24, views=3, test_fraction=1.0, altitude=alt, seed=2))
    r = train(TrainConfig(model="mlr_convnext_atto", data=str(tmp_path / "train"), out=str(tmp_path / "run"), epochs=5,
                          batch_size=16, k_sat=2, lr=0.02, backbone_lr=0.01, milestones=[4], loss="infonce",
                          temperature=0.1, amp=False, workers=0))
    model, _ = load_model(r["checkpoint"])
    d2s = evaluate(model, tmp_path / "test")[0]
    chance = 100.0 / d2s["gallery"]
    print(f"NAIP 2009-west -> 2020-east drone->satellite R@1 {d2s['R@1']:.1f}% (chance {chance:.1f}%)")
    assert d2s["R@1"] >= 2 * chance


def test_a_frame_without_yaw_registers_on_a_coarse_map_of_another_date():
    """NAIP at 1000 m: the 2020 camera on the 2015 map (5 m/px) without any heading. Over the whole
    circle at once the ratio test drops the true matches of a coarse frame's few features; the
    heading searched as narrow steps finds the place and the heading (`split_headings`)."""
    import math

    import numpy as np
    import rasterio

    from skyloc.runtime.camera import Intrinsics, Pose
    from skyloc.runtime.geo import GeoMap
    from skyloc.runtime.registration import MapRegistration, RegistrationConfig
    from skyloc.synth.render import Camera, render_view

    with rasterio.open(NAIP / "naip_20200831.tif") as src:
        image, transform = np.ascontiguousarray(src.read([1, 2, 3]).transpose(1, 2, 0)), src.transform
    gm = GeoMap(NAIP / "naip_20150926.tif")
    left, bottom, right, top = gm.bounds
    intr = Intrinsics(852, 480, 60.0)
    found = wide_found = 0
    for k, (fx, fy, yaw) in enumerate([(0.35, 0.4, 351.0), (0.55, 0.6, 120.0), (0.6, 0.35, 230.0)]):
        x, y = left + (right - left) * fx, bottom + (top - bottom) * fy
        frame = render_view(image, transform, Camera(x, y, 1000.0, yaw, 0.0, 60.0, 852, 480))
        guess = Pose(x + 40.0, y - 30.0, 1000.0, (yaw + 97.0 * (k + 1)) % 360)  # the heading is unknown
        r = MapRegistration(gm).register(frame, intr, guess, 100.0, rotation_tol_deg=180.0)
        if r.ok:
            found += 1
            assert math.hypot(r.x - x, r.y - y) < 15.0
            assert abs((guess.yaw + r.rotation_deg - yaw + 180) % 360 - 180) < 3.0
        wide = MapRegistration(gm, RegistrationConfig(split_max_features=0))
        wide_found += wide.register(frame, intr, guess, 100.0, rotation_tol_deg=180.0).ok
    print(f"NAIP 1000 m without yaw: {found} of 3 verified in heading steps, {wide_found} in one wide search")
    assert found >= 2 and found > wide_found
