"""Build the tile embedding cache of an area (what the drone carries).

    python examples/build_cache.py area.tif model.onnx area.cache --footprint 170
"""
import argparse
from pathlib import Path

from skyloc.runtime.cache import TileCache, build_cache
from skyloc.runtime.embedder import create_embedder


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("map", type=Path)
    ap.add_argument("model", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--footprint", type=float, nargs="+", default=[170.0], help="metres, one per scale band")
    ap.add_argument("--overlap", type=float, default=0.75)
    args = ap.parse_args(argv)
    embedder = create_embedder(args.model)
    path = build_cache(args.map, embedder, args.out, args.footprint, args.overlap,
                       progress=lambda done, total: print(f"\r{done}/{total} tiles", end=""))
    cache = TileCache.load(path, embedder.meta)
    print(f"\n{path}: {len(cache)} tiles, {cache.manifest['embedding_dim']}-d, CRS {cache.manifest['crs']}")
    return path


if __name__ == "__main__":
    main()
