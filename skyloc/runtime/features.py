"""Local features for registration: how an image is described, and the map's side, detected once.

Registration matches RootSIFT features of the frame against the map's around a predicted place.
The map's features do not change between frames, flights or drones, so they are detected tile by
tile on a fixed grid (`MapFeatures`) and either kept in memory on first use or, when the tile
cache carries a store (`NAME.cache/map_features/`, written by `skyloc build-cache` or
`skyloc map-features`), read from it memory-mapped: a relocalization over an area the drone has
not seen yet then costs the matching, not a SIFT pass over a square kilometre of map.

Store layout, one folder per working resolution (`g0.5000/` for 0.5 m/px):
    index.npy     per grid tile (i, j, start, count) into the arrays below
    xy.npy        float32 [M,2] keypoints in tile-core pixels
    angle.npy     float32 [M] keypoint orientation (deg)
    size.npy      float32 [M] keypoint size (px)
    desc.npy      uint8 [M,128] SIFT descriptors (OpenCV's are whole numbers 0..255: lossless)
    manifest.json features version, map sha256, bands, nodata, GSD, grid (tile and pad px), bounds
"""
from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from skyloc.errors import SkylocError
from skyloc.runtime.geo import GeoMap
from skyloc.runtime.preprocess import normalize_contrast, to_grey

log = logging.getLogger("skyloc.features")

# what a stored feature means: the detector, its settings and the contrast normalisation before it.
# Change it whenever any of them changes, and stored features of the old kind are no longer used.
FEATURES_VERSION = "sift-all-clahe4x2-v1"
TILE_PX, PAD_PX = 320, 24
INDEX_DTYPE = np.dtype([("i", "i4"), ("j", "i4"), ("start", "i8"), ("count", "i4")])

Features = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # xy [N,2], angle [N], size [N], descriptors


def make_detector(kind: str, n: int):
    if kind == "sift":
        return cv2.SIFT_create(nfeatures=n)
    raise ValueError(f"unknown feature type {kind!r}: use sift")


def detect(grey: np.ndarray, mask: np.ndarray, detector) -> Features | None:
    """SIFT on the contrast-normalised image: keypoints and raw (uint8) descriptors."""
    kp, desc = detector.detectAndCompute(normalize_contrast(grey), mask.astype(np.uint8) * 255)
    if desc is None or len(kp) == 0:
        return None
    return (np.float32([k.pt for k in kp]), np.float32([k.angle for k in kp]), np.float32([k.size for k in kp]),
            np.clip(np.rint(desc), 0, 255).astype(np.uint8))


def root_sift(desc: np.ndarray) -> np.ndarray:
    """RootSIFT (the Hellinger kernel matches better across appearance changes); rows have unit length."""
    d = desc.astype(np.float32)
    return np.sqrt(d / (d.sum(axis=1, keepdims=True) + 1e-7))


def describe(grey: np.ndarray, mask: np.ndarray, detector) -> Features | None:
    """Keypoints and RootSIFT descriptors: what registration matches, frame and map alike."""
    f = detect(grey, mask, detector)
    return None if f is None else (f[0], f[1], f[2], root_sift(f[3]))


def grid_shape(gmap: GeoMap, gsd: float) -> tuple[int, int]:
    """Columns and rows of feature tiles that cover the map at `gsd`."""
    left, bottom, right, top = gmap.bounds
    return int(math.ceil((right - left) / (TILE_PX * gsd))), int(math.ceil((top - bottom) / (TILE_PX * gsd)))


