"""Top-k inner-product search over a tile cache: exact, or through the cache's approximate index.

Exact: FAISS's float16 scan (IndexScalarQuantizer QT_fp16) over the cache's own rows, read once
from `embeddings.npy` straight into FAISS: no float32 copy, RAM the size of the file.
Approximate (a band of at least `INDEX_MIN_TILES` tiles with an index from `skyloc index`):
IVF-PQ proposes `rerank` candidates (512: recall@10 0.96 against exact at 10M tiles, 0.99 with
1024 at twice the reads; bench/bench_scale.py) and their exact rows, read from the file,
re-rank them; the embeddings then stay on disk, so a 10M-tile map needs RAM for the index only.
Inside a search window (tracking) the window's rows are scored exactly either way.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import faiss
import numpy as np

from skyloc.errors import SkylocError
from skyloc.runtime.cache import TileCache
from skyloc.runtime.index import INDEX_MIN_TILES, load_index

log = logging.getLogger("skyloc.matcher")

SearchMode = Literal["auto", "exact", "index"]


@dataclass
class Matches:
    indices: np.ndarray  # tile indices into the cache, best first
    scores: np.ndarray  # inner products (cosine: descriptors are unit length)
    searched: int  # how many tiles were compared (approximately, through an index)


class _Grid:
    """Tile centres binned in cells of `cell` metres, sorted by cell: a window is a few
    binary searches (no per-cell Python objects, so a 10M-tile band is ready in about a second)."""

    def __init__(self, xy: np.ndarray, cell: float):
        self.xy, self.cell = xy, cell
        self.origin = xy.min(axis=0)
        keys = np.floor((xy - self.origin) / cell).astype(np.int64)
        self.ny = int(keys[:, 1].max()) + 1
        code = keys[:, 0] * self.ny + keys[:, 1]
        self.order = np.argsort(code, kind="stable")
        self.codes = code[self.order]

    def window(self, x: float, y: float, radius: float) -> np.ndarray:
        """Positions (into the band) of the tiles centred within `radius` of (x, y)."""
        lo = np.floor((np.array([x - radius, y - radius]) - self.origin) / self.cell).astype(np.int64)
        hi = np.floor((np.array([x + radius, y + radius]) - self.origin) / self.cell).astype(np.int64)
        lo_y, hi_y = max(int(lo[1]), 0), min(int(hi[1]), self.ny - 1)
        if hi_y < lo_y:
            return np.zeros(0, np.int64)
        cols = np.arange(max(int(lo[0]), 0), int(hi[0]) + 1, dtype=np.int64)
        starts = np.searchsorted(self.codes, cols * self.ny + lo_y, "left")
        stops = np.searchsorted(self.codes, cols * self.ny + hi_y, "right")
        parts = [self.order[a:b] for a, b in zip(starts, stops) if b > a]
        if not parts:
            return np.zeros(0, np.int64)
        cand = np.sort(np.concatenate(parts))
        d2 = ((self.xy[cand] - [x, y]) ** 2).sum(axis=1)
        return cand[d2 <= radius * radius]


def _read_span(path: str, offset: int, buf: np.ndarray) -> None:
    with open(path, "rb", buffering=0) as f:
        f.seek(offset)
        done, step = 0, 64 << 20
        while done < buf.size:
            got = f.readinto(memoryview(buf[done:done + step]))
            if not got:
                raise SkylocError(f"{path} ends early: the cache is truncated, rebuild it")
            done += got


def _read_rows(cache: TileCache, index: np.ndarray, out: np.ndarray) -> None:
    """Copy the band's float16 rows into `out` without mapping them: read() into FAISS's
    own buffer keeps the resident set at one copy (a memory map's pages would count twice).
    A few threads read parts of the span at once (reads release the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    emb = cache.embeddings
    contiguous = len(index) > 0 and index[-1] - index[0] == len(index) - 1
    if isinstance(emb, np.memmap) and emb.dtype == np.float16 and contiguous:
        row = emb.shape[1] * 2
        buf = out.reshape(-1).view(np.uint8)
        start = emb.offset + int(index[0]) * row
        parts = min(4, max(1, buf.size // (64 << 20)))
        cuts = [buf.size * i // parts // row * row for i in range(parts)] + [buf.size]
        with ThreadPoolExecutor(parts) as pool:
            list(pool.map(lambda i: _read_span(emb.filename, start + cuts[i], buf[cuts[i]:cuts[i + 1]]),
                          range(parts)))
        return
    for a in range(0, len(index), 65536):
        out[a:a + 65536] = emb[index[a:a + 65536]]


class _Band:
    """One scale band: its tile indices, a window grid, and an exact store or an index."""

    def __init__(self, cache: TileCache, index: np.ndarray, cell: float, approx):
        self.cache, self.index, self.approx, self.cell = cache, index, approx, cell
        self.rows: np.ndarray | None = None  # float16 [n, d] inside FAISS's store, when exact
        self._fd: int | None = None  # the embeddings file, for re-ranking rows through an index
        self.exact = None
        if approx is None:
            d = cache.embeddings.shape[1]
            self.exact = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
            nbytes = len(index) * d * 2
            self.exact.codes.resize(nbytes)
            store = faiss.rev_swig_ptr(self.exact.codes.data(), nbytes)
            self.rows = store.view(np.float16).reshape(len(index), d)
            _read_rows(cache, index, self.rows)
            self.exact.ntotal = len(index)

    @cached_property
    def grid(self) -> _Grid:
        """Built on the first window search (tracking), not while the matcher starts."""
        t = self.cache.tiles
        xy = np.stack([np.asarray(t["x"][self.index]), np.asarray(t["y"][self.index])], axis=1)
        return _Grid(xy, self.cell)

    def exact_rows(self, local: np.ndarray) -> np.ndarray:
        """float32 rows of these band positions (from FAISS's store, else read from the file)."""
        if self.rows is not None:  # FAISS's SIMD decoder: 2.5x numpy's float16 -> float32
            return self.exact.sa_decode(np.ascontiguousarray(self.rows[local]).view(np.uint8))
        emb = self.cache.embeddings
        if not (isinstance(emb, np.memmap) and emb.dtype == np.float16):
            return np.asarray(emb[self.index[local]], dtype=np.float32)
        # pread, not the memory map: the kernel maps the cached pages around every fault, and
        # a few hundred scattered rows a query would soon map most of a 10 GB file into RSS
        if self._fd is None:
            self._fd = os.open(emb.filename, os.O_RDONLY)
            if hasattr(os, "posix_fadvise"):  # one row a read: no read-ahead around it
                os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_RANDOM)
        size = emb.shape[1] * 2
        offsets = [emb.offset + int(r) * size for r in self.index[local]]
        if hasattr(os, "posix_fadvise"):  # queue every read at once: the disk serves them in parallel
            for off in offsets:
                os.posix_fadvise(self._fd, off, size, os.POSIX_FADV_WILLNEED)
        out = np.empty((len(local), emb.shape[1]), np.float16)
        buf = out.reshape(-1).view(np.uint8)
        for j, off in enumerate(offsets):
            buf[j * size:(j + 1) * size] = np.frombuffer(os.pread(self._fd, size, off), np.uint8)
        return out.astype(np.float32)

    def top(self, q: np.ndarray, k: int, rerank: int) -> tuple[np.ndarray, np.ndarray]:
        """Best k band positions over the whole band, and their exact scores."""
        if self.exact is not None:
            s, i = self.exact.search(q[None], min(k, len(self.index)))
            keep = i[0] >= 0
            return i[0][keep], s[0][keep]
        _, i = self.approx.search(q[None], min(max(rerank, k), len(self.index)))
        local = np.unique(i[0][i[0] >= 0])
        scores = self.exact_rows(local) @ q
        order = np.argsort(-scores)[:k]
        return local[order], scores[order]


class Matcher:
    """search(): the best tiles for a descriptor, in a band, optionally inside a window.

    mode: "exact" scans every tile; "index" uses the cache's index (an error without one);
    "auto" uses it for bands of at least INDEX_MIN_TILES tiles when the cache has one.
    """

    def __init__(self, cache: TileCache, mode: SearchMode = "auto", rerank: int = 512):
        if mode not in ("auto", "exact", "index"):
            raise SkylocError(f"search mode {mode!r}: use auto, exact or index")
        self.cache, self.rerank = cache, rerank
        indexes = load_index(cache) if mode != "exact" else None
        if mode == "index" and indexes is None:
            raise SkylocError(f"{cache.path} has no index: build one with `skyloc index {cache.path}` "
                              "or search exactly")
        bands = np.asarray(cache.tiles["band"])
        self.bands: dict[int, _Band] = {}
        for b in np.unique(bands):
            idx = np.flatnonzero(bands == b)
            approx = indexes.get(int(b)) if indexes else None
            if approx is not None and mode == "auto" and len(idx) < INDEX_MIN_TILES:
                approx = None  # small bands: the exact scan is as fast and never misses
            cell = float(cache.tiles["footprint_m"][idx[0]]) * 2
            self.bands[int(b)] = _Band(cache, idx, cell, approx)
        used = [b for b, band in self.bands.items() if band.approx is not None]
        log.info("%s: %d tiles, %s", cache.path, len(cache),
                 f"index for bands {used}" if used else "exact search")

    @property
    def uses_index(self) -> bool:
        return any(b.approx is not None for b in self.bands.values())

    def search(self, query: np.ndarray, k: int = 10, band: int | None = None,
               window: tuple[float, float, float] | None = None) -> Matches:
        """Best k tiles for a unit descriptor; band=None searches all bands; window=(x, y, radius_m)."""
        q = np.ascontiguousarray(query, dtype=np.float32).reshape(-1)
        bands = [self.bands[band]] if band is not None else list(self.bands.values())
        all_idx, all_scores, searched = [], [], 0
        for b in bands:
            if window is not None:
                local = b.grid.window(*window)
                if local.size == 0:
                    continue
                searched += local.size
                scores = b.exact_rows(local) @ q
                top = np.argpartition(-scores, k - 1)[:k] if len(scores) > k else np.arange(len(scores))
                local, scores = local[top], scores[top]
            else:
                local, scores = b.top(q, k, self.rerank)
                searched += len(b.index)
            all_idx.append(b.index[local])
            all_scores.append(scores)
        if not all_idx:
            return Matches(np.zeros(0, np.int64), np.zeros(0, np.float32), searched)
        idx, sc = np.concatenate(all_idx), np.concatenate(all_scores)
        order = np.argsort(-sc)[:k]
        return Matches(idx[order], sc[order], searched)
