"""Matching: exact top-k, search windows, the float16 store read from disk, the IVF-PQ index."""
import json

import numpy as np
import pytest

from skyloc.errors import SkylocError
from skyloc.runtime.cache import TILE_DTYPE, TileCache
from skyloc.runtime.index import build_index
from skyloc.runtime.matcher import Matcher


def _cache(n=2000, d=64, seed=0):
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((n, d)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    tiles = np.zeros(n, TILE_DTYPE)
    side = int(np.ceil(np.sqrt(n)))
    tiles["x"] = (np.arange(n) % side) * 50.0
    tiles["y"] = (np.arange(n) // side) * 50.0
    tiles["footprint_m"] = 100.0
    manifest = {"crs": "EPSG:32632", "footprints_m": [100.0]}
    return TileCache(None, manifest, emb.astype(np.float16), tiles), emb


def _disk_cache(root, n=20000, d=64, places=400, seed=1):
    """A cache on disk with clustered descriptors (`places` looks, each seen by many tiles), as
    a real map's are: the hard case for an approximate index."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((places, d))
    emb = centres[rng.integers(0, places, n)] + 0.35 * rng.standard_normal((n, d))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    path = root / "big.cache"
    path.mkdir()
    np.save(path / "embeddings.npy", emb.astype(np.float16))
    side = int(np.ceil(np.sqrt(n)))
    t = np.zeros(n, TILE_DTYPE)
    t["x"], t["y"], t["footprint_m"] = (np.arange(n) % side) * 40.0, (np.arange(n) // side) * 40.0, 160.0
    np.save(path / "tiles.npy", t)
    (path / "manifest.json").write_text(json.dumps({"format_version": 1, "tiles": n, "embedding_dim": d,
                                                    "crs": "EPSG:32632", "footprints_m": [160.0],
                                                    "model_fingerprint": "m1", "model_name": "test"}))
    return TileCache.load(path)


def test_top_k_is_exact():
    cache, emb = _cache()
    m = Matcher(cache)
    q = emb[123] + 0.01
    res = m.search(q, k=5)
    ref = np.argsort(-(cache.embeddings.astype(np.float32) @ q.astype(np.float32)))[:5]
    assert list(res.indices) == list(ref) and res.indices[0] == 123
    assert np.all(np.diff(res.scores) <= 0) and res.searched == len(cache)


def test_window_restricts_the_search():
    cache, emb = _cache()
    m = Matcher(cache)
    x, y = float(cache.tiles["x"][500]), float(cache.tiles["y"][500])
    res = m.search(emb[0], k=5, window=(x, y, 120.0))
    d = np.hypot(cache.tiles["x"][res.indices] - x, cache.tiles["y"][res.indices] - y)
    assert np.all(d <= 120.0) and res.searched < 40
    assert 0 not in res.indices  # the best tile overall lies outside the window
    assert m.search(emb[0], k=5, window=(1e7, 1e7, 10.0)).indices.size == 0
    ref = np.flatnonzero(np.hypot(cache.tiles["x"] - x, cache.tiles["y"] - y) <= 120.0)
    assert res.searched == ref.size  # every tile of the window, and only those


def test_exact_search_reads_the_cache_file_once(tmp_path):
    cache = _disk_cache(tmp_path)
    m = Matcher(cache, "exact")
    band = m.bands[0]
    assert not isinstance(band.rows, np.memmap) and np.array_equal(band.rows, np.asarray(cache.embeddings))
    q = np.asarray(cache.embeddings[777], np.float32)
    ref = np.argsort(-(np.asarray(cache.embeddings, np.float32) @ q))[:10]
    assert list(m.search(q, 10).indices) == list(ref)


def test_index_finds_what_exact_search_finds(tmp_path):
    cache = _disk_cache(tmp_path)
    build_index(cache)
    exact, approx = Matcher(cache, "exact"), Matcher(cache, "index")
    assert approx.uses_index and not exact.uses_index and approx.bands[0].rows is None
    rng = np.random.default_rng(5)
    hits = []
    for i in rng.integers(0, len(cache), 50):
        q = np.asarray(cache.embeddings[i], np.float32) + 0.05 * rng.standard_normal(64).astype(np.float32)
        q /= np.linalg.norm(q)
        a, b = exact.search(q, 10), approx.search(q, 10)
        hits.append(len(set(a.indices) & set(b.indices)) / 10)
        common = np.intersect1d(a.indices, b.indices)  # re-ranked: the same tiles score the same
        np.testing.assert_allclose(a.scores[np.isin(a.indices, common)][np.argsort(a.indices[np.isin(a.indices, common)])],
                                   b.scores[np.isin(b.indices, common)][np.argsort(b.indices[np.isin(b.indices, common)])],
                                   atol=1e-3)
    assert np.mean(hits) >= 0.9, np.mean(hits)
    assert not Matcher(cache, "auto").uses_index  # 20k tiles: the exact scan is used


def test_index_of_other_embeddings_is_refused(tmp_path):
    cache = _disk_cache(tmp_path)
    with pytest.raises(SkylocError, match="has no index"):
        Matcher(cache, "index")
    build_index(cache)
    mf = cache.path / "manifest.json"
    m = json.loads(mf.read_text())
    mf.write_text(json.dumps({**m, "model_fingerprint": "m2"}))
    with pytest.raises(SkylocError, match="built for other embeddings.*skyloc index"):
        Matcher(TileCache.load(cache.path))
    mf.write_text(json.dumps(m))
    emb = np.load(cache.path / "embeddings.npy")
    np.save(cache.path / "embeddings.npy", emb[::-1].copy())  # same model and size, other tiles
    with pytest.raises(SkylocError, match="before the cache's embeddings changed"):
        Matcher(TileCache.load(cache.path))
    np.save(cache.path / "embeddings.npy", emb)
    (cache.path / "index" / "band0.faiss").write_bytes(b"not an index")
    with pytest.raises(SkylocError, match="missing or corrupt"):
        Matcher(TileCache.load(cache.path))
