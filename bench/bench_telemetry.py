"""Localization with the telemetry real drones give: compass errors, barometric altitude, no yaw.

    python bench/bench_telemetry.py [--out bench_out/telemetry] [--worlds hard,hilly,naip] [--quick]

Each world's flight is replayed (without --start: retrieval + strict registration find the
first fix) with its telemetry perturbed one way at a time:
  compass bias 0, +-5, +-10, +-20, +-45 deg and no yaw column;
  altitude x0.7, x0.85, x1.15, x1.3 and no altitude column;
  attitude (yaw) 100 and 200 ms late.
Worlds:
  hard   the hard synthetic flight of bench_tracking (grey summer map with a white border,
         colour autumn video 852x480, 30 fps, 45 s, 190 m, turns of 120 deg), cpu_small model
  hilly  a new world with hills (relief 90 m, 47 % of the 190 m flown above take-off), the DEM
         written beside the map, altitude given as a barometer does (above take-off); replayed
         with --dem and without
  naip   NAIP 2015 map, frames rendered from 2020, 1000 m up (../shared/data/naip; skipped when absent)
Per case: ok share (and after the first ok fix), time to the first ok fix, ok error median / max,
ok fixes > 25 m, share within 3x accuracy, the estimated bias against the injected one, ms/frame.
"""
from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
NAIP = ROOT.parent / "shared" / "data" / "naip"

from skyloc.onboard.replay import replay  # noqa: E402
from skyloc.onboard.telemetry import load_telemetry  # noqa: E402
from skyloc.runtime.cache import TileCache, build_cache  # noqa: E402
from skyloc.runtime.embedder import OnnxEmbedder  # noqa: E402
from skyloc.runtime.localizer import Localizer, LocalizerConfig  # noqa: E402

CASES = [("exact", {}), ("compass +5", {"yaw": 5}), ("compass -5", {"yaw": -5}), ("compass +10", {"yaw": 10}),
         ("compass -10", {"yaw": -10}), ("compass +20", {"yaw": 20}), ("compass -20", {"yaw": -20}),
         ("compass +45", {"yaw": 45}), ("compass -45", {"yaw": -45}), ("no yaw", {"yaw": None}),
         ("alt x0.7", {"alt": 0.7}), ("alt x0.85", {"alt": 0.85}), ("alt x1.15", {"alt": 1.15}),
         ("alt x1.3", {"alt": 1.3}), ("no alt", {"alt": None}), ("attitude +100 ms", {"late": 0.1}),
         ("attitude +200 ms", {"late": 0.2})]
QUICK = ["exact", "compass +20", "no yaw", "alt x0.7", "no alt", "attitude +200 ms"]


