"""Matching: exact top-k, search windows, FAISS agreeing with numpy."""
import numpy as np
import pytest

from skyloc.runtime.cache import TILE_DTYPE, TileCache
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


def test_faiss_agrees_with_numpy():
    pytest.importorskip("faiss", reason="faiss-cpu is an optional extra (skyloc[faiss])")
    cache, emb = _cache()
    q = emb[77]
    a = Matcher(cache).search(q, k=10)
    b = Matcher(cache, use_faiss=True).search(q, k=10)
    assert list(a.indices) == list(b.indices)
