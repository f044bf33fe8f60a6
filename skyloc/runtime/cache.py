"""Tile embedding caches: build from a GeoTIFF (windowed, resumable, shardable), load memory-mapped.

Layout of `NAME.cache/`:
    embeddings.npy   float16 [N,D], memory-mapped on load
    tiles.npy        structured per-tile table (lat, lon, x, y, footprint_m, band)
    manifest.json    format, model fingerprint/name/dim, source map + sha256, CRS, GSD, tiling
    map_features/    the map's registration features, by GSD (optional: skyloc.runtime.features)
"""
from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from skyloc.errors import ModelMismatchError, SkylocError
from skyloc.runtime.embedder import Embedder, embed_images
from skyloc.runtime.geo import Geodesy, GeoMap, open_map
from skyloc.runtime.metadata import ModelMeta

log = logging.getLogger("skyloc.cache")

CACHE_FORMAT = 1
TILE_DTYPE = np.dtype([("lat", "f8"), ("lon", "f8"), ("x", "f8"), ("y", "f8"), ("footprint_m", "f4"), ("band", "i2")])


@dataclass
class TilingPlan:
    footprints_m: list[float]
    overlap: float = 0.5

    def tiles(self, gmap: GeoMap) -> np.ndarray:
        """Every tile centre of every scale band, in a fixed order (shards and resume rely on it)."""
        left, bottom, right, top = gmap.bounds
        rows = []
        for band, fp in enumerate(self.footprints_m):
            step = fp * (1.0 - self.overlap)
            if step <= 0:
                raise SkylocError(f"overlap {self.overlap} must be below 1")
            xs = np.arange(left + fp / 2, right - fp / 2 + 1e-6, step)
            ys = np.arange(top - fp / 2, bottom + fp / 2 - 1e-6, -step)
            if xs.size == 0 or ys.size == 0:
                raise SkylocError(f"{gmap.path} ({right - left:.0f}x{top - bottom:.0f} m) is smaller than a "
                                  f"{fp:.0f} m tile: use smaller --footprint")
            gx, gy = np.meshgrid(xs, ys)
            lat, lon = gmap.geodesy.to_latlon(gx.ravel(), gy.ravel())
            t = np.zeros(gx.size, TILE_DTYPE)
            t["x"], t["y"], t["lat"], t["lon"] = gx.ravel(), gy.ravel(), lat, lon
            t["footprint_m"], t["band"] = fp, band
            rows.append(t)
        return np.concatenate(rows)


def valid_share(gmap: GeoMap, tiles: np.ndarray) -> np.ndarray:
    """Share of valid (not nodata) map under each tile, from a coarse mask of the whole map."""
    valid, m_per_px = gmap.valid_mask()
    if valid.all():
        return np.ones(len(tiles))
    integral = cv2.integral(valid.astype(np.uint8))
    left, _, _, top = gmap.bounds
    h, w = valid.shape
    out = np.empty(len(tiles))
    for i, t in enumerate(tiles):
        half = float(t["footprint_m"]) / 2
        c0, c1 = int(np.clip((t["x"] - half - left) / m_per_px, 0, w)), int(np.clip((t["x"] + half - left) / m_per_px, 0, w))
        r0, r1 = int(np.clip((top - t["y"] - half) / m_per_px, 0, h)), int(np.clip((top - t["y"] + half) / m_per_px, 0, h))
        area = max(1, (c1 - c0) * (r1 - r0))
        out[i] = (integral[r1, c1] - integral[r0, c1] - integral[r1, c0] + integral[r0, c0]) / area
    return out


def plan_tiles(gmap: GeoMap, footprints_m: list[float], overlap: float, min_valid: float) -> tuple[np.ndarray, int]:
    """The tiles a cache of this map holds, in their fixed order, and how many were skipped as nodata."""
    tiles = TilingPlan([float(f) for f in footprints_m], overlap).tiles(gmap)
    keep = valid_share(gmap, tiles) >= min_valid
    if not keep.any():
        raise SkylocError(f"{gmap.path}: every tile is mostly nodata; check --nodata/--bands or the map")
    return tiles[keep], int((~keep).sum())