def perturb(src: Path, dst: Path, yaw="keep", alt="keep", late: float = 0.0) -> Path:
    """A copy of a telemetry CSV with the compass biased or gone, the altitude scaled or gone, or
    the yaw arriving `late` seconds after the frame (each frame gets the yaw of `late` s before)."""
    rows = list(csv.DictReader(open(src)))
    t = np.array([float(r["time"]) for r in rows])
    yaws = np.unwrap(np.radians([float(r["yaw"]) for r in rows]))
    for i, r in enumerate(rows):
        if late:
            r["yaw"] = f"{math.degrees(float(np.interp(t[i] - late, t, yaws))) % 360:.2f}"
        if yaw is None:
            r["yaw"] = ""
        elif yaw != "keep":
            r["yaw"] = f"{(float(r['yaw']) + yaw) % 360:.2f}"
        if alt is None:
            r["alt"] = ""
        elif alt != "keep":
            r["alt"] = f"{float(r['alt']) * alt:.2f}"
    with open(dst, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return dst


def run_case(name: str, spec: dict, world: dict, out: Path) -> dict:
    tel = perturb(world["csv"], out / f"{world['name']}_{name.replace(' ', '_')}.csv", spec.get("yaw", "keep"),
                  spec.get("alt", "keep"), spec.get("late", 0.0))
    cfg = LocalizerConfig(hfov_deg=60, dem=world.get("dem"), home_elevation_m=world.get("home"))
    loc = Localizer.open(world["emb"], world["cache"], config=cfg, start=world.get("start"))
    t0 = time.time()
    res = replay(str(world["video"]), loc, load_telemetry(tel), None)
    rep = res.report
    ok = [r for r in res.rows if r.est.status == "ok"]
    first = next((i for i, r in enumerate(res.rows) if r.est.status == "ok"), None)
    after = res.rows[first:] if first is not None else []
    rep["ok_after_first"] = sum(r.est.status == "ok" for r in after) / len(after) if after else 0.0
    yb = [r.est.yaw_bias_deg for r in ok if math.isfinite(r.est.yaw_bias_deg)]
    rep["yaw_bias_median"] = float(np.median(yb)) if yb else math.nan
    # the height the localizer used against the truth (AGL) at ok fixes
    truth_agl = world.get("agl")
    hs = [r.est.height_m / truth_agl[r.frame] for r in ok if truth_agl is not None and r.frame < len(truth_agl)]
    rep["height_ratio_median"] = float(np.median(hs)) if hs else math.nan
    tries = [r.est.latency_ms.get("total", math.nan) for r in res.rows
             if r.est.source == "relocalization" or "relocalization:" in r.est.message]
    rep["reloc_ms"] = float(np.median(tries)) if tries else math.nan
    rep["reloc_ms_max"] = float(np.max(tries)) if tries else math.nan
    rep["wall_s"] = time.time() - t0
    return rep


def print_table(title: str, reps: dict, cases) -> None:
    print(f"\n{title}")
    head = (f"  {'case':<18}{'ok':>7}{'ok after 1st':>13}{'1st ok s':>9}{'err med':>8}{'err max':>8}{'>25m':>5}"
            f"{'in 3x':>7}{'yaw bias est':>13}{'height/true':>12}{'ms/frame':>9}{'reloc ms med/max':>17}")
    print(head)
    for name, spec in cases:
        r = reps.get(name)
        if r is None:
            continue
        e = r.get("error_ok", {})
        first = r["time_to_first_ok_s"]
        inj = spec.get("yaw")
        yb = r["yaw_bias_median"]
        ybs = "-" if not math.isfinite(yb) else f"{-yb:+.1f}" + (f" ({inj:+d})" if isinstance(inj, int) else "")
        w3 = r.get("ok_within_3x_accuracy")
        print(f"  {name:<18}{r['availability_ok']:>7.1%}{r['ok_after_first']:>13.1%}"
              f"{'never' if first is None else f'{first:.1f}':>9}{e.get('median_m', math.nan):>8.2f}"
              f"{e.get('max_m', math.nan):>8.2f}{r.get('ok_over_25m', 0):>5}"
              f"{'-' if w3 is None else f'{w3:.1%}':>7}{ybs:>13}{r['height_ratio_median']:>12.3f}"
              f"{r['latency_ms_median']:>9.1f}{r['reloc_ms']:>10.0f} /{r['reloc_ms_max']:>5.0f}", flush=True)


def hard_world(out: Path, epochs: int) -> dict:
    from skyloc.export.onnx_export import export_onnx
    from skyloc.models.checkpoint import load_model
    from skyloc.synth.flight import FlightConfig, render_flight
    from skyloc.synth.pairs import PairsConfig, make_pairs
    from skyloc.synth.world import generate, write_geotiff
    from skyloc.train.config import TrainConfig
    from skyloc.train.trainer import train

    grey = out / "campus_grey.tif"
    if not (out / "campus.onnx").is_file():
        write_geotiff(generate(1800, 0.5, seed=7, season="summer", lat=52.2, lon=0.12), grey, bands=1, border=0.3,
                      seed=7)
        s = make_pairs(grey, out / "pairs", PairsConfig(altitude=(170.0, 210.0), nodata=255.0))
        recipe = TrainConfig.from_yaml(ROOT / "configs" / "cpu_small.yaml", data=str(out / "pairs"),
                                       out=str(out / "run"), epochs=epochs)
        r = train(recipe, resume=False)
        model, _ = load_model(r["checkpoint"])
        export_onnx(model, out / "campus.onnx")
        print(f"  model: cpu_small on {s['train']} places of the grey map, {r['seconds']:.0f} s")
    emb = OnnxEmbedder(out / "campus.onnx")
    if not (out / "campus.cache").is_dir():
        build_cache(grey, emb, out / "campus.cache", [220.0], overlap=0.75, nodata=255.0)
    cache = TileCache.load(out / "campus.cache", emb.meta)
    if not (out / "flight.csv").is_file():
        autumn = write_geotiff(generate(1800, 0.5, seed=7, season="autumn", lat=52.2, lon=0.12),
                               out / "campus_autumn.tif")
        fcfg = FlightConfig(duration_s=45, fps=30, speed=10, altitude=190, altitude_jitter=5, pitch=0, hfov=60,
                            width=852, height=480, seed=3, route="turns", turn_deg=120, exposure=1.0,
                            exposure_time=0.02, shake=0.03)
        render_flight(autumn, out / "flight.mp4", out / "flight.csv", fcfg)
    agl = [float(r["alt"]) for r in csv.DictReader(open(out / "flight.csv"))]
    return dict(name="hard", emb=emb, cache=cache, video=out / "flight.mp4", csv=out / "flight.csv", agl=agl)


def hilly_world(out: Path, emb) -> dict:
    from skyloc.synth.flight import FlightConfig, render_flight
    from skyloc.synth.world import generate, generate_terrain, write_dem, write_geotiff

    summer = generate(1800, 0.5, seed=11, season="summer", lat=46.6, lon=7.9)
    if not (out / "hilly.csv").is_file():
        write_geotiff(summer, out / "hilly_grey.tif", bands=1)
        write_dem(summer, generate_terrain(summer, relief_m=90.0, seed=11, wavelength_m=300.0), out / "hilly_dem.tif")
        autumn = write_geotiff(generate(1800, 0.5, seed=11, season="autumn", lat=46.6, lon=7.9), out / "hilly_autumn.tif")
        fcfg = FlightConfig(duration_s=45, fps=30, speed=10, altitude=190, altitude_jitter=0, pitch=0, hfov=60,
                            width=852, height=480, seed=5, route="turns", turn_deg=110, exposure=1.0,
                            exposure_time=0.02, shake=0.03, dem=str(out / "hilly_dem.tif"))
        info = render_flight(autumn, out / "hilly.mp4", out / "hilly.csv", fcfg)
        print(f"  hilly: height above the ground {info['agl_range_m'][0]:.0f}-{info['agl_range_m'][1]:.0f} m while "
              f"the barometer says 190 m; home elevation {info['home_elevation_m']:.1f} m")
    if not (out / "hilly.cache").is_dir():
        build_cache(out / "hilly_grey.tif", emb, out / "hilly.cache", [220.0], overlap=0.75)
    cache = TileCache.load(out / "hilly.cache", emb.meta)
    rows = list(csv.DictReader(open(out / "hilly.csv")))
    from skyloc.runtime.terrain import Terrain
    from skyloc.runtime.geo import GeoMap

    gm = GeoMap(out / "hilly_grey.tif")
    x0, y0 = gm.geodesy.from_latlon(float(rows[0]["lat"]), float(rows[0]["lon"]))
    home = Terrain(out / "hilly_dem.tif", gm.crs, gm.bounds).elevation(x0, y0)
    return dict(name="hilly", emb=emb, cache=cache, video=out / "hilly.mp4", csv=out / "hilly.csv",
                agl=[float(r["agl"]) for r in rows], dem=str(out / "hilly_dem.tif"), home=home)


def naip_world(out: Path, emb) -> dict | None:
    from skyloc.synth.flight import FlightConfig, render_flight

    if not (NAIP / "naip_20150926.tif").is_file():
        print("\n== NAIP: skipped (../shared/data/naip is absent) ==")
        return None
    if not (out / "naip2020.csv").is_file():
        fcfg = FlightConfig(duration_s=60, fps=10, speed=30, altitude=1000, altitude_jitter=10, pitch=0, width=852,
                            height=480, seed=4, route="turns", turn_deg=100, exposure=0.5, exposure_time=0.01)
        render_flight(NAIP / "naip_20200831.tif", out / "naip2020.mp4", out / "naip2020.csv", fcfg)
    if not (out / "naip2015.cache").is_dir():
        build_cache(NAIP / "naip_20150926.tif", emb, out / "naip2015.cache", [1150.0], 0.75)
    cache = TileCache.load(out / "naip2015.cache", emb.meta)
    rows = list(csv.DictReader(open(out / "naip2020.csv")))
    # as bench_tracking: NAIP starts from a prior 100 m wide (retrieval at 5 m/px is the weak part there)
    start = (float(rows[0]["lat"]), float(rows[0]["lon"]), 100.0)
    return dict(name="naip", emb=emb, cache=cache, video=out / "naip2020.mp4", csv=out / "naip2020.csv",
                agl=[float(r["alt"]) for r in rows], start=start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("bench_out/telemetry"))
    ap.add_argument("--worlds", default="hard,hilly,naip")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    ap.add_argument("--cases", default=None, help="comma-separated case names")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cases = [c for c in CASES if (not args.quick or c[0] in QUICK) and (not args.cases or c[0] in args.cases.split(","))]
    print("== the hard synthetic flight's world and model ==", flush=True)
    hard = hard_world(args.out, args.epochs)
    worlds = []
    for name in args.worlds.split(","):
        if name == "hard":
            worlds.append(hard)
        elif name == "hilly":
            h = hilly_world(args.out, hard["emb"])
            worlds.append(h)
            worlds.append({**h, "name": "hilly (no DEM)", "dem": None, "home": None})
        elif name == "naip":
            n = naip_world(args.out, hard["emb"])
            if n:
                worlds.append(n)
    for w in worlds:
        reps = {}
        for name, spec in cases:
            reps[name] = run_case(name, spec, w, args.out)
        print_table(f"== {w['name']}: replay without --start{' (NAIP: 100 m prior)' if w.get('start') else ''}"
                    f"{', with --dem' if w.get('dem') else ''} ==", reps, cases)


if __name__ == "__main__":
    main()
