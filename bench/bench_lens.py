"""Distorted cameras: the hard synthetic flight through a wide-angle lens and a fisheye, replayed
with the lens's calibration file and without it, side by side in one run.

    python bench/bench_lens.py [--out bench_out/lens] [--duration 30]

The world and model are bench_tracking's hard flight (grey summer map with a white border,
autumn camera, cpu_small model). The camera is 852x480 at 110 m (a wide lens at the hard flight's 190 m would see past its map):
  wide     OpenCV's radial-tangential model, k1 -0.30, k2 0.08, a focal length of a 100 deg
           pinhole (the corners bend by tens of pixels)
  fisheye  the equidistant model (cv2.fisheye), k1..k4 0.02, -0.01, 0, 0, 108 deg across (its
           corners 62 deg off the axis)
Each is replayed without --start, with `--calibration` (frames undistorted on entry) and without
it (the lens taken as a 100 deg pinhole). Printed: ok share, time to the first ok fix, ok error,
ok fixes within 3x their accuracy (the calibration of the reported accuracy), ms per frame, and
the undistortion's own cost (one remap per frame; its tables are made once per frame size).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from skyloc.onboard.replay import replay  # noqa: E402
from skyloc.onboard.telemetry import load_telemetry  # noqa: E402
from skyloc.runtime.calibration import Calibration, load_calibration, write_calibration  # noqa: E402
from skyloc.runtime.localizer import Localizer, LocalizerConfig  # noqa: E402

W, H = 852, 480
F = (W / 2) / math.tan(math.radians(50.0))  # a 100 deg pinhole's focal length
F_FISH = 452.0  # equidistant: 108 deg across, the corners 62 deg off the axis
LENSES = {
    "wide": Calibration("pinhole", W, H, np.array([[F, 0, W / 2 - 0.5 + 4], [0, F, H / 2 - 0.5 - 3], [0, 0, 1]]),
                        np.array([-0.30, 0.08, 0.0005, -0.0003, 0.0]), "wide"),
    "fisheye": Calibration("fisheye", W, H, np.array([[F_FISH, 0, W / 2 - 0.5], [0, F_FISH, H / 2 - 0.5], [0, 0, 1]]),
                           np.array([0.02, -0.01, 0.0, 0.0]), "fisheye"),
}


def main() -> None:
    from bench_telemetry import hard_world
    from bench_tracking import frame_times
    from skyloc.synth.flight import FlightConfig, render_flight

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("bench_out/lens"))
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--epochs", type=int, default=10, help="training epochs of the hard flight's model")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print("== the hard synthetic flight's world and model ==", flush=True)
    world = hard_world(args.out, args.epochs)
    autumn = args.out / "campus_autumn.tif"
    rows = []
    for name, lens in LENSES.items():
        cal = write_calibration(lens, args.out / f"{name}.yaml")
        video, csv_path = args.out / f"{name}.mp4", args.out / f"{name}.csv"
        if not csv_path.is_file():
            t0 = time.time()
            render_flight(autumn, video, csv_path, FlightConfig(
                duration_s=args.duration, fps=30, speed=10, altitude=110, altitude_jitter=3, pitch=0, hfov=100,
                width=W, height=H, seed=3, route="turns", turn_deg=120, exposure=1.0, exposure_time=0.02,
                shake=0.03, lens=str(cal)))
            print(f"  rendered {video.name} through the {name} lens in {time.time() - t0:.0f} s", flush=True)
        und = load_calibration(cal).undistorter(W, H)
        frame = np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)
        t0 = time.perf_counter()
        for _ in range(50):
            und(frame)
        remap_ms = (time.perf_counter() - t0) / 50 * 1e3
        for label, cfg in (("with --calibration", LocalizerConfig(calibration=str(cal))),
                           ("without (100 deg pinhole)", LocalizerConfig(hfov_deg=100.0))):
            res = replay(str(video), Localizer(world["emb"], world["cache"], cfg), load_telemetry(csv_path))
            rep, (odo, reg) = res.report, frame_times(res)
            rows.append((name, label, rep, odo, reg, remap_ms if "with" in label else 0.0, und.hfov_deg))
            print(f"  {name} {label}: done", flush=True)
    print("\n== replay without --start, 852x480, 110 m ==")
    print(f"  {'lens':<9}{'replay':<28}{'ok':>7}{'1st ok s':>9}{'err med':>8}{'err max':>8}{'>25m':>5}{'in 3x':>7}"
          f"{'ms/frame':>9}{'undistort ms':>13}")
    for name, label, rep, odo, reg, remap_ms, hfov in rows:
        e = rep.get("error_ok", {})
        first = rep["time_to_first_ok_s"]
        w3 = rep.get("ok_within_3x_accuracy")
        print(f"  {name:<9}{label:<28}{rep['availability_ok']:>7.1%}{'never' if first is None else f'{first:.1f}':>9}"
              f"{e.get('median_m', math.nan):>8.2f}{e.get('max_m', math.nan):>8.2f}{rep.get('ok_over_25m', 0):>5}"
              f"{'-' if w3 is None else f'{w3:.1%}':>7}{rep['latency_ms_median']:>9.1f}"
              f"{remap_ms:>13.2f}")
    print("  (the undistorted frame of the wide lens is a "
          f"{LENSES['wide'].undistorter(W, H).hfov_deg:.0f} deg pinhole, the fisheye's "
          f"{LENSES['fisheye'].undistorter(W, H).hfov_deg:.0f} deg)")


if __name__ == "__main__":
    main()
