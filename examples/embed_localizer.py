"""Use the Localizer inside your own loop: any frame source, your own telemetry, your own output.

    python examples/embed_localizer.py model.onnx area.cache flight.mp4 --yaw 90 --alt 150
"""
import argparse
from pathlib import Path

from skyloc.onboard.sources import open_source
from skyloc.runtime.estimate import OK
from skyloc.runtime.localizer import Localizer


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("model", type=Path)
    ap.add_argument("cache", type=Path)
    ap.add_argument("source", help="video URI: file, folder, v4l2:///dev/video0, csi://0, rtsp://...")
    ap.add_argument("--yaw", type=float, default=None, help="stand-in for your autopilot's heading")
    ap.add_argument("--alt", type=float, default=None, help="stand-in for your altitude above ground")
    ap.add_argument("--max-frames", type=int, default=None)
    args = ap.parse_args(argv)
    localizer = Localizer.open(args.model, args.cache)
    source = open_source(args.source)
    fixes = 0
    for frame in source:
        if args.max_frames is not None and frame.index >= args.max_frames:
            break
        if frame.image is None:
            continue
        est = localizer.locate(frame.image, frame.timestamp, args.yaw, args.alt)
        if est.status == OK:  # hand it to your autopilot bridge, logger, UI ...
            fixes += 1
        print(f"t={frame.timestamp:6.2f}s {est.status:<14} {est.lat:.6f} {est.lon:.6f} "
              f"+-{est.horizontal_accuracy:.0f} m")
    source.close()
    return fixes


if __name__ == "__main__":
    main()
