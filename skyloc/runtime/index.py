"""Approximate search index of a tile cache (FAISS IVF-PQ), built once, stored in the cache.

Layout of `NAME.cache/index/`:
    band{B}.faiss    one IVF-PQ index per scale band; ids are the cache's tile indices
    manifest.json    factory, nprobe, and what it was built from (model, tiles, a digest of the
                     embeddings): an index of other embeddings is refused, never used
A search through it proposes candidates; their exact rows re-rank them (skyloc.runtime.matcher).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from pathlib import Path

import faiss
import numpy as np

from skyloc.errors import SkylocError

log = logging.getLogger("skyloc.index")

INDEX_FORMAT = 1
# Below this many tiles in a band the exact float16 scan takes a few ms and never misses: the
# index is not used there (bench/bench_scale.py measures both).
INDEX_MIN_TILES = 250_000


def embeddings_digest(emb: np.ndarray) -> str:
    """sha256 of 4096 rows spread over the embeddings and their shape: cheap on 10M tiles,
    and any rebuilt cache (another model, map or tiling) changes it."""
    n = emb.shape[0]
    rows = np.unique(np.linspace(0, n - 1, min(n, 4096)).astype(np.int64)) if n else np.zeros(0, np.int64)
    h = hashlib.sha256(str(tuple(emb.shape)).encode())
    if isinstance(emb, np.memmap) and emb.dtype == np.float16:
        # pread, not the memory map: faulting 4096 scattered rows in maps most of the file
        # into the resident set (the kernel maps cached pages around each fault)
        size = emb.shape[1] * 2
        with open(emb.filename, "rb", buffering=0) as f:
            for r in rows:
                h.update(os.pread(f.fileno(), size, emb.offset + int(r) * size))
    else:
        h.update(np.ascontiguousarray(emb[rows], dtype=np.float16).tobytes())
    return h.hexdigest()[:16]


def default_nlist(n: int) -> int:
    """Inverted lists: about 4 sqrt(n) (FAISS's guideline), a power of two in 64..4096 (more
    lists train too slowly on a small machine; pass --nlist for more)."""
    return int(min(4096, max(64, 2 ** round(math.log2(max(1.0, 4 * math.sqrt(n)))))))


def build_index(cache, nlist: int | None = None, pq_m: int | None = None, nprobe: int = 32,
                train_tiles: int | None = None, progress=None) -> Path:
    """IVF-PQ per band: k-means on a sample of the band, then every tile added in chunks.

    progress(done, total) is called as tiles are added. pq_m sub-quantizers of 8 bits (default:
    one per 8 dimensions): 64 bytes a tile for 512-d descriptors, 640 MB for 10M tiles."""
    from skyloc.runtime.cache import TileCache, advise

    cache = cache if isinstance(cache, TileCache) else TileCache.load(cache)
    emb = cache.embeddings
    advise(emb, "sequential")
    d = emb.shape[1]
    pq_m = pq_m or max(1, d // 8)
    if d % pq_m:
        raise SkylocError(f"--pq {pq_m} must divide the descriptor size {d}")
    out = cache.path / "index"
    out.mkdir(exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)  # a half-written index is never read
    bands = np.asarray(cache.tiles["band"])
    total, done = len(bands), 0
    entries = {}
    t0 = time.perf_counter()
    for b in np.unique(bands):
        idx = np.flatnonzero(bands == b)
        lists = nlist or default_nlist(len(idx))
        lists = min(lists, max(1, len(idx) // 39))  # FAISS wants >= 39 training points a list
        factory = f"IVF{lists}_HNSW32,PQ{pq_m}" if lists >= 1024 else f"IVF{lists},PQ{pq_m}"
        index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
        faiss.downcast_index(faiss.extract_index_ivf(index)).do_polysemous_training = False  # slow, unused here
        n_train = min(len(idx), train_tiles or max(64 * lists, 65536))
        sample = idx[np.unique(np.linspace(0, len(idx) - 1, n_train).astype(np.int64))]
        log.info("band %d: training %s on %d of %d tiles", b, factory, len(sample), len(idx))
        index.train(np.asarray(emb[sample], dtype=np.float32))
        for a in range(0, len(idx), 262144):
            part = idx[a:a + 262144]
            index.add_with_ids(np.asarray(emb[part], dtype=np.float32), part.astype(np.int64))
            done += len(part)
            if progress:
                progress(done, total)
        name = f"band{int(b)}.faiss"
        faiss.write_index(index, str(out / name))
        entries[str(int(b))] = {"file": name, "factory": factory, "tiles": int(len(idx)), "nprobe": int(nprobe)}
    manifest = {"format_version": INDEX_FORMAT, "model_fingerprint": cache.manifest.get("model_fingerprint"),
                "embedding_dim": int(d), "tiles": int(total), "embeddings_digest": embeddings_digest(emb),
                "bands": entries, "build_s": round(time.perf_counter() - t0, 1)}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out


def load_index(cache) -> dict | None:
    """{band: FAISS index} of the cache's index, or None when it has none.

    An index built from other embeddings (another model, a rebuilt cache) is an error that
    says to rebuild it: its candidates would be the wrong tiles."""
    if cache.path is None:
        return None
    folder = Path(cache.path) / "index"
    mf = folder / "manifest.json"
    if not mf.is_file():
        return None
    try:
        m = json.loads(mf.read_text())
    except json.JSONDecodeError as exc:
        raise SkylocError(f"{mf} is corrupt ({exc.msg}): rebuild it with `skyloc index {cache.path}`") from None
    rebuild = f"rebuild it with `skyloc index {cache.path}`"
    if m.get("format_version", 0) > INDEX_FORMAT:
        raise SkylocError(f"{folder} is index format {m['format_version']}; this skyloc reads <= {INDEX_FORMAT}")
    if (m.get("model_fingerprint") != cache.manifest.get("model_fingerprint")
            or m.get("tiles") != len(cache) or m.get("embedding_dim") != cache.embeddings.shape[1]):
        raise SkylocError(f"{folder} was built for other embeddings ({m.get('tiles')} tiles of model "
                          f"{m.get('model_fingerprint')}; the cache has {len(cache)} of "
                          f"{cache.manifest.get('model_fingerprint')}): {rebuild}")
    if m.get("embeddings_digest") != embeddings_digest(cache.embeddings):
        raise SkylocError(f"{folder} was built before the cache's embeddings changed: {rebuild}")
    out = {}
    for band, e in m["bands"].items():
        try:
            index = faiss.read_index(str(folder / e["file"]))
        except RuntimeError as exc:
            raise SkylocError(f"{folder / e['file']} is missing or corrupt ({str(exc).splitlines()[0][:80]}): "
                              f"{rebuild}") from None
        if index.ntotal != e["tiles"] or index.d != cache.embeddings.shape[1]:
            raise SkylocError(f"{folder / e['file']} holds {index.ntotal} tiles, not {e['tiles']}: {rebuild}")
        ivf = faiss.extract_index_ivf(index)
        ivf.nprobe = int(e.get("nprobe", 32))
        quantizer = faiss.downcast_index(ivf.quantizer)
        if isinstance(quantizer, faiss.IndexHNSW):
            quantizer.hnsw.efSearch = max(64, 2 * ivf.nprobe)
        out[int(band)] = index
    return out
