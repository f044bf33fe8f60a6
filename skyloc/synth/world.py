"""Procedural georeferenced orthophotos: fields, water, roads, buildings with shadows, trees.

The layout comes from `seed`; `season` changes only the colours, so one layout in two seasons
gives the cross-season test that real flights face (map from one date, camera on another).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from skyloc.errors import SkylocError
from skyloc.runtime.geo import Geodesy, utm_crs_for

SEASONS = {
    # field palette (RGB), tree colour, water colour, global tint
    "summer": ([(96, 130, 60), (120, 150, 70), (160, 150, 90), (140, 120, 80), (80, 110, 55), (185, 170, 110)],
               (40, 70, 35), (50, 80, 105), (1.0, 1.0, 1.0)),
    "autumn": ([(150, 120, 70), (170, 150, 95), (120, 110, 70), (110, 95, 70), (140, 140, 90), (190, 160, 100)],
               (110, 80, 40), (60, 80, 95), (1.05, 0.98, 0.9)),
}


@dataclass
class SynthMap:
    image: np.ndarray  # RGB uint8 [H,W,3]
    crs: str
    transform: tuple[float, float, float, float, float, float]  # affine a,b,c,d,e,f
    gsd: float


def generate(size_px: int = 2048, gsd: float = 1.0, seed: int = 0, season: str = "summer",
             lat: float = 47.4, lon: float = 8.5) -> SynthMap:
    """Render a world of size_px x size_px pixels at `gsd` metres per pixel centred at lat/lon."""
    if season not in SEASONS:
        raise SkylocError(f"unknown season {season!r}; use one of {sorted(SEASONS)}")
    layout = np.random.default_rng(seed)  # positions and shapes: the same in every season
    # colours: per season; crc32, not hash(), which Python salts per process (worlds differed run to run)
    tint = np.random.default_rng(seed * 7919 + zlib.crc32(season.encode()) % 1000)
    palette, tree_rgb, water_rgb, tint_mul = SEASONS[season]
    n = size_px
    img = _fields(n, layout, tint, palette)
    _water(img, n, layout, water_rgb)
    roads = _roads(img, n, layout, gsd)
    _buildings(img, n, layout, roads, gsd, tint)
    _trees(img, n, layout, tree_rgb, gsd)
    noise = layout.normal(0, 6, (n, n, 1)).astype(np.float32)
    out = np.clip(img.astype(np.float32) * np.asarray(tint_mul, np.float32) + noise, 0, 255).astype(np.uint8)
    crs = utm_crs_for(lat, lon)
    cx, cy = Geodesy(crs).from_latlon(lat, lon)
    left, top = cx - n * gsd / 2, cy + n * gsd / 2
    return SynthMap(out, crs, (gsd, 0.0, left, 0.0, -gsd, top), gsd)


def _fields(n, rng, tint, palette) -> np.ndarray:
    cells = max(8, n // 160)
    pts = rng.uniform(0, n, (cells * cells, 2)).astype(np.float32)
    low = 256
    yy, xx = np.mgrid[0:low, 0:low].astype(np.float32) * (n / low)
    d = (xx[..., None] - pts[:, 0]) ** 2 + (yy[..., None] - pts[:, 1]) ** 2
    labels = cv2.resize(np.argmin(d, axis=2).astype(np.uint16), (n, n), interpolation=cv2.INTER_NEAREST)
    img = np.zeros((n, n, 3), np.float32)
    colours = np.asarray(palette, np.float32)[rng.integers(0, len(palette), len(pts))]
    colours += tint.normal(0, 10, colours.shape)
    img[:] = colours[labels]
    # crop rows: stripes at a per-field angle
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    angles = rng.uniform(0, np.pi, len(pts)).astype(np.float32)[labels]
    period = rng.uniform(4, 12, len(pts)).astype(np.float32)[labels]
    stripes = np.sin((xx * np.cos(angles) + yy * np.sin(angles)) * (2 * np.pi) / period)
    img += (stripes * 8)[..., None]
    edges = cv2.Canny(labels.astype(np.uint8) * 7, 1, 1) > 0  # hedges between fields
    img[cv2.dilate(edges.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0] *= 0.7
    return np.clip(img, 0, 255).astype(np.uint8)


def _smooth_noise(n, rng, scale) -> np.ndarray:
    """Low-frequency noise: blur a small grid (cheap), then upsample smoothly."""
    k = max(2, n // scale)
    small = cv2.GaussianBlur(rng.normal(0, 1, (k, k)).astype(np.float32), (0, 0), 0.5 * k / scale)
    return cv2.resize(small, (n, n), interpolation=cv2.INTER_CUBIC)


def _water(img, n, rng, water_rgb) -> None:
    field = _smooth_noise(n, rng, 6)
    mask = field > np.quantile(field, 0.93)
    ripple = rng.normal(0, 4, (n, n, 1))
    img[mask] = np.clip(np.asarray(water_rgb) + ripple[mask], 0, 255).astype(np.uint8)


def _roads(img, n, rng, gsd) -> list[np.ndarray]:
    """A perturbed grid of main roads plus a few curved lanes; returns the polylines."""
    lines = []
    spacing = int(rng.uniform(250, 400) / gsd)
    for axis in (0, 1):
        for k in range(spacing // 2, n, spacing):
            if rng.random() < 0.25:
                continue
            t = np.linspace(-50, n + 50, 12)
            off = k + np.cumsum(rng.normal(0, 12 / gsd, t.size))
            pts = np.stack([t, off], 1) if axis == 0 else np.stack([off, t], 1)
            lines.append(pts.astype(np.int32))
    for _ in range(max(2, n // 400)):
        p = rng.uniform(0, n, 2)
        heading = rng.uniform(0, 2 * np.pi)
        pts = [p.copy()]
        for _ in range(20):
            heading += rng.normal(0, 0.25)
            p = p + 40 / gsd * np.array([np.cos(heading), np.sin(heading)])
            pts.append(p.copy())
        lines.append(np.asarray(pts, np.int32))
    for i, pts in enumerate(lines):
        width = max(3, int((10 if i % 3 else 14) / gsd))
        cv2.polylines(img, [pts], False, (95, 95, 98), width + 2, cv2.LINE_AA)
        cv2.polylines(img, [pts], False, (125, 125, 128), width, cv2.LINE_AA)
        if width >= 8:
            cv2.polylines(img, [pts], False, (220, 220, 210), 1, cv2.LINE_AA)
    return lines


def _buildings(img, n, rng, roads, gsd, tint) -> None:
    roofs = [(170, 70, 55), (150, 150, 150), (110, 80, 60), (200, 195, 185), (90, 95, 110)]
    shadow = np.array([0.45, 0.45, 0.5])
    sun = np.array([6.0, 5.0]) / gsd  # shadows fall south-east
    for pts in roads:
        for a, b in zip(pts[:-1], pts[1:]):
            seg = (b - a).astype(np.float32)
            length = float(np.hypot(*seg))
            if length < 1:
                continue
            u = seg / length
            normal = np.array([-u[1], u[0]])
            for s in np.arange(0, length, rng.uniform(22, 40) / gsd):
                if rng.random() < 0.45:
                    continue
                side = rng.choice([-1, 1])
                w, d = rng.uniform(8, 22) / gsd, rng.uniform(8, 18) / gsd
                c = a + u * s + normal * side * (d / 2 + 12 / gsd)
                angle = float(np.degrees(np.arctan2(u[1], u[0])))
                box = cv2.boxPoints(((float(c[0]), float(c[1])), (w, d), angle)).astype(np.int32)
                sh = (box + sun).astype(np.int32)
                hull = cv2.convexHull(np.concatenate([box, sh]))
                x0, y0 = np.clip(hull.min(0)[0], 0, n - 1)
                x1, y1 = np.clip(hull.max(0)[0] + 1, 0, n)
                if x1 <= x0 or y1 <= y0:
                    continue
                mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
                cv2.fillConvexPoly(mask, hull - np.array([x0, y0]), 1)
                region = img[y0:y1, x0:x1]
                region[mask > 0] = (region[mask > 0] * shadow).astype(np.uint8)
                roof = np.clip(np.asarray(roofs[rng.integers(len(roofs))]) + tint.normal(0, 12, 3), 0, 255)
                cv2.fillConvexPoly(img, box, tuple(int(v) for v in roof), cv2.LINE_AA)
                mid = box.mean(0)
                ridge = (u * w / 2 * 0.8).astype(np.float32)
                cv2.line(img, tuple((mid - ridge).astype(int)), tuple((mid + ridge).astype(int)),
                         tuple(int(v * 0.75) for v in roof), max(1, int(1.5 / gsd)), cv2.LINE_AA)


def _trees(img, n, rng, tree_rgb, gsd) -> None:
    density = _smooth_noise(n, rng, 10)
    thresh = np.quantile(density, 0.8)
    for _ in range(int(n * n / 900)):
        x, y = rng.integers(0, n, 2)
        if density[y, x] < thresh and rng.random() > 0.03:
            continue
        r = int(rng.uniform(2.0, 5.0) / gsd) + 1
        cv2.circle(img, (int(x + 3 / gsd), int(y + 3 / gsd)), r, (35, 45, 30), -1, cv2.LINE_AA)
        shade = np.clip(np.asarray(tree_rgb) + rng.normal(0, 12, 3), 0, 255)
        cv2.circle(img, (int(x), int(y)), r, tuple(int(v) for v in shade), -1, cv2.LINE_AA)


def add_border(image: np.ndarray, share: float, value: int = 255, seed: int = 0) -> np.ndarray:
    """Paint `share` of the image outside a tilted footprint with a constant `value`, like the
    undeclared white border around a real orthophoto mosaic (no nodata in the file)."""
    if share <= 0:
        return image
    n_h, n_w = image.shape[:2]
    rng = np.random.default_rng(seed + 17)
    angle = float(rng.uniform(15, 35))
    keep = np.zeros((n_h, n_w), np.uint8)
    for side in np.linspace(1.5, 0.2, 60):  # shrink a tilted square until the border share is reached
        keep[:] = 0
        box = cv2.boxPoints(((n_w / 2, n_h / 2), (side * n_w, side * n_h), angle)).astype(np.int32)
        cv2.fillConvexPoly(keep, box, 1)
        if 1.0 - keep.mean() >= share:
            break
    out = image.copy()
    out[keep == 0] = value
    return out


def write_geotiff(world: SynthMap, path: str | Path, bands: int = 3, border: float = 0.0, border_value: int = 255,
                  seed: int = 0) -> Path:
    """Write a GeoTIFF (tiled, deflate) that rasterio/GDAL and QGIS read.

    bands=1 writes the grey (luminance) map, as panchromatic orthophotos come; border > 0 adds an
    undeclared constant border over that share of the extent.
    """
    import rasterio
    from affine import Affine

    from skyloc.runtime.preprocess import to_grey

    if bands not in (1, 3):
        raise SkylocError(f"--bands {bands}: synthetic maps are written with 1 (grey) or 3 (RGB) bands")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = world.image if bands == 3 else to_grey(world.image)[..., None]
    img = add_border(img, border, border_value, seed)
    h, w = img.shape[:2]
    profile = dict(driver="GTiff", width=w, height=h, count=bands, dtype="uint8", crs=world.crs,
                   transform=Affine(*world.transform), tiled=True, blockxsize=256, blockysize=256,
                   compress="deflate", photometric="RGB" if bands == 3 else "MINISBLACK")
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.transpose(img, (2, 0, 1)))
    return path


def generate_terrain(world: SynthMap, relief_m: float = 80.0, seed: int = 0, wavelength_m: float = 700.0) -> np.ndarray:
    """Smooth hills under a world (float32 metres above sea level, one value per map pixel):
    `relief_m` from the lowest to the highest point, features about `wavelength_m` across."""
    n = world.image.shape[0]
    rng = np.random.default_rng(zlib.crc32(f"terrain{seed}".encode()))
    cells = max(2, int(round(n * world.gsd / wavelength_m)) + 2)
    coarse = rng.normal(0, 1, (cells, cells)).astype(np.float32)
    z = cv2.resize(coarse, (n, n), interpolation=cv2.INTER_CUBIC)
    z = cv2.GaussianBlur(z, (0, 0), max(1.0, 0.15 * wavelength_m / world.gsd))
    z = (z - z.min()) / max(1e-6, float(z.max() - z.min()))
    return (200.0 + relief_m * z).astype(np.float32)


def write_dem(world: SynthMap, elevation: np.ndarray, path: str | Path, step: int = 8) -> Path:
    """The elevation model as a GeoTIFF beside the map, `step` map pixels per DEM pixel (DEMs are coarse)."""
    import rasterio
    from affine import Affine

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = elevation.shape
    small = cv2.resize(elevation, (w // step, h // step), interpolation=cv2.INTER_AREA)
    a, b, c, d, e, f = world.transform
    profile = dict(driver="GTiff", width=small.shape[1], height=small.shape[0], count=1, dtype="float32",
                   crs=world.crs, transform=Affine(a * step, b, c, d, e * step, f), compress="deflate")
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(small[None])
    return path