def tile_features(gmap: GeoMap, gsd: float, i: int, j: int, detector) -> Features | None:
    """Features of grid tile (i, j) at `gsd`, detected with a margin (no edge effects at the seams)
    and kept where they fall in the tile's core: xy in core pixels, raw uint8 descriptors."""
    t, pad = TILE_PX, PAD_PX
    side_px = t + 2 * pad
    left, _, _, top = gmap.bounds
    cx, cy = left + (i + 0.5) * t * gsd, top - (j + 0.5) * t * gsd
    rgb, valid = gmap.read_window_masked(cx, cy, side_px * gsd, side_px)
    if valid.mean() <= 0.02:
        return None
    valid = cv2.erode(valid.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    f = detect(to_grey(rgb), valid, detector)
    if f is None:
        return None
    xy, ang, size, desc = f
    core = np.all((xy >= pad) & (xy < pad + t), axis=1)
    return xy[core] - pad, ang[core], size[core], desc[core]


def _store_manifest(gmap: GeoMap, gsd: float) -> dict:
    """What stored features depend on (the map file itself is checked by `_same_map`)."""
    return {"features": FEATURES_VERSION, "bands": list(gmap.bands), "nodata": gmap.nodata_override,
            "gsd_m": round(gsd, 6), "tile_px": TILE_PX, "pad_px": PAD_PX,
            "bounds": [round(b, 3) for b in gmap.bounds]}


def _map_identity(gmap: GeoMap) -> dict:
    size, mtime = gmap.file_stamp()
    return {"map_sha256": gmap.sha256, "map_bytes": size, "map_mtime_ns": mtime}


def _same_map(manifest: dict, gmap: GeoMap) -> bool:
    """The file's size and time, else (a copied map has a new time) its sha256."""
    size, mtime = gmap.file_stamp()
    if manifest.get("map_bytes") != size:
        return False
    return manifest.get("map_mtime_ns") == mtime or manifest.get("map_sha256") == gmap.sha256


def level_name(gsd: float) -> str:
    return f"g{gsd:.4f}"


def build_store(gmap: GeoMap, gsd: float, out: str | Path,
                progress: Callable[[int, int], None] | None = None) -> Path:
    """Detect every tile of the map at `gsd` into `out/gNN/` (replaced if it exists)."""
    out = Path(out) / level_name(gsd)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    detector = make_detector("sift", 0)
    cols, rows = grid_shape(gmap, gsd)
    index = np.zeros(cols * rows, INDEX_DTYPE)
    parts: list[Features] = []
    start = 0
    for k, (j, i) in enumerate((j, i) for j in range(rows) for i in range(cols)):
        f = tile_features(gmap, gsd, i, j, detector)
        n = 0 if f is None else len(f[0])
        index[k] = (i, j, start, n)
        if n:
            parts.append(f)
            start += n
        if progress:
            progress(k + 1, cols * rows)
    empty = (np.zeros((0, 2), np.float32), np.zeros(0, np.float32), np.zeros(0, np.float32), np.zeros((0, 128), np.uint8))
    cat = [np.concatenate([p[a] for p in parts]) if parts else empty[a] for a in range(4)]
    for name, arr in zip(("xy", "angle", "size", "desc"), cat):
        np.save(tmp / f"{name}.npy", arr)
    np.save(tmp / "index.npy", index)
    (tmp / "manifest.json").write_text(json.dumps({**_store_manifest(gmap, gsd), **_map_identity(gmap),
                                                      "features_total": int(start)}, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.replace(out)
    return out


class StoredLevel:
    """One resolution of a feature store, memory-mapped: a tile's features are a slice."""

    def __init__(self, path: Path):
        self.path = path
        self.manifest = json.loads((path / "manifest.json").read_text())
        self.index = np.load(path / "index.npy")
        self.xy, self.angle, self.size, self.desc = (np.load(path / f"{n}.npy", mmap_mode="r")
                                                     for n in ("xy", "angle", "size", "desc"))
        self.cols = int(self.index["i"].max()) + 1 if len(self.index) else 0
        total = int(self.manifest.get("features_total", -1))
        if len(self.xy) != total or len(self.desc) != total or self.desc.shape[1:] != (128,):
            raise ValueError(f"arrays of {len(self.xy)} features, manifest says {total}")

    def tile(self, i: int, j: int) -> Features | None:
        if not (0 <= i < self.cols) or j < 0 or j * self.cols + i >= len(self.index):
            return None
        row = self.index[j * self.cols + i]
        if row["count"] == 0:
            return None
        s = slice(int(row["start"]), int(row["start"]) + int(row["count"]))
        return np.asarray(self.xy[s]), np.asarray(self.angle[s]), np.asarray(self.size[s]), np.asarray(self.desc[s])


def open_store(folder: str | Path, gmap: GeoMap) -> dict[float, StoredLevel]:
    """The levels of a feature store that were made from this very map (same file, bands, nodata
    and feature kind); any other is left unused with a warning naming why (features are then
    detected as needed, as without a store)."""
    folder = Path(folder)
    levels: dict[float, StoredLevel] = {}
    if not folder.is_dir():
        return levels
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith("g") and p.suffix != ".partial"):
        try:
            lvl = StoredLevel(sub)
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
            log.warning("map features %s are unreadable (%s): ignored; rebuild them with `skyloc map-features`", sub, exc)
            continue
        want = _store_manifest(gmap, float(lvl.manifest.get("gsd_m", 0.0)))
        differs = [k for k in want if lvl.manifest.get(k) != want[k]]
        if not differs and not _same_map(lvl.manifest, gmap):
            differs = [f"map file (not {gmap.path})"]
        if differs:
            log.warning("map features %s were made with another %s: ignored; rebuild them with "
                        "`skyloc map-features`", sub, ", ".join(differs))
            continue
        levels[round(float(lvl.manifest["gsd_m"]), 4)] = lvl
    return levels


class MapFeatures:
    """Local features of the map at one working resolution, tile by tile on the store's grid:
    from the store when it has this resolution, else detected on first use. Consecutive
    registrations look at overlapping windows, so tiles are kept (an LRU bounds the memory)."""

    def __init__(self, gmap: GeoMap, gsd: float, detector, stored: StoredLevel | None = None, max_tiles: int = 400):
        self.map, self.gsd, self.detector, self.stored, self.max_tiles = gmap, gsd, detector, stored, max_tiles
        left, _, _, top = gmap.bounds
        self.x0, self.y1 = left, top
        self.tiles: dict[tuple[int, int], Features | None] = {}

    def _tile(self, i: int, j: int) -> Features | None:
        key = (i, j)
        if key in self.tiles:
            self.tiles[key] = self.tiles.pop(key)  # most recently used last
            return self.tiles[key]
        f = self.stored.tile(i, j) if self.stored is not None else tile_features(self.map, self.gsd, i, j, self.detector)
        if f is not None:
            g, t = self.gsd, TILE_PX
            xy, ang, size, desc = f
            ground = np.column_stack([self.x0 + (i * t + xy[:, 0]) * g, self.y1 - (j * t + xy[:, 1]) * g])
            f = (ground, ang, size, root_sift(desc))
        self.tiles[key] = f
        while len(self.tiles) > self.max_tiles:
            self.tiles.pop(next(iter(self.tiles)))
        return f

    def window(self, wx0: float, wy1: float, w_px: int, h_px: int) -> Features | None:
        """Features inside the window whose top-left corner is (wx0, wy1), in window pixels."""
        g, t = self.gsd, TILE_PX
        i0, i1 = int(math.floor((wx0 - self.x0) / (t * g))), int(math.floor((wx0 + w_px * g - self.x0) / (t * g)))
        j0, j1 = int(math.floor((self.y1 - wy1) / (t * g))), int(math.floor((self.y1 - wy1 + h_px * g) / (t * g)))
        parts = [f for i in range(max(0, i0), i1 + 1) for j in range(max(0, j0), j1 + 1)
                 if (f := self._tile(i, j)) is not None and len(f[0])]
        if not parts:
            return None
        ground = np.concatenate([p[0] for p in parts])
        xy = np.column_stack([(ground[:, 0] - wx0) / g, (wy1 - ground[:, 1]) / g]).astype(np.float32)
        inside = (xy[:, 0] >= 0) & (xy[:, 0] < w_px) & (xy[:, 1] >= 0) & (xy[:, 1] < h_px)
        if not inside.any():
            return None
        return (xy[inside], np.concatenate([p[1] for p in parts])[inside],
                np.concatenate([p[2] for p in parts])[inside], np.concatenate([p[3] for p in parts])[inside])


def build_map_features(cache_dir: str | Path, gmap: GeoMap, gsds: list[float] | None = None,
                       progress: Callable[[int, int], None] | None = None) -> list[Path]:
    """Write the map's features into a tile cache (default: at the map's own GSD, where frames
    finer than the map are registered). The cache must be of this map."""
    cache_dir = Path(cache_dir)
    mf = cache_dir / "manifest.json"
    if not mf.is_file():
        raise SkylocError(f"{cache_dir} is not a finished tile cache (no manifest.json)")
    manifest = json.loads(mf.read_text())
    if manifest.get("source_sha256") not in (None, gmap.sha256):
        raise SkylocError(f"{gmap.path} is not the map {cache_dir} was built from ({manifest.get('source_map')}): "
                          "pass that map")
    out = cache_dir / "map_features"
    return [build_store(gmap, g, out, progress) for g in (gsds or [gmap.gsd])]
