"""The runtime localizer: accuracy on an unseen synthetic map, bad frames, no torch."""
import subprocess
import sys

import numpy as np
import pytest

from skyloc.errors import SkylocError
from skyloc.runtime.cache import TileCache
from skyloc.runtime.geo import GeoMap
from skyloc.runtime.localizer import OK, Localizer, LocalizerConfig
from skyloc.runtime.preprocess import rotate_north_up
from skyloc.synth.render import Camera, north_up_tile, render_view


@pytest.fixture(scope="module")
def scene(heldout_map):
    gm = GeoMap(heldout_map)
    img = gm.read_all()
    t = gm.transform
    return gm, img, (t.a, 0.0, t.c, 0.0, t.e, t.f)


def test_north_up_rotation_undoes_the_heading(scene):
    gm, img, tr = scene
    x, y = gm.pixel_to_xy(512, 512)
    nadir = render_view(img, tr, Camera(x, y, 120, yaw=0))
    assert np.abs(nadir.astype(int) - north_up_tile(img, tr, x, y, 2 * 120 * np.tan(np.radians(30)), 384)).mean() < 1
    yawed = render_view(img, tr, Camera(x, y, 120, yaw=130))
    back = rotate_north_up(yawed, 130)
    s = back.shape[0]
    o = (384 - s) // 2
    assert np.abs(back.astype(int) - nadir[o : o + s, o : o + s].astype(int)).mean() < 3
    assert np.abs(yawed.astype(int) - nadir.astype(int)).mean() > 15


def test_single_frames_on_an_unseen_map_land_within_a_tile(scene, heldout_cache, embedder):
    """Per-frame accuracy (no filter): ok fixes within 15 m median, none off by a tile footprint."""
    gm, img, tr = scene
    cache = TileCache.load(heldout_cache, embedder.meta)
    loc = Localizer(embedder, cache, LocalizerConfig(use_filter=False))
    rng = np.random.default_rng(4)
    left, bottom, right, top = gm.bounds
    errors, statuses = [], []
    for _ in range(16):
        x, y = rng.uniform(left + 250, right - 250), rng.uniform(bottom + 250, top - 250)
        yaw, alt = rng.uniform(0, 360), rng.uniform(110, 140)
        frame = render_view(img, tr, Camera(x, y, alt, yaw=yaw, pitch=0, width=320, height=320))
        est = loc.locate(frame, 0.0, yaw, alt)
        statuses.append(est.status)
        errors.append(np.hypot(est.x - x, est.y - y) if est.has_position else np.nan)
    errors, statuses = np.array(errors), np.array(statuses)
    ok = statuses == OK
    assert ok.mean() >= 0.5, statuses
    assert np.median(errors[ok]) < 15.0, errors[ok]
    assert np.all(errors[ok] < 138.6), errors[ok]  # no ok fix is a tile footprint off


def test_wrong_frames_are_refused(heldout_cache, embedder):
    loc = Localizer(embedder, TileCache.load(heldout_cache, embedder.meta), LocalizerConfig(refine=False))
    with pytest.raises(SkylocError, match="uint8"):
        loc.locate(np.zeros((64, 64, 3), np.float32))
    with pytest.raises(SkylocError, match="numpy uint8 image"):
        loc.locate("frame.jpg")
    with pytest.raises(SkylocError, match=r"\[H,W,3\]"):
        loc.locate(np.zeros((64, 64, 4), np.uint8))


def test_runtime_runs_without_torch(onnx_model, heldout_cache, tmp_path):
    """skyloc.runtime on a Jetson image has no torch or timm: importing them must not be needed."""
    frame = tmp_path / "frame.png"
    import cv2

    cv2.imwrite(str(frame), np.full((200, 200, 3), 90, np.uint8))
    code = f"""
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split('.')[0] in ('torch', 'timm', 'torchvision'):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
from skyloc.runtime.embedder import create_embedder
from skyloc.runtime.cache import TileCache
from skyloc.runtime.localizer import Localizer
from skyloc.runtime import daemon, mavlink, replay, sources, telemetry  # noqa
from skyloc.runtime.preprocess import load_image
e = create_embedder({str(onnx_model)!r})
loc = Localizer(e, TileCache.load({str(heldout_cache)!r}, e.meta))
est = loc.locate(load_image({str(frame)!r}), 0.0, 10.0, 120.0)
assert 'torch' not in sys.modules and 'timm' not in sys.modules
print('OK', est.status)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("OK"), r.stderr[-2000:]
