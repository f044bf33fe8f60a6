"""Localize one camera frame against a tile cache: retrieval proposes places, registration verifies.

    python examples/localize_image.py frame.jpg model.onnx area.cache --yaw 45 --alt 150 [--start LAT,LON,R]
"""
import argparse
from pathlib import Path

from skyloc.runtime.estimate import StatusConfig
from skyloc.runtime.localizer import Localizer, LocalizerConfig, parse_start
from skyloc.runtime.preprocess import load_image


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("image", type=Path)
    ap.add_argument("model", type=Path)
    ap.add_argument("cache", type=Path)
    ap.add_argument("--yaw", type=float, default=None, help="heading, degrees clockwise from north")
    ap.add_argument("--alt", type=float, default=None, help="metres above ground")
    ap.add_argument("--start", default=None, help="prior position LAT,LON[,RADIUS_M]")
    args = ap.parse_args(argv)
    # a single frame has no second registration to confirm it: a strictly verified one is the evidence
    cfg = LocalizerConfig(status=StatusConfig(confirmations=1))
    loc = Localizer.open(args.model, args.cache, config=cfg, start=parse_start(args.start))
    est = loc.locate(load_image(args.image), 0.0, yaw_deg=args.yaw, altitude_m=args.alt)
    print(f"{est.status}: lat {est.lat:.6f} lon {est.lon:.6f} +-{est.horizontal_accuracy:.1f} m "
          f"({est.message or 'verified registration'}, {est.latency_ms['total']:.0f} ms)")
    return est


if __name__ == "__main__":
    main()
