"""Map features: stored with the cache they are the same as detected in flight, a store of another
map or a damaged one is left unused with a warning, and the matcher's pruning never drops a pair."""
import json
import logging
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from skyloc.runtime.cache import TileCache, build_cache, describe_cache
from skyloc.runtime.features import MapFeatures, make_detector, open_store
from skyloc.runtime.geo import GeoMap
from skyloc.runtime.registration import MapRegistration, RegistrationConfig


@pytest.fixture(scope="module")
def feature_map(tmp_path_factory):
    from skyloc.synth.world import generate, write_geotiff

    return write_geotiff(generate(700, 0.5, seed=41), tmp_path_factory.mktemp("feat") / "map.tif", bands=1)


@pytest.fixture(scope="module")
def cache_with_features(tmp_path_factory, feature_map, embedder):
    return build_cache(feature_map, embedder, tmp_path_factory.mktemp("featc") / "m.cache", [120.0], overlap=0.5)


def test_stored_features_are_the_ones_detected_in_flight(cache_with_features, feature_map):
    gm = GeoMap(feature_map)
    levels = open_store(cache_with_features / "map_features", gm)
    assert list(levels) == [0.5]
    stored = MapFeatures(gm, 0.5, make_detector("sift", 0), levels[0.5])
    detected = MapFeatures(gm, 0.5, make_detector("sift", 0))
    for wx0, wy1, side in ((gm.bounds[0] + 30.0, gm.bounds[3] - 20.0, 400), (gm.bounds[0] - 50.0, gm.bounds[3] + 50.0, 300)):
        a, b = stored.window(wx0, wy1, side, side), detected.window(wx0, wy1, side, side)
        assert len(a[0]) > 200 and len(a[0]) == len(b[0])
        for u, v in zip(a, b):
            np.testing.assert_array_equal(u, v)
    assert "map features: " in describe_cache(cache_with_features) and "at 0.50 m/px" in describe_cache(cache_with_features)


def test_the_localizer_uses_the_store_and_registration_never_detects_the_map(cache_with_features, embedder, monkeypatch):
    from skyloc.runtime import features
    from skyloc.runtime.localizer import Localizer

    loc = Localizer.open(embedder, cache_with_features)
    assert 0.5 in loc.registration.stored
    monkeypatch.setattr(features, "tile_features", lambda *a, **k: pytest.fail("map detected in flight"))
    gm = loc.map
    mf = loc.registration.map_features(0.5)
    assert mf.window(gm.bounds[0], gm.bounds[3], 600, 600) is not None


def test_a_store_of_another_map_or_a_damaged_one_is_ignored_with_a_warning(tmp_path, cache_with_features, feature_map,
                                                                         caplog):
    store = tmp_path / "map_features"
    shutil.copytree(cache_with_features / "map_features", store)
    gm = GeoMap(feature_map)
    assert list(open_store(store, gm)) == [0.5]
    # the same map read with another nodata value: other features
    with caplog.at_level(logging.WARNING):
        assert open_store(store, GeoMap(feature_map, nodata=0)) == {}
    assert "another nodata" in caplog.text and "skyloc map-features" in caplog.text
    # another file of the same size (a map edited in place): its time and hash differ
    other = tmp_path / "edited.tif"
    data = bytearray(feature_map.read_bytes())
    data[-100] ^= 0xFF
    other.write_bytes(bytes(data))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert open_store(store, GeoMap(other)) == {}
    assert "map file" in caplog.text
    # a copy of the very map (new time, same bytes) keeps its features
    same = tmp_path / "copy.tif"
    shutil.copy(feature_map, same)
    os.utime(same, ns=(1, 1))
    assert list(open_store(store, GeoMap(same))) == [0.5]
    # truncated arrays
    np.save(store / "g0.5000" / "desc.npy", np.zeros((3, 128), np.uint8))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert open_store(store, gm) == {}
    assert "unreadable" in caplog.text


