"""Tile search at country scale: 1M and 10M-tile caches, exact and through the IVF-PQ index.

    python bench/bench_scale.py [--sizes 1000000,10000000] [--out bench_out/scale] [--queries 200]

Descriptors: the project's CPU model (bench_telemetry's hard-flight model, mlr_convnext_atto,
512-d) on tiles rendered from its map at 2 scales (the "real" descriptors); no map here has
millions of tiles, so a cache of N tiles is made of them: each tile a random blend of two real
descriptors (weights w, 1-w) plus Gaussian noise of norm 0.3, so that tiles are all different
and a tile's neighbours are graded, as on a real map (copies of the same few thousand rows
would make the exact top-10 a tie among hundreds). Queries: cache rows perturbed again the
same way, as a drone frame differs from its tile.

Each measurement that reports memory runs in a fresh process (RSS is the process's own):
  ready     TileCache.load + Matcher until the first search can run, and RSS after searches
  before    what skyloc did until now: a float32 copy of the band, then numpy (1M only)
  exact     FAISS float16 scan of the rows read into it (no float32 copy)
  index     IVF-PQ (skyloc index): build time, size, RSS with the index, query ms, recall@1/@10
            against the exact search of the same queries
Aims (issue 21): 1M ready <= 1 s with RSS <= 1.1x the embeddings file; 10M: query <= 20 ms
with recall@10 >= 0.95 and the index in <= 2 GB.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from skyloc.runtime.cache import TILE_DTYPE, TileCache  # noqa: E402

NOISE = 0.3  # norm of the perturbation added to a unit descriptor


def rss_mb() -> tuple[float, float]:
    """(current, peak) resident set of this process, MB."""
    status = Path("/proc/self/status").read_text()
    get = lambda k: float(next(line.split()[1] for line in status.splitlines() if line.startswith(k))) / 1024  # noqa: E731
    return get("VmRSS:"), get("VmHWM:")


def real_descriptors(out: Path) -> np.ndarray:
    """The hard flight's model on tiles of its map at 140 m and 220 m footprints, 90 % overlap."""
    from bench_telemetry import hard_world
    from skyloc.runtime.cache import build_cache

    base = out / "base.cache"
    world = hard_world(out, 10)
    if not (base / "manifest.json").is_file():
        build_cache(out / "campus_grey.tif", world["emb"], base, [140.0, 220.0], overlap=0.9, nodata=255.0,
                    map_features=False)
    return np.asarray(TileCache.load(base).embeddings, dtype=np.float32)


def perturb(rng: np.random.Generator, rows: np.ndarray) -> np.ndarray:
    noisy = rows + rng.standard_normal(rows.shape).astype(np.float32) * np.float32(NOISE / np.sqrt(rows.shape[1]))
    return (noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).astype(np.float32)


