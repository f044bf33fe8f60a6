"""University-1652-style training folders from any georeferenced orthophoto (`skyloc make-pairs`).

Each class is a place: one north-up "satellite" tile and several rendered drone views of it at
varied altitude, heading, tilt and lighting. A CSV gives each class's lat/lon.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from skyloc.errors import SkylocError
from skyloc.runtime.geo import GeoMap
from skyloc.synth.render import Camera, north_up_tile, photometric, render_view


@dataclass
class PairsConfig:
    classes: int = 200  # places to sample
    views: int = 12  # drone views per place
    test_fraction: float = 0.3  # places kept for the test split (disjoint from training places)
    altitude: tuple[float, float] = (120.0, 180.0)
    yaw_range: float = 15.0  # +- degrees after north-up correction (the runtime derotates by yaw)
    pitch_max: float = 15.0
    hfov: float = 60.0
    tile_m: float | None = None  # satellite tile footprint; default: nadir footprint at mid altitude
    sat_px: int = 256
    drone_px: int = 256
    offset_m: float = 10.0  # drone position jitter around the place centre
    seed: int = 0
    min_valid: float = 0.9  # a place (its satellite tile) or a drone view with less valid map is skipped
    bands: tuple[int, ...] | None = None  # map bands to use (one for grey, three for RGB)
    nodata: float | None = None  # a constant border value the map does not declare
    drone_from: tuple[str, ...] = ()  # co-registered images of other dates: drone views come from these


def _write(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])


def _drone_source(path: str | Path, gmap: GeoMap, cfg: PairsConfig):
    """Another date of the same area, in the same CRS, as (image, valid mask, transform)."""
    other = GeoMap(path, bands=cfg.bands, nodata=cfg.nodata)
    if other.crs != gmap.crs:
        raise SkylocError(f"{path} is in {other.crs.to_string()} but {gmap.path.name} is in {gmap.crs.to_string()}: "
                          f"reproject it first (gdalwarp -t_srs {gmap.crs.to_string()})")
    left, bottom, right, top = gmap.bounds
    o_left, o_bottom, o_right, o_top = other.bounds
    overlap = max(0.0, min(right, o_right) - max(left, o_left)) * max(0.0, min(top, o_top) - max(bottom, o_bottom))
    if overlap < 0.5 * (right - left) * (top - bottom):
        raise SkylocError(f"{path} covers less than half of {gmap.path.name}: --drone-from needs images of the same area")
    img, valid = other.read_all_masked()
    t = other.transform
    return img, valid.astype(np.uint8) * 255, (t.a, 0.0, t.c, 0.0, t.e, t.f)


def make_pairs(map_path: str | Path, out_dir: str | Path, cfg: PairsConfig = PairsConfig(), progress=None) -> dict:
    """Write train/ and test/ folders in the University-1652 layout; returns a summary."""
    gmap = GeoMap(map_path, bands=cfg.bands, nodata=cfg.nodata)
    image, valid = gmap.read_all_masked()
    valid8 = valid.astype(np.uint8) * 255
    transform = (gmap.transform.a, 0.0, gmap.transform.c, 0.0, gmap.transform.e, gmap.transform.f)
    # drone views: rendered from the map itself, or from images of other dates (cross-date pairs)
    sources = [(image, valid8, transform)]
    if cfg.drone_from:
        sources = [_drone_source(p, gmap, cfg) for p in cfg.drone_from]
    rng = np.random.default_rng(cfg.seed)
    mid_alt = float(np.mean(cfg.altitude))
    tile_m = cfg.tile_m or 2 * mid_alt * np.tan(np.radians(cfg.hfov) / 2)
    margin = tile_m / 2 + cfg.offset_m + cfg.altitude[1] * np.tan(np.radians(cfg.pitch_max + cfg.hfov / 2)) * 0.5
    left, bottom, right, top = gmap.bounds
    if right - left < 2 * margin + tile_m or top - bottom < 2 * margin + tile_m:
        raise SkylocError(f"{map_path} covers {right - left:.0f}x{top - bottom:.0f} m, too small for "
                          f"{tile_m:.0f} m tiles: use a larger map or lower --altitude")
    # places on a grid of (nearly) equal spacing in x and y so that classes are distinct locations
    # (one count per axis on a 1.9 x 3.6 km strip put places 166 m apart in x and 458 m in y)
    width, height = right - left - 2 * margin, top - bottom - 2 * margin
    nx = int(np.ceil(np.sqrt(cfg.classes * width / height)))
    ny = int(np.ceil(np.sqrt(cfg.classes * height / width)))
    xs = np.linspace(left + margin, right - margin, nx)
    ys = np.linspace(top - margin, bottom + margin, ny)
    grid = [(x, y) for y in ys for x in xs]
    picks = rng.choice(len(grid), size=min(cfg.classes, len(grid)), replace=False)
    candidates = [grid[i] for i in sorted(picks)]
    places = [p for p in candidates
              if north_up_tile(valid8, transform, p[0], p[1], tile_m, 64).mean() / 255 >= cfg.min_valid]
    skipped_places = len(candidates) - len(places)
    if not places:
        raise SkylocError(f"{map_path}: every place is mostly nodata; check --nodata/--bands or the map")
    skipped_views = 0
    if progress and skipped_places:
        progress(skipped_places)
    n_test = int(round(len(places) * cfg.test_fraction))
    order = rng.permutation(len(places))
    test_ids = set(order[:n_test].tolist())
    out = Path(out_dir)
    rows = []
    for idx, (x, y) in enumerate(places):
        cls = f"{idx:04d}"
        split = "test" if idx in test_ids else "train"
        sat = north_up_tile(image, transform, x, y, tile_m, cfg.sat_px)
        drones = []
        for v in range(cfg.views):
            cam = Camera(
                x=x + rng.normal(0, cfg.offset_m / 2), y=y + rng.normal(0, cfg.offset_m / 2),
                altitude=rng.uniform(*cfg.altitude), yaw=rng.uniform(-cfg.yaw_range, cfg.yaw_range),
                pitch=rng.uniform(0, cfg.pitch_max), hfov=cfg.hfov, width=cfg.drone_px, height=cfg.drone_px)
            src_img, src_valid, src_tr = sources[int(rng.integers(len(sources)))]
            if render_view(src_valid, src_tr, cam).mean() / 255 < cfg.min_valid:
                skipped_views += 1
                continue
            drones.append(photometric(render_view(src_img, src_tr, cam), rng))
        if split == "train":
            _write(out / "train" / "satellite" / cls / f"{cls}.jpg", sat)
            for v, d in enumerate(drones):
                _write(out / "train" / "drone" / cls / f"image-{v + 1:02d}.jpeg", d)
        else:
            _write(out / "test" / "gallery_satellite" / cls / f"{cls}.jpg", sat)
            _write(out / "test" / "query_satellite" / cls / f"{cls}.jpg", sat)
            for v, d in enumerate(drones):
                _write(out / "test" / "query_drone" / cls / f"image-{v + 1:02d}.jpeg", d)
                _write(out / "test" / "gallery_drone" / cls / f"image-{v + 1:02d}.jpeg", d)
        lat, lon = gmap.geodesy.to_latlon(x, y)
        rows.append({"class": cls, "split": split, "lat": f"{lat:.7f}", "lon": f"{lon:.7f}",
                     "x": f"{x:.2f}", "y": f"{y:.2f}", "tile_m": f"{tile_m:.1f}"})
        if progress:
            progress(1)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "locations.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    gmap.close()
    return {"classes": len(places), "train": len(places) - n_test, "test": n_test, "views": cfg.views,
            "tile_m": tile_m, "out": str(out), "skipped_places": skipped_places, "skipped_views": skipped_views,
            "colour": gmap.colour}
