"""Localization accuracy on held-out flights, and cross-season retrieval on real imagery.

    python bench/bench_accuracy.py [--out bench_out] [--epochs 10] [--skip-naip]

1. Synthetic: train mlr_convnext_atto (CPU, minutes) on pairs from map A; fly over map B (never
   seen); cache from B. Errors with and without refinement and filter, the share of "ok" fixes
   more than one tile footprint off (goal < 1 %), and a cross-season flight (cache from B in
   summer colours, frames from B in autumn colours).
2. NAIP (../shared/data/naip, skipped when absent): train on the west of the 2009 image, evaluate
   retrieval on the east of the 2020 image (other region, other date); then a flight rendered
   from 2020 against a cache built from 2015.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from skyloc.export.onnx_export import export_onnx  # noqa: E402
from skyloc.models.checkpoint import load_model  # noqa: E402
from skyloc.runtime.cache import TileCache, build_cache  # noqa: E402
from skyloc.runtime.embedder import OnnxEmbedder  # noqa: E402
from skyloc.runtime.geo import crop_geotiff  # noqa: E402
from skyloc.runtime.localizer import Localizer, LocalizerConfig  # noqa: E402
from skyloc.onboard.replay import replay  # noqa: E402
from skyloc.onboard.telemetry import load_telemetry  # noqa: E402
from skyloc.synth.flight import FlightConfig, render_flight  # noqa: E402
from skyloc.synth.pairs import PairsConfig, make_pairs  # noqa: E402
from skyloc.synth.world import generate, write_geotiff  # noqa: E402
from skyloc.train.config import TrainConfig  # noqa: E402
from skyloc.train.evaluate import evaluate  # noqa: E402
from skyloc.train.trainer import train  # noqa: E402

NAIP = ROOT.parent / "shared" / "data" / "naip"
RECIPE = dict(model="mlr_convnext_atto", batch_size=16, k_sat=2, lr=0.02, backbone_lr=0.01, loss="infonce",
              temperature=0.1, amp=False, workers=2)


def train_small(pairs: Path, out: Path, epochs: int, color_jitter: float = 0.0) -> Path:
    cfg = TrainConfig(**RECIPE, data=str(pairs), out=str(out), epochs=epochs, milestones=[max(1, epochs * 2 // 3)],
                      color_jitter=color_jitter)
    r = train(cfg, resume=False)
    print(f"  trained {r['classes']} places, loss {r['loss'][0]:.2f} -> {r['loss'][-1]:.2f} in {r['seconds']:.0f} s")
    return Path(r["checkpoint"])


def flight_rows(label, video, tel, emb, cache, pitch):
    print(f"\n{label}")
    print(f"  {'refine':>6} {'filter':>6} {'ok':>5} {'median':>8} {'p90':>8} {'ok med':>7} {'ok p90':>7} "
          f"{'ok>tile':>8} {'ms':>6}")
    for refine in (False, True):
        for use_filter in (False, True):
            loc = Localizer(emb, cache, LocalizerConfig(refine=refine, use_filter=use_filter, camera_pitch_deg=pitch))
            rep = replay(str(video), loc, load_telemetry(tel)).report
            a, o = rep.get("error_all", {}), rep.get("error_ok", {})
            print(f"  {'on' if refine else 'off':>6} {'on' if use_filter else 'off':>6} {rep['availability_ok']:>5.0%} "
                  f"{a.get('median_m', math.nan):>7.1f}m {a.get('p90_m', math.nan):>7.1f}m "
                  f"{o.get('median_m', math.nan):>6.1f}m {o.get('p90_m', math.nan):>6.1f}m "
                  f"{rep.get('ok_far_off_share', 0):>7.1%} {rep['latency_ms_median']:>6.0f}")


def synthetic(out: Path, epochs: int, color_jitter: float = 0.0) -> None:
    print("== synthetic worlds: train on map A, fly over unseen map B ==")
    a = write_geotiff(generate(1536, 1.0, seed=11), out / "A.tif")
    b = write_geotiff(generate(1536, 1.0, seed=22, lat=47.45, lon=8.6), out / "B.tif")
    b_autumn = write_geotiff(generate(1536, 1.0, seed=22, season="autumn", lat=47.45, lon=8.6), out / "B_autumn.tif")
    make_pairs(a, out / "pairs_A", PairsConfig(classes=160, views=8, test_fraction=0.0, seed=1))
    make_pairs(b, out / "pairs_B", PairsConfig(classes=60, views=4, test_fraction=1.0, seed=2))
    ckpt = train_small(out / "pairs_A", out / "run_synth", epochs, color_jitter)
    model, _ = load_model(ckpt)
    r = next(r for r in evaluate(model, out / "pairs_B") if r["protocol"] == "full gallery")
    print(f"  retrieval on map B, drone->satellite: R@1 {r['R@1']:.1f}% R@5 {r['R@5']:.1f}% AP {r['AP']:.1f}% "
          f"(chance {100 / r['gallery']:.1f}%, {r['queries']} queries)")
    export_onnx(model, out / "synth.onnx")
    emb = OnnxEmbedder(out / "synth.onnx")
    cache = TileCache.load(build_cache(b, emb, out / "B.cache", [173.2], overlap=0.75), emb.meta)
    fcfg = FlightConfig(duration_s=120, fps=2.0, seed=5)
    render_flight(b, out / "fB.mp4", out / "fB.csv", fcfg)
    flight_rows(f"held-out flight over B ({len(cache)} tiles of 173 m; 240 frames)", out / "fB.mp4", out / "fB.csv",
                emb, cache, fcfg.pitch)
    render_flight(b_autumn, out / "fB_autumn.mp4", out / "fB_autumn.csv", fcfg)
    flight_rows("cross-season: cache from B (summer), frames from B (autumn)", out / "fB_autumn.mp4",
                out / "fB_autumn.csv", emb, cache, fcfg.pitch)


def naip(out: Path, epochs: int) -> None:
    if not NAIP.is_dir():
        print("\n== NAIP: skipped (../shared/data/naip is absent) ==")
        return
    print("\n== NAIP 5 m/px, Minnesota: train west 2009, evaluate east 2020 (other region, other date) ==")
    alt = (330.0, 420.0)  # 5 m/px imagery: fly high enough that a frame covers ~80 map pixels
    west = crop_geotiff(NAIP / "naip_20090818.tif", out / "naip2009_west.tif", 0.0, 0.6)
    east = crop_geotiff(NAIP / "naip_20200831.tif", out / "naip2020_east.tif", 0.6, 1.0)
    make_pairs(west, out / "naip_train", PairsConfig(classes=120, views=8, test_fraction=0.0, altitude=alt, seed=1))
    make_pairs(east, out / "naip_test", PairsConfig(classes=40, views=4, test_fraction=1.0, altitude=alt, seed=2))
    ckpt = train_small(out / "naip_train", out / "run_naip", epochs)
    model, _ = load_model(ckpt)
    for r in evaluate(model, out / "naip_test"):
        if r["protocol"] == "full gallery":
            print(f"  {r['task']}: R@1 {r['R@1']:.1f}% R@5 {r['R@5']:.1f}% AP {r['AP']:.1f}% "
                  f"(chance {100 / r['gallery']:.1f}%)")
    export_onnx(model, out / "naip.onnx")
    emb = OnnxEmbedder(out / "naip.onnx")
    map2015 = crop_geotiff(NAIP / "naip_20150926.tif", out / "naip2015.tif", 0.0, 1.0)
    map2020 = crop_geotiff(NAIP / "naip_20200831.tif", out / "naip2020.tif", 0.0, 1.0)
    fp = 2 * np.mean(alt) * np.tan(np.radians(30))
    cache = TileCache.load(build_cache(map2015, emb, out / "naip2015.cache", [fp], overlap=0.75), emb.meta)
    fcfg = FlightConfig(duration_s=120, fps=1.0, speed=15.0, altitude=float(np.mean(alt)), seed=4)
    render_flight(map2020, out / "naip_f.mp4", out / "naip_f.csv", fcfg)
    flight_rows(f"NAIP cross-season flight: cache from 2015, frames from 2020 ({len(cache)} tiles of {fp:.0f} m)",
                out / "naip_f.mp4", out / "naip_f.csv", emb, cache, fcfg.pitch)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("bench_out"))
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--skip-naip", action="store_true")
    ap.add_argument("--color-jitter", type=float, default=0.0, help="training colour jitter (cross-season)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    synthetic(args.out, args.epochs, args.color_jitter)
    if not args.skip_naip:
        naip(args.out, args.epochs)


if __name__ == "__main__":
    main()
