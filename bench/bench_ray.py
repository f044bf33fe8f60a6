"""A region's cache built on Ray against the single-process build, side by side in one run.

    python bench/bench_ray.py [--out bench_out/ray] [--tiles 50000]

The map: a 2 km synthetic world at 0.5 m/px cut into 16 GeoTIFFs, every second column in the
next UTM zone (EPSG:32632 beside 32631), as a region straddling a zone boundary is delivered.
The model: the hard flight's (bench_telemetry, mlr_convnext_atto, 128 px). The cluster: this
machine, started with `ray start --head` and joined with `--ray auto`, as a user would.

Prints tiles/s of each build, the equality check (tiles table byte for byte, embeddings within
one float16 rounding step), and a build whose driver is killed part-way and then run again:
how many parts it kept and that its cache is the same.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from skyloc.runtime.cache import TileCache, build_cache, plan_tiles  # noqa: E402
from skyloc.runtime.embedder import create_embedder  # noqa: E402
from skyloc.runtime.geo import open_map  # noqa: E402

SKYLOC = [sys.executable, "-m", "skyloc.cli"]
RAY = str(Path(sys.executable).parent / "ray")  # the ray CLI of this environment


def same(a: TileCache, b: TileCache) -> tuple[bool, float, float]:
    """(tiles byte-equal, share of embeddings bit-equal, worst difference in float16 steps)."""
    ea, eb = np.asarray(a.embeddings, np.float32), np.asarray(b.embeddings, np.float32)
    ulp = np.spacing(np.abs(ea).astype(np.float16)).astype(np.float32)
    return (np.asarray(a.tiles).tobytes() == np.asarray(b.tiles).tobytes(), float((ea == eb).mean()),
            float((np.abs(ea - eb) / ulp).max()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("bench_out/ray"))
    ap.add_argument("--tiles", type=int, default=50_000, help="at least this many tiles (overlap is chosen)")
    ap.add_argument("--parts", type=int, default=16)
    args = ap.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    from bench_telemetry import hard_world
    from skyloc.synth.mosaic import write_mosaic
    from skyloc.synth.world import generate, write_geotiff

    world = hard_world(out, 10)
    model = out / "campus.onnx"
    region = out / "region"
    if not region.is_dir():
        whole = write_geotiff(generate(4096, 0.5, seed=21, season="summer", lat=52.2, lon=0.12), out / "whole.tif",
                              bands=1)
        import rasterio

        with rasterio.open(whole) as src:
            epsg = src.crs.to_epsg()
        write_mosaic(whole, region, 4, 4, other_crs=f"EPSG:{epsg + 1}")  # the next UTM zone east
    gmap = open_map(region)
    print(f"map: {gmap.describe()}", flush=True)
    footprints = [160.0, 220.0]
    for overlap in np.arange(0.80, 0.96, 0.01):
        tiles, _ = plan_tiles(gmap, footprints, float(overlap), 0.5)
        if len(tiles) >= args.tiles:
            break
    overlap = round(float(overlap), 2)
    n = len(tiles)
    print(f"tiles: {n} ({footprints} m footprints, overlap {overlap})", flush=True)
    del world

    def build_single() -> tuple[Path, float]:
        t0 = time.perf_counter()
        p = build_cache(region, create_embedder(model), out / "single.cache", footprints, overlap,
                        map_features=False, progress=lambda d, t: print(f"\r  single: {d}/{t}", end="", flush=True))
        return p, time.perf_counter() - t0

    single, single_s = build_single()
    print(f"\r  single process: {n} tiles in {single_s:.0f} s = {n / single_s:.0f} tiles/s", flush=True)

    subprocess.run([RAY, "stop", "--force"], capture_output=True)
    r = subprocess.run([RAY, "start", "--head", "--num-cpus", str(os.cpu_count()), "--include-dashboard=false",
                        "--disable-usage-stats"], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"ray start failed:\n{r.stderr[-1500:]}")
    try:
        cmd = [*SKYLOC, "build-cache", str(region), "-m", str(model), "--footprint", ",".join(map(str, footprints)),
               "--overlap", str(overlap), "--no-map-features", "--ray", "auto", "--parts", str(args.parts)]
        t0 = time.perf_counter()
        r = subprocess.run([*cmd, "-o", str(out / "ray.cache")], capture_output=True, text=True)
        ray_s = time.perf_counter() - t0
        if r.returncode != 0:
            raise SystemExit(f"ray build failed:\n{r.stderr[-1500:]}")
        a, b = TileCache.load(single), TileCache.load(out / "ray.cache")
        eq_tiles, bit_equal, worst = same(a, b)
        print(f"  ray (auto, {os.cpu_count()} CPU workers, {args.parts} parts, driver start included): {n} tiles in "
              f"{ray_s:.0f} s = {n / ray_s:.0f} tiles/s, {single_s / ray_s:.2f}x the single process", flush=True)
        print(f"  same cache: tiles table byte for byte {'yes' if eq_tiles else 'NO'}; embeddings bit-equal "
              f"{bit_equal:.1%}, worst {worst:.0f} float16 step(s)", flush=True)

        killed = out / "killed.cache"
        proc = subprocess.Popen([*cmd, "-o", str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        want = math.ceil(args.parts * 0.4)
        t0 = time.perf_counter()
        while len(list((killed / "parts").glob("*/manifest.json"))) < want and proc.poll() is None:
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)  # the driver only: the cluster stays up, as on a real one
        proc.wait()
        first_s = time.perf_counter() - t0
        kept = len(list((killed / "parts").glob("*/manifest.json")))
        t0 = time.perf_counter()
        r = subprocess.run([*cmd, "-o", str(killed)], capture_output=True, text=True)
        again_s = time.perf_counter() - t0
        if r.returncode != 0:
            raise SystemExit(f"resumed build failed:\n{r.stderr[-1500:]}")
        eq_tiles2, bit_equal2, worst2 = same(a, TileCache.load(killed))
        print(f"  killed after {first_s:.0f} s with {kept}/{args.parts} parts done; run again: finished in "
              f"{again_s:.0f} s ({again_s / ray_s:.0%} of a whole build); same cache: tiles "
              f"{'yes' if eq_tiles2 else 'NO'}, embeddings bit-equal {bit_equal2:.1%}, worst {worst2:.0f} step(s)",
              flush=True)
        manifest = json.loads((out / "ray.cache" / "manifest.json").read_text())
        print(f"  manifest: {manifest['mosaic_members']} members, crs {manifest['crs']}, {manifest['tiles']} tiles, "
              f"{manifest['built_with']}")
    finally:
        subprocess.run([RAY, "stop", "--force"], capture_output=True)


if __name__ == "__main__":
    main()
