"""Replay a recorded flight with telemetry and print the error report.

    python examples/replay_flight.py flight.mp4 flight.csv model.onnx area.cache replay_out
"""
import argparse
from pathlib import Path

from skyloc.onboard.replay import open_flight, replay
from skyloc.onboard.telemetry import load_telemetry
from skyloc.runtime.localizer import Localizer


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("video")
    ap.add_argument("telemetry", type=Path, help="CSV (time,lat,lon,alt,yaw), DJI .srt or .gpx")
    ap.add_argument("model", type=Path)
    ap.add_argument("cache", type=Path)
    ap.add_argument("out", type=Path)
    args = ap.parse_args(argv)
    flight = open_flight(args.video, load_telemetry(args.telemetry))
    # what the recording decides (photo folders, their EXIF FOV) is decided as `skyloc replay` does
    loc = Localizer.open(args.model, args.cache, config=flight.localizer_config())
    res = replay(flight, loc, out_dir=args.out)
    rep = res.report
    err = rep.get("error_ok", {})
    cal = rep.get("ok_within_3x_accuracy")
    print(f"{rep['frames']} frames, ok {rep['availability_ok']:.0%}, median error of ok fixes "
          f"{err.get('median_m', float('nan')):.1f} m, ok fixes within 3x their accuracy "
          f"{'-' if cal is None else f'{cal:.0%}'}; plots in {args.out}")
    return res


if __name__ == "__main__":
    main()
