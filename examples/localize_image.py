"""Localize one camera frame against a tile cache.

    python examples/localize_image.py frame.jpg model.onnx area.cache --yaw 45 --alt 150
"""
import argparse
from pathlib import Path

from skyloc.runtime.cache import TileCache
from skyloc.runtime.embedder import create_embedder
from skyloc.runtime.localizer import Localizer, LocalizerConfig
from skyloc.runtime.preprocess import load_image


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("image", type=Path)
    ap.add_argument("model", type=Path)
    ap.add_argument("cache", type=Path)
    ap.add_argument("--yaw", type=float, default=None, help="heading, degrees clockwise from north")
    ap.add_argument("--alt", type=float, default=None, help="metres above ground")
    args = ap.parse_args(argv)
    embedder = create_embedder(args.model)
    loc = Localizer(embedder, TileCache.load(args.cache, embedder.meta), LocalizerConfig(use_filter=False))
    est = loc.locate(load_image(args.image), yaw_deg=args.yaw, altitude_m=args.alt)
    print(f"{est.status}: lat {est.lat:.6f} lon {est.lon:.6f} +-{est.horizontal_accuracy:.0f} m "
          f"(confidence {est.confidence:.2f}, {est.latency_ms['total']:.0f} ms)")
    return est


if __name__ == "__main__":
    main()
