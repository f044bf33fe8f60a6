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