def _manifest(meta: ModelMeta, gmap: GeoMap, plan: TilingPlan, n: int, shard: tuple[int, int] | None,
              skipped: int) -> dict:
    return {
        "format_version": CACHE_FORMAT,
        "model_name": meta.model_name,
        "model_fingerprint": meta.fingerprint,
        "embedding_dim": meta.embedding_dim,
        "source_map": gmap.uri if getattr(gmap, "remote", False) else str(gmap.path.resolve()),
        "source_sha256": gmap.sha256,
        "crs": gmap.crs.to_string(),
        "gsd_m": gmap.gsd,
        "bounds": list(gmap.bounds),
        "footprints_m": list(plan.footprints_m),
        "overlap": plan.overlap,
        "tiles": int(n),
        "skipped_tiles": int(skipped),
        "bands": list(gmap.bands),
        "colour": gmap.colour,
        "nodata": gmap.nodata_override,
        "shard": list(shard) if shard else None,
        **({"mosaic_members": len(gmap.members), "mosaic_skipped": [Path(s).name for s in gmap.skipped],
            "on_bad": gmap.on_bad} if hasattr(gmap, "members") else {}),
    }


def build_cache(map_path: str | Path, embedder: Embedder, out: str | Path, footprints_m: list[float],
                overlap: float = 0.5, batch_size: int = 32, shard: tuple[int, int] | None = None,
                progress=None, stop_after: int | None = None, bands: tuple[int, ...] | None = None,
                nodata: float | None = None, min_valid: float = 0.5, map_features: bool = True,
                feature_progress=None, on_bad: str = "refuse") -> Path:
    """Embed every tile of the map. Interrupted builds resume from the last finished batch.

    map_features: also store the map's registration features (`skyloc.runtime.features`), so
    that relocalization never detects them in flight (not for shards: run `skyloc map-features`
    on the merged cache).

    Tiles with less than `min_valid` of valid map (nodata, alpha, or the `nodata` override) are
    skipped; the manifest counts them. shard=(i, n) builds only the i-th of n contiguous slices
    (merge them with `merge_caches`). stop_after (tests) stops after that many tiles, as an
    interruption would. The map may be a mosaic (`open_map`); on_bad says what to do with a
    member that cannot be read (refuse, or skip and leave its area out).
    """
    opened = not isinstance(map_path, (str, Path))  # an open map (a worker building many shards)
    gmap = map_path if opened else open_map(map_path, bands=bands, nodata=nodata, on_bad=on_bad)
    plan = TilingPlan([float(f) for f in footprints_m], overlap)
    tiles, skipped = plan_tiles(gmap, plan.footprints_m, overlap, min_valid)
    if shard:
        i, n = shard
        if not 0 <= i < n:
            raise SkylocError(f"--shard {i}/{n}: the index must be in 0..{n - 1}")
        lo, hi = len(tiles) * i // n, len(tiles) * (i + 1) // n
        tiles = tiles[lo:hi]
    out = Path(out)
    meta = embedder.meta
    manifest = _manifest(meta, gmap, plan, len(tiles), shard, skipped)
    partial = out / "embeddings.partial.npy"
    state_file = out / "progress.json"
    done = 0
    if (out / "manifest.json").is_file():
        shutil.rmtree(out)  # a finished cache is rebuilt from scratch when asked again
    if state_file.is_file() and partial.is_file():
        state = json.loads(state_file.read_text())
        if state.get("manifest") == manifest:
            done = int(state["done"])
            log.info("resuming %s at tile %d/%d", out, done, len(tiles))
        else:
            log.info("%s was started with other settings; starting over", out)
            done = 0
    out.mkdir(parents=True, exist_ok=True)
    if done == 0:
        emb = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float16, shape=(len(tiles), meta.embedding_dim))
    else:
        emb = np.load(partial, mmap_mode="r+")
    np.save(out / "tiles.npy", tiles)
    if progress:
        progress(done, len(tiles))
    side_px = max(meta.data_config.height, meta.data_config.width)
    while done < len(tiles):
        stop = min(done + batch_size, len(tiles))
        images = [gmap.read_window(t["x"], t["y"], float(t["footprint_m"]), side_px) for t in tiles[done:stop]]
        emb[done:stop] = embed_images(embedder, images, batch_size).astype(np.float16)
        emb.flush()
        done = stop
        state_file.write_text(json.dumps({"done": done, "manifest": manifest}))
        if progress:
            progress(done, len(tiles))
        if stop_after is not None and done >= stop_after and done < len(tiles):
            return out  # simulated interruption (tests)
    del emb
    partial.replace(out / "embeddings.npy")
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    state_file.unlink(missing_ok=True)
    if map_features and not shard:
        from skyloc.runtime.features import build_map_features

        build_map_features(out, gmap, progress=feature_progress)
    if not opened:
        gmap.close()
    return out