def test_map_features_cli_adds_them_to_a_cache_built_without(tmp_path, feature_map, embedder):
    def skyloc(*args):
        return subprocess.run([sys.executable, "-m", "skyloc.cli", *map(str, args)], capture_output=True, text=True)

    path = build_cache(feature_map, embedder, tmp_path / "n.cache", [120.0], overlap=0.5, map_features=False)
    assert not (path / "map_features").exists() and "none stored" in describe_cache(path)
    r = skyloc("map-features", path, "--gsd", "0.5,0.71")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (path / "map_features").iterdir()) == ["g0.5000", "g0.7100"]
    assert "at 0.71 m/px" in " ".join(r.stdout.split())
    r = skyloc("map-features", path, "--gsd", "0.3536")  # finer than the map: what a frame coarse on it needs
    assert r.returncode == 0 and (path / "map_features" / "g0.3536").is_dir(), r.stderr
    for args, says in (((path, "--gsd", "-1"), "positive metres per pixel"),
                       ((tmp_path / "nothing.cache",), "not a finished tile cache")):
        r = skyloc("map-features", *args)
        assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, r.stderr


def _brute_force(reg, f, m, target, reach_px, extra_deg, extra_scale):
    """Every pair, the same rules: what the bucketed matcher must give."""
    fxy, fang, fsize, fdesc = f
    mxy, mang, msize, mdesc = m
    cfg = reg.cfg
    d2 = ((target[:, None, :].astype(np.float64) - mxy[None].astype(np.float64)) ** 2).sum(-1)
    dang = np.abs((fang[:, None] - mang[None] + 180.0) % 360.0 - 180.0)
    dsize = np.abs(np.log(fsize)[:, None] - np.log(msize)[None])
    bad = (d2 > reach_px ** 2) | (dsize > math.log(cfg.max_size_ratio) + math.log1p(extra_scale))
    if cfg.max_angle_deg + extra_deg < 180.0:
        bad |= dang > cfg.max_angle_deg + extra_deg + 1e-3
    sim = np.where(bad, -2.0, fdesc @ mdesc.T)
    out = set()
    for i in range(len(fxy)):
        order = np.argsort(-sim[i])
        s1, s2 = sim[i, order[0]], sim[i, order[1]]
        d1, dd2 = math.sqrt(max(0, 2 - 2 * s1)), math.sqrt(max(0, 2 - 2 * s2))
        if s1 > -2.0 and ((s2 > -2.0 and d1 < cfg.ratio * dd2) or (s2 <= -2.0 and d1 < 0.5)):
            out.add((i, int(order[0])))
    return out


@pytest.mark.parametrize("reach_px,extra_deg,extra_scale", [(600.0, 24.0, 0.0), (900.0, 172.0, 0.3), (40.0, 0.0, 0.0)])
def test_the_bucketed_matcher_finds_every_pair_brute_force_finds(reach_px, extra_deg, extra_scale):
    rng = np.random.default_rng(int(reach_px))
    reg = MapRegistration.__new__(MapRegistration)
    reg.cfg = RegistrationConfig()
    nm, nf = 3000, 600
    mxy = (rng.random((nm, 2)) * 1200).astype(np.float32)
    mang = (rng.random(nm) * 360).astype(np.float32)
    msize = np.exp(rng.normal(1.5, 0.6, nm)).astype(np.float32)
    mdesc = rng.random((nm, 128)).astype(np.float32)
    mdesc /= np.linalg.norm(mdesc, axis=1, keepdims=True)
    pick = rng.choice(nm, nf, replace=False)  # frame keypoints: noisy copies of map ones, and some strangers
    fdesc = mdesc[pick] + rng.normal(0, 0.02, (nf, 128)).astype(np.float32)
    fdesc[::3] = rng.random((len(fdesc[::3]), 128))
    fdesc /= np.linalg.norm(fdesc, axis=1, keepdims=True)
    fxy = mxy[pick] + rng.normal(0, 3, (nf, 2)).astype(np.float32)
    f = (fxy, (mang[pick] + rng.normal(0, 10, nf)).astype(np.float32) % 360, msize[pick] * 1.1, fdesc.astype(np.float32))
    m = (mxy, mang, msize, mdesc)
    target = fxy + rng.normal(0, reach_px / 2, fxy.shape).astype(np.float32)
    src, dst = reg._match(f, m, target, reach_px, extra_deg, extra_scale)
    got = {(int(np.flatnonzero((fxy == s).all(1))[0]), int(np.flatnonzero((mxy == d).all(1))[0])) for s, d in zip(src, dst)}
    want = _brute_force(reg, f, m, target, reach_px, extra_deg, extra_scale)
    assert len(want) > 50
    # float32 distances may flip a pair lying on the reach circle itself, never more than that
    assert len(got ^ want) <= 2, (len(got), len(want), len(got ^ want))
