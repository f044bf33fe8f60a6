"""Matching time vs cache size (exact search over the whole cache, search window) and cache load time.

    python bench/bench_matching.py [--dim 512] [--sizes 1000,10000,100000,1000000]

Targets on a 2-core CPU: brute force over 100k tiles <= 20 ms, <= 2 ms with a search window,
loading a 100k-tile cache <= 1 s. Figures are measured side by side in one run.
The approximate index for caches of millions of tiles is measured by bench/bench_scale.py.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import median_ms  # noqa: E402
from skyloc.runtime.cache import TILE_DTYPE, TileCache  # noqa: E402
from skyloc.runtime.matcher import Matcher  # noqa: E402


def fake_cache(root: Path, n: int, dim: int, footprint: float = 170.0) -> Path:
    """A cache on disk shaped like a real one: n tiles on a grid at 75 % overlap."""
    rng = np.random.default_rng(n)
    path = root / f"bench{n}.cache"
    path.mkdir()
    emb = np.lib.format.open_memmap(path / "embeddings.npy", "w+", np.float16, (n, dim))
    for i in range(0, n, 100_000):
        block = rng.standard_normal((min(100_000, n - i), dim)).astype(np.float32)
        emb[i : i + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    emb.flush()
    side = int(np.ceil(np.sqrt(n)))
    t = np.zeros(n, TILE_DTYPE)
    t["x"] = (np.arange(n) % side) * footprint * 0.25
    t["y"] = (np.arange(n) // side) * footprint * 0.25
    t["footprint_m"] = footprint
    np.save(path / "tiles.npy", t)
    (path / "manifest.json").write_text(json.dumps({"format_version": 1, "tiles": n, "embedding_dim": dim,
                                                    "crs": "EPSG:32632", "footprints_m": [footprint],
                                                    "model_fingerprint": "bench", "model_name": "bench"}))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dim", type=int, default=512, help="descriptor size (mlr_convnext_atto: 512)")
    ap.add_argument("--sizes", default="1000,10000,100000,1000000")
    ap.add_argument("--repeat", type=int, default=30)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(s) for s in args.sizes.split(",")):
            path = fake_cache(Path(tmp), n, args.dim)
            t0 = time.perf_counter()
            cache = TileCache.load(path)
            load_ms = (time.perf_counter() - t0) * 1e3
            t0 = time.perf_counter()
            matcher = Matcher(cache, mode="exact")
            index_ms = (time.perf_counter() - t0) * 1e3
            q = np.asarray(cache.embeddings[n // 2], np.float32)
            x, y = float(cache.tiles["x"][n // 2]), float(cache.tiles["y"][n // 2])
            brute = median_ms(lambda: matcher.search(q, 10), args.repeat)
            win = matcher.search(q, 10, window=(x, y, 2.5 * 170))
            window = median_ms(lambda: matcher.search(q, 10, window=(x, y, 2.5 * 170)), args.repeat)
            rows.append((n, load_ms, index_ms, brute, window, win.searched))
    print(f"matching, {args.dim}-d descriptors, top-10, median of {args.repeat} (ms)")
    print(f"{'tiles':>9} {'load':>8} {'ready':>8} {'exact':>8} {'window':>8} {'(tiles)':>8} {'exact/window':>13}")
    for n, load, idx, b, w, searched in rows:
        print(f"{n:>9} {load:>8.2f} {idx:>8.1f} {b:>8.2f} {w:>8.3f} {searched:>8} {b / w:>12.1f}x")
    r100k = next((r for r in rows if r[0] == 100_000), None)
    if r100k:
        print(f"targets at 100k: brute force {r100k[3]:.1f} ms (<= 20: {'yes' if r100k[3] <= 20 else 'NO'}), "
              f"window {r100k[4]:.2f} ms (<= 2: {'yes' if r100k[4] <= 2 else 'NO'}), "
              f"load {r100k[1]:.1f} ms + matcher ready {r100k[2]:.0f} ms (<= 1000: "
              f"{'yes' if r100k[1] + r100k[2] <= 1000 else 'NO'})")


if __name__ == "__main__":
    main()
