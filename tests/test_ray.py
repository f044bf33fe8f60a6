"""Cache builds on Ray (this machine's CPUs as the cluster): the single-machine cache, resumed
after the driver is killed, and one-line errors for a cluster that does not answer."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from skyloc.errors import SkylocError
from skyloc.runtime.cache import TileCache, build_cache
from skyloc.synth.mosaic import write_mosaic

ray = pytest.importorskip("ray", reason="Ray is the optional extra skyloc[scale] (make test installs it)")

from skyloc.ray_build import build_cache_ray, connect  # noqa: E402

FOOTPRINTS, OVERLAP = [120.0], 0.75


@pytest.fixture(scope="module")
def region(tmp_path_factory) -> Path:
    """A 512 m map as 16 GeoTIFFs, half of them in the next UTM zone."""
    from skyloc.synth.world import generate, write_geotiff

    root = tmp_path_factory.mktemp("region")
    write_mosaic(write_geotiff(generate(512, 1.0, seed=5), root / "whole.tif"), root / "tiles", 4, 4,
                 other_crs="EPSG:32633")
    return root / "tiles"


@pytest.fixture(scope="module")
def single(tmp_path_factory, region, embedder) -> TileCache:
    out = tmp_path_factory.mktemp("single") / "single.cache"
    return TileCache.load(build_cache(region, embedder, out, FOOTPRINTS, OVERLAP, map_features=False))


@pytest.fixture(scope="module")
def local_ray():
    connect("local")
    yield
    ray.shutdown()


def assert_same_cache(a: TileCache, b: TileCache) -> None:
    assert np.asarray(a.tiles).tobytes() == np.asarray(b.tiles).tobytes()  # byte for byte
    ea, eb = np.asarray(a.embeddings, np.float32), np.asarray(b.embeddings, np.float32)
    ulp = np.spacing(np.abs(ea).astype(np.float16)).astype(np.float32)
    assert np.all(np.abs(ea - eb) <= ulp)  # within one float16 rounding step


def test_a_ray_build_is_the_single_machine_cache(tmp_path, region, single, onnx_model, local_ray):
    seen = []
    path = build_cache_ray(str(region), onnx_model, tmp_path / "ray.cache", FOOTPRINTS, OVERLAP,
                           map_features=False, parts=5, progress=lambda d, n: seen.append((d, n)))
    cache = TileCache.load(path)
    assert_same_cache(single, cache)
    assert cache.manifest["mosaic_members"] == 16 and not (path / "parts").exists()
    assert seen[0][0] == 0 and seen[-1] == (len(single), len(single)) and len(seen) == 6


def test_a_killed_build_resumes_where_it_stopped(tmp_path, region, single, onnx_model, local_ray):
    out = tmp_path / "killed.cache"
    cmd = [sys.executable, "-m", "skyloc.cli", "build-cache", str(region), "-m", str(onnx_model), "-o", str(out),
           "--footprint", "120", "--overlap", str(OVERLAP), "--no-map-features", "--ray", "local", "--parts", "8"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and len(list((out / "parts").glob("*/manifest.json"))) < 2:
        assert proc.poll() is None, "the build ended before it could be killed"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started, as a lost terminal would
    proc.wait()
    finished = len(list((out / "parts").glob("*/manifest.json")))
    assert 2 <= finished < 8 and not (out / "manifest.json").exists()
    seen = []
    path = build_cache_ray(str(region), onnx_model, out, FOOTPRINTS, OVERLAP, map_features=False, parts=8,
                           progress=lambda d, n: seen.append(d))
    assert seen[0] > 0  # the finished parts were not built again
    assert_same_cache(single, TileCache.load(path))


def test_a_ray_address_that_does_not_answer_is_one_line(tmp_path, region, onnx_model):
    t0 = time.time()
    with pytest.raises(SkylocError, match=r"Ray cluster at 127\.0\.0\.1:9 does not answer.*ray start --head"):
        connect("127.0.0.1:9")
    assert time.time() - t0 < 10
    r = subprocess.run([sys.executable, "-m", "skyloc.cli", "build-cache", str(region), "-m", str(onnx_model), "-o",
                        str(tmp_path / "x.cache"), "--ray", "127.0.0.1:9"], capture_output=True, text=True)
    assert r.returncode != 0 and "does not answer" in r.stderr and "Traceback" not in r.stderr
    with pytest.raises(SkylocError, match="HOST:PORT"):
        connect("nowhere")