def merge_caches(shards: list[str | Path], out: str | Path) -> Path:
    """Join shard caches of one map and model (in shard order) into one cache."""
    loaded = [TileCache.load(s) for s in shards]
    ref = loaded[0].manifest
    keys = ("model_fingerprint", "embedding_dim", "source_sha256", "footprints_m", "overlap")
    for c in loaded[1:]:
        for k in keys:
            if c.manifest[k] != ref[k]:
                raise SkylocError(f"cannot merge {c.path}: its {k} differs from {loaded[0].path}")
    loaded.sort(key=lambda c: (c.manifest.get("shard") or [0])[0])
    got = sorted((c.manifest.get("shard") or [0, 1])[0] for c in loaded)
    total = (ref.get("shard") or [0, 1])[1]
    if got != list(range(total)):
        raise SkylocError(f"shards {got} given, but {total} make up the cache: pass all of them")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    total_tiles = sum(len(c) for c in loaded)
    # streamed shard by shard into the memory map: a 10M-tile cache never sits in RAM
    emb = np.lib.format.open_memmap(out / "embeddings.partial.npy", "w+", np.float16,
                                    (total_tiles, int(ref["embedding_dim"])))
    at = 0
    for c in loaded:
        for a in range(0, len(c), 262144):
            block = np.asarray(c.embeddings[a:a + 262144])
            emb[at:at + len(block)] = block
            at += len(block)
    emb.flush()
    del emb
    (out / "embeddings.partial.npy").replace(out / "embeddings.npy")
    np.save(out / "tiles.npy", np.concatenate([np.asarray(c.tiles) for c in loaded]))
    manifest = {**ref, "tiles": int(sum(len(c) for c in loaded)), "shard": None}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out


def advise(emb: np.ndarray, pattern: str) -> None:
    """Tell the kernel how a memory-mapped array will be read. The runtime reads scattered rows
    (windows, re-ranking, digests): "random" stops read-ahead from pulling most of a 10 GB file
    into the resident set; a build streaming it whole asks for "sequential"."""
    import mmap

    m = getattr(emb, "_mmap", None)
    if isinstance(m, mmap.mmap):
        m.madvise(mmap.MADV_RANDOM if pattern == "random" else mmap.MADV_SEQUENTIAL)


