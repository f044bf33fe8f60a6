"""Top-k inner-product search over a tile cache, optionally inside a search window.

numpy brute force by default (exact); FAISS (exact inner product) for very large caches. The
float16 cache is converted once to float32 per scale band so each query is one BLAS gemv.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from skyloc.errors import SkylocError
from skyloc.runtime.cache import TileCache


@dataclass
class Matches:
    indices: np.ndarray  # tile indices into the cache, best first
    scores: np.ndarray  # inner products (cosine: descriptors are unit length)
    searched: int  # how many tiles were compared


class _Band:
    """One scale band: float32 embeddings, tile centres, and a coarse grid for window queries."""

    def __init__(self, index: np.ndarray, emb: np.ndarray, xy: np.ndarray, cell: float, use_faiss: bool):
        self.index, self.emb, self.xy, self.cell = index, emb, xy, cell
        self.origin = xy.min(axis=0)
        keys = np.floor((xy - self.origin) / cell).astype(np.int64)
        self.grid: dict[tuple[int, int], np.ndarray] = {}
        order = np.lexsort((keys[:, 1], keys[:, 0]))
        k_sorted = keys[order]
        bounds = np.flatnonzero(np.any(np.diff(k_sorted, axis=0) != 0, axis=1)) + 1
        for chunk in np.split(order, bounds):
            self.grid[tuple(keys[chunk[0]])] = chunk
        self.faiss = None
        if use_faiss:
            try:
                import faiss
            except ImportError:
                raise SkylocError("FAISS is not installed: pip install 'skyloc[faiss]' or drop --faiss") from None
            self.faiss = faiss.IndexFlatIP(emb.shape[1])
            self.faiss.add(emb)

    def window(self, x: float, y: float, radius: float) -> np.ndarray:
        lo = np.floor((np.array([x - radius, y - radius]) - self.origin) / self.cell).astype(int)
        hi = np.floor((np.array([x + radius, y + radius]) - self.origin) / self.cell).astype(int)
        parts = [self.grid[(i, j)] for i in range(lo[0], hi[0] + 1) for j in range(lo[1], hi[1] + 1)
                 if (i, j) in self.grid]
        if not parts:
            return np.zeros(0, np.int64)
        cand = np.concatenate(parts)
        d2 = ((self.xy[cand] - [x, y]) ** 2).sum(axis=1)
        return cand[d2 <= radius * radius]


class Matcher:
    def __init__(self, cache: TileCache, use_faiss: bool = False):
        self.cache = cache
        bands = np.asarray(cache.tiles["band"])
        xy = np.stack([np.asarray(cache.tiles["x"]), np.asarray(cache.tiles["y"])], axis=1)
        self.bands: dict[int, _Band] = {}
        for b in np.unique(bands):
            idx = np.flatnonzero(bands == b)
            emb = np.ascontiguousarray(cache.embeddings[idx], dtype=np.float32)
            cell = float(cache.tiles["footprint_m"][idx[0]]) * 2
            self.bands[int(b)] = _Band(idx, emb, xy[idx], cell, use_faiss)

    def search(self, query: np.ndarray, k: int = 10, band: int | None = None,
               window: tuple[float, float, float] | None = None) -> Matches:
        """Best k tiles for a unit descriptor; band=None searches all bands; window=(x, y, radius_m)."""
        q = np.ascontiguousarray(query, dtype=np.float32).reshape(-1)
        bands = [self.bands[band]] if band is not None else list(self.bands.values())
        all_idx, all_scores, searched = [], [], 0
        for b in bands:
            if window is not None:
                local = b.window(*window)
                if local.size == 0:
                    continue
                scores = b.emb[local] @ q
                searched += local.size
            elif b.faiss is not None:
                s, i = b.faiss.search(q[None], min(k, len(b.index)))
                local, scores = i[0], s[0]
                searched += len(b.index)
            else:
                scores = b.emb @ q
                local = np.arange(len(b.index))
                searched += len(b.index)
            top = np.argpartition(-scores, min(k, len(scores)) - 1)[:k] if len(scores) > k else np.arange(len(scores))
            all_idx.append(b.index[local[top]])
            all_scores.append(scores[top])
        if not all_idx:
            return Matches(np.zeros(0, np.int64), np.zeros(0, np.float32), searched)
        idx, sc = np.concatenate(all_idx), np.concatenate(all_scores)
        order = np.argsort(-sc)[:k]
        return Matches(idx[order], sc[order], searched)
