"""One relocalization try: the map's features stored in the cache, against detected in flight.

    python bench/bench_reloc.py [--out bench_out/telemetry] [--worlds hard,naip] [--cases "exact,no yaw"]

A relocalization try embeds the frame, retrieves places and registers the frame strictly at up to
three of them. Registration needs the map's features around each place: without a store they are
detected when a place is first tried (a SIFT pass over about a square kilometre at 0.5 m/px);
with one (`skyloc build-cache` writes it, `skyloc map-features` adds it) they are read from the
cache. Each flight is replayed without --start both ways, one after the other in this run, with
the same code otherwise. Per case: tries, ms per try (first / median / max), time to the first ok
fix, ok share, and wrong fixes (ok fixes more than 25 m off or outside 3x their accuracy).
Worlds as in bench_telemetry (its world builders are reused; NAIP is skipped when absent).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_telemetry import CASES, hard_world, naip_world, perturb  # noqa: E402

from skyloc.onboard.replay import replay  # noqa: E402
from skyloc.onboard.telemetry import load_telemetry  # noqa: E402
from skyloc.runtime.features import build_map_features  # noqa: E402
from skyloc.runtime.localizer import Localizer, LocalizerConfig  # noqa: E402


def run(world: dict, case: str, spec: dict, out: Path, stored: bool) -> dict:
    tel = perturb(world["csv"], out / f"reloc_{world['name']}_{case.replace(' ', '_')}.csv", spec.get("yaw", "keep"),
                  spec.get("alt", "keep"), spec.get("late", 0.0))
    loc = Localizer.open(world["emb"], world["cache"], config=LocalizerConfig(hfov_deg=60), start=world.get("start"))
    if not loc.registration.stored:
        build_map_features(world["cache"].path, loc.map)
        loc = Localizer.open(world["emb"], world["cache"], config=LocalizerConfig(hfov_deg=60), start=world.get("start"))
    if not stored:
        loc.registration.stored = {}
    res = replay(str(world["video"]), loc, load_telemetry(tel), None)
    tries = [r.est.latency_ms.get("total", math.nan) for r in res.rows
             if r.est.source == "relocalization" or "relocalization:" in r.est.message]
    first = next((r for r in res.rows if r.est.status == "ok"), None)
    ok = [r for r in res.rows if r.est.status == "ok" and math.isfinite(r.error_m)]
    wrong = sum(r.error_m > 25.0 or r.error_m > 3.0 * r.est.horizontal_accuracy for r in ok)
    return {"tries": len(tries), "first_ms": tries[0] if tries else math.nan,
            "median_ms": float(np.median(tries)) if tries else math.nan,
            "max_ms": float(np.max(tries)) if tries else math.nan,
            "first_fix_s": first.time - res.rows[0].time if first else math.nan,
            "ok": res.report["availability_ok"], "wrong": wrong}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("bench_out/telemetry"))
    ap.add_argument("--worlds", default="hard,naip")
    ap.add_argument("--cases", default="exact,no yaw,compass +45,no alt")
    ap.add_argument("--epochs", type=int, default=10)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cases = [c for c in CASES if c[0] in args.cases.split(",")]
    hard = hard_world(args.out, args.epochs)
    worlds = [hard] if "hard" in args.worlds else []
    if "naip" in args.worlds and (n := naip_world(args.out, hard["emb"])):
        worlds.append(n)
    print(f"{'world':6}{'case':>13}{'map features':>20}{'tries':>6}{'first ms':>9}{'median':>8}{'max':>7}"
          f"{'1st fix s':>10}{'ok':>7}{'wrong':>6}")
    for w in worlds:
        for case, spec in cases:
            got = {}
            for stored in (False, True):
                t0 = time.time()
                r = got[stored] = run(w, case, spec, args.out, stored)
                print(f"{w['name']:6}{case:>13}{'stored' if stored else 'detected in flight':>20}{r['tries']:>6}"
                      f"{r['first_ms']:>9.0f}{r['median_ms']:>8.0f}{r['max_ms']:>7.0f}{r['first_fix_s']:>10.1f}"
                      f"{r['ok']:>7.1%}{r['wrong']:>6}   ({time.time() - t0:.0f} s)", flush=True)
            a, b = got[False], got[True]
            print(f"{'':6}{'':>13}{'ratio':>20}{'':>6}{a['first_ms'] / b['first_ms']:>8.1f}x"
                  f"{a['median_ms'] / b['median_ms']:>7.1f}x{a['max_ms'] / b['max_ms']:>6.1f}x", flush=True)


if __name__ == "__main__":
    main()