class TileCache:
    """A loaded cache: memory-mapped embeddings, the tile table and the manifest."""

    def __init__(self, path: Path, manifest: dict, embeddings: np.ndarray, tiles: np.ndarray):
        self.path, self.manifest, self.embeddings, self.tiles = path, manifest, embeddings, tiles
        self.geodesy = Geodesy(manifest["crs"])

    def __len__(self) -> int:
        return len(self.tiles)

    @property
    def footprints_m(self) -> list[float]:
        return list(self.manifest["footprints_m"])

    @classmethod
    def load(cls, path: str | Path, meta: ModelMeta | None = None) -> "TileCache":
        """Load and check against the model: a mismatch is an error, never a silent wrong answer."""
        path = Path(path)
        if not path.is_dir():
            raise SkylocError(f"tile cache not found: {path} (build it with `skyloc build-cache`)")
        mf = path / "manifest.json"
        if not mf.is_file():
            hint = " (an interrupted build: run build-cache again to resume)" if (path / "progress.json").is_file() else ""
            raise SkylocError(f"{path} has no manifest.json: not a finished tile cache{hint}")
        try:
            manifest = json.loads(mf.read_text())
        except json.JSONDecodeError as exc:
            raise SkylocError(f"{mf} is corrupt ({exc.msg}): rebuild the cache") from None
        if manifest.get("format_version", 0) > CACHE_FORMAT:
            raise SkylocError(f"{path} is cache format {manifest['format_version']}; this skyloc reads "
                              f"<= {CACHE_FORMAT}: upgrade skyloc")
        try:
            emb = np.load(path / "embeddings.npy", mmap_mode="r")
            tiles = np.load(path / "tiles.npy", mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise SkylocError(f"{path}: embeddings.npy or tiles.npy is missing or corrupt ({exc}): "
                              "rebuild the cache") from None
        n = int(manifest.get("tiles", -1))
        if emb.ndim != 2 or emb.shape[0] != n or len(tiles) != n or emb.shape[1] != manifest["embedding_dim"]:
            raise SkylocError(f"{path}: embeddings {emb.shape} / tiles {len(tiles)} do not match the manifest "
                              f"({n} tiles of {manifest['embedding_dim']}): the cache is truncated, rebuild it")
        if tiles.dtype != TILE_DTYPE:
            raise SkylocError(f"{path}/tiles.npy has an unknown layout: rebuild the cache")
        advise(emb, "random")
        cache = cls(path, manifest, emb, tiles)
        if meta is not None:
            cache.check_model(meta)
        return cache

    def check_model(self, meta: ModelMeta) -> None:
        """A cache of another model is refused: its embeddings mean nothing to this one."""
        m = self.manifest
        try:
            meta.check_compatible(m["model_fingerprint"], m["embedding_dim"], f"cache {self.path}")
        except ModelMismatchError as exc:
            raise ModelMismatchError(f"{exc} [cache model: {m['model_name']}]") from None


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """`I/N` (build shard I of N) -> (I, N); None builds the whole map."""
    if not text:
        return None
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise SkylocError(f"--shard {text!r}: write it as I/N, e.g. 0/4") from None
    return i, n


def describe_cache(path: str | Path) -> str:
    """One line on a finished cache: its tiles, descriptors, scales and model."""
    m = json.loads((Path(path) / "manifest.json").read_text())
    feats = []
    for level in sorted((Path(path) / "map_features").glob("g*/manifest.json")):
        lm = json.loads(level.read_text())
        feats.append(f"{lm.get('features_total', 0)} at {lm.get('gsd_m', 0):.2f} m/px")
    index, index_text = Path(path) / "index" / "manifest.json", "no index (skyloc index)"
    if index.is_file():
        im = json.loads(index.read_text())
        size = sum(f.stat().st_size for f in (Path(path) / "index").glob("*.faiss")) / 1e6
        index_text = f"index {', '.join(e['factory'] for e in im['bands'].values())} ({size:.0f} MB)"
    return (f"{path}: {m['tiles']} tiles ({m['skipped_tiles']} skipped as mostly nodata), {m['embedding_dim']}-d, "
            f"footprints {m['footprints_m']} m, {m['colour']} map, model {m['model_name']} ({m['model_fingerprint']}); "
            f"map features: {', '.join(feats) if feats else 'none stored (skyloc map-features)'}; {index_text}")