def make_cache(out: Path, n: int, base: np.ndarray) -> Path:
    """A cache of n tiles (one band, 170 m tiles at 75 % overlap on a grid) from the real rows."""
    path = out / f"scale{n}.cache"
    if (path / "manifest.json").is_file():
        return path
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(n)
    dim = base.shape[1]
    emb = np.lib.format.open_memmap(path / "embeddings.npy", "w+", np.float16, (n, dim))
    t0 = time.perf_counter()
    for a in range(0, n, 200_000):
        b = min(n, a + 200_000)
        w = rng.random((b - a, 1), dtype=np.float32)
        blend = w * base[rng.integers(0, len(base), b - a)] + (1 - w) * base[rng.integers(0, len(base), b - a)]
        emb[a:b] = perturb(rng, blend / np.linalg.norm(blend, axis=1, keepdims=True))
        print(f"\r  writing {n} tiles: {b / n:.0%}", end="", flush=True)
    emb.flush()
    del emb
    side = int(np.ceil(np.sqrt(n)))
    t = np.zeros(n, TILE_DTYPE)
    t["x"], t["y"], t["footprint_m"] = (np.arange(n) % side) * 42.5, (np.arange(n) // side) * 42.5, 170.0
    np.save(path / "tiles.npy", t)
    (path / "manifest.json").write_text(json.dumps({
        "format_version": 1, "tiles": n, "embedding_dim": dim, "crs": "EPSG:32632", "footprints_m": [170.0],
        "model_fingerprint": "bench-scale", "model_name": "mlr_convnext_atto (blended, perturbed)", "skipped_tiles": 0,
        "colour": "grey"}))
    print(f"\r  wrote {n} tiles ({(path / 'embeddings.npy').stat().st_size / 1e9:.1f} GB) in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    return path


def queries(cache_path: Path, count: int) -> np.ndarray:
    emb = np.load(cache_path / "embeddings.npy", mmap_mode="r")
    rng = np.random.default_rng(99)
    rows = np.sort(rng.choice(len(emb), count, replace=False))
    return perturb(rng, np.asarray(emb[rows], dtype=np.float32))


def child(mode: str, cache_path: Path, qfile: Path, k: int) -> dict:
    """One measurement in this (fresh) process; prints a JSON line."""
    import faiss

    from skyloc.runtime.matcher import Matcher

    faiss.omp_set_num_threads(os.cpu_count() or 1)
    q = np.load(qfile).astype(np.float32)  # as the localizer's descriptors are
    t0 = time.perf_counter()
    cache = TileCache.load(cache_path)
    if mode == "before":  # what skyloc's matcher did until now: a float32 copy of the band, numpy gemv
        band = np.flatnonzero(np.asarray(cache.tiles["band"]) == 0)
        f32 = np.ascontiguousarray(cache.embeddings[band], dtype=np.float32)
        ready = time.perf_counter() - t0

        def search(v):
            s = f32 @ v
            top = np.argpartition(-s, k - 1)[:k]
            return band[top[np.argsort(-s[top])]]
    else:
        m = Matcher(cache, mode)
        ready = time.perf_counter() - t0
        search = lambda v: m.search(v, k).indices  # noqa: E731
    got, times = [], []
    for v in q:
        t1 = time.perf_counter()
        got.append(np.asarray(search(v))[:k])
        times.append(time.perf_counter() - t1)
    rss, peak = rss_mb()
    cold = float("nan")
    if mode == "index":  # the same queries with the embeddings file out of the page cache, as on
        # a board whose RAM cannot hold it: every re-ranked row is then a disk read
        fd = os.open(cache_path / "embeddings.npy", os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
        t_cold = []
        for v in q:
            t1 = time.perf_counter()
            search(v)
            t_cold.append(time.perf_counter() - t1)
        cold = float(np.median(t_cold) * 1e3)
    return {"mode": mode, "ready_s": ready, "query_ms": float(np.median(times[1:]) * 1e3), "cold_ms": cold,
            "rss_mb": rss, "peak_mb": peak, "results": np.stack(got).tolist()}


def run_child(mode: str, cache_path: Path, qfile: Path, k: int) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--cache", str(cache_path), "--qfile", str(qfile), "--k", str(k)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{mode} on {cache_path} failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def recall(found: list, truth: list, at: int) -> float:
    """Share of the exact top-`at` that the approximate top-`at` holds (at=1: the same best tile)."""
    return float(np.mean([len(set(f[:at]) & set(t[:at])) / at for f, t in zip(found, truth)]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000000,10000000")
    ap.add_argument("--out", type=Path, default=Path("bench_out/scale"))
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--qfile", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.cache, args.qfile, args.k)))
        return
    from skyloc.runtime.index import build_index

    args.out.mkdir(parents=True, exist_ok=True)
    print("== real descriptors: the hard flight's model on its map ==", flush=True)
    base = real_descriptors(args.out)
    print(f"  {len(base)} real {base.shape[1]}-d descriptors; cache tiles are blends of two of them + noise of "
          f"norm {NOISE}", flush=True)
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        print(f"== {n} tiles ==", flush=True)
        path = make_cache(args.out, n, base)
        file_mb = (path / "embeddings.npy").stat().st_size / 1e6
        qfile = args.out / f"queries{n}.npy"
        np.save(qfile, queries(path, args.queries))
        modes = ["before", "exact"] if n <= 2_000_000 else ["exact"]
        res = {m: run_child(m, path, qfile, args.k) for m in modes}
        for m in modes:
            r = res[m]
            print(f"  {m:>6}: ready {r['ready_s']:.2f} s, query {r['query_ms']:.1f} ms, RSS {r['rss_mb']:.0f} MB "
                  f"({r['rss_mb'] / file_mb:.2f}x the {file_mb:.0f} MB file, peak {r['peak_mb'] / file_mb:.2f}x)",
                  flush=True)
        t0 = time.perf_counter()
        if not (path / "index" / "manifest.json").is_file():
            build_index(TileCache.load(path), progress=lambda d, t: print(f"\r  index: {d / t:.0%}", end="", flush=True))
            build_s = time.perf_counter() - t0
        else:
            build_s = json.loads((path / "index" / "manifest.json").read_text())["build_s"]
        index_mb = sum(f.stat().st_size for f in (path / "index").glob("*.faiss")) / 1e6
        from skyloc.runtime.matcher import Matcher

        band0 = json.loads((path / "index" / "manifest.json").read_text())["bands"]["0"]
        rerank = Matcher.__init__.__defaults__[1]
        print(f"\r   index: {band0['factory']}, nprobe {band0['nprobe']}, {rerank} candidates re-ranked exactly",
              flush=True)
        res["index"] = r = run_child("index", path, qfile, args.k)
        truth = res["exact"]["results"]
        r1, r10 = recall(r["results"], truth, 1), recall(r["results"], truth, args.k)
        print(f"\r   index: built in {build_s:.0f} s, {index_mb:.0f} MB on disk; ready {r['ready_s']:.2f} s, "
              f"query {r['query_ms']:.1f} ms ({r['cold_ms']:.1f} ms with the embeddings file out of the page "
              f"cache), RSS {r['rss_mb']:.0f} MB; recall@1 {r1:.3f}, @{args.k} {r10:.3f} vs exact", flush=True)
        if "before" in res:
            b = res["before"]
            print(f"  exact vs before: ready {b['ready_s'] / res['exact']['ready_s']:.1f}x faster, RSS "
                  f"{res['exact']['rss_mb'] / b['rss_mb']:.2f}x, query {b['query_ms'] / res['exact']['query_ms']:.2f}x "
                  f"faster; same top-{args.k}: {recall(res['exact']['results'], b['results'], args.k):.3f}", flush=True)
        rows.append((n, file_mb, res, build_s, index_mb, r1, r10))
    print("\n  tiles   file MB | exact: ready s  RSS/file  query ms | index: build s  MB  ready s  RSS MB  query ms "
          "(cold)  R@1  R@10")
    for n, file_mb, res, build_s, index_mb, r1, r10 in rows:
        e, i = res["exact"], res["index"]
        print(f"{n:>8} {file_mb:>8.0f} | {e['ready_s']:>13.2f} {e['rss_mb'] / file_mb:>9.2f} {e['query_ms']:>9.1f} | "
              f"{build_s:>14.0f} {index_mb:>4.0f} {i['ready_s']:>7.2f} {i['rss_mb']:>7.0f} {i['query_ms']:>9.1f} "
              f"({i['cold_ms']:>4.1f}) {r1:>5.3f} {r10:>5.3f}")


if __name__ == "__main__":
    main()
