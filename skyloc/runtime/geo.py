"""Georeferenced rasters and coordinates (rasterio + pyproj), north-up in a local metric CRS."""
from __future__ import annotations

import hashlib
import math
from functools import cached_property
from pathlib import Path

import numpy as np

from skyloc.errors import SkylocError


def utm_crs_for(lat: float, lon: float) -> str:
    """The UTM zone CRS (EPSG code) covering a WGS84 point."""
    zone = int(math.floor((lon + 180.0) / 6.0)) % 60 + 1
    return f"EPSG:{32600 + zone if lat >= 0 else 32700 + zone}"


class Geodesy:
    """Conversions between a metric CRS and WGS84 lat/lon."""

    def __init__(self, crs):
        from pyproj import CRS, Transformer

        self.crs = CRS.from_user_input(crs)
        self._to_ll = Transformer.from_crs(self.crs, "EPSG:4326", always_xy=True)
        self._from_ll = Transformer.from_crs("EPSG:4326", self.crs, always_xy=True)

    def to_latlon(self, x, y):
        lon, lat = self._to_ll.transform(x, y)
        return lat, lon

    def from_latlon(self, lat, lon):
        return self._from_ll.transform(lon, lat)


class GeoMap:
    """A GeoTIFF seen north-up in metres: reprojected on the fly (WarpedVRT) when it is not.

    Reads are windowed, so maps larger than memory work.
    """

    def __init__(self, path: str | Path, gsd: float | None = None):
        import rasterio
        from rasterio.vrt import WarpedVRT
        from rasterio.warp import calculate_default_transform, transform as warp_transform

        self.path = Path(path)
        if not self.path.is_file():
            raise SkylocError(f"map not found: {self.path}")
        try:
            self._src = rasterio.open(self.path)
        except Exception as exc:
            raise SkylocError(f"cannot open map {self.path}: {str(exc).splitlines()[0]}") from None
        src = self._src
        if src.crs is None or src.transform.is_identity:
            raise SkylocError(f"{self.path} has no georeference (CRS/geotransform): use a GeoTIFF, or add one "
                              "with gdal_translate -a_srs/-a_ullr")
        if src.count < 3:
            raise SkylocError(f"{self.path} has {src.count} band(s); skyloc needs an RGB orthophoto (>= 3 bands)")
        t = src.transform
        north_up = abs(t.b) < 1e-12 and abs(t.d) < 1e-12 and t.e < 0
        metric = src.crs.is_projected and abs(src.crs.linear_units_factor[1] - 1.0) < 1e-9
        if north_up and metric and (gsd is None or abs(gsd - t.a) < 1e-9):
            self.ds = src
        else:
            cx, cy = src.xy(src.height // 2, src.width // 2)
            lon, lat = warp_transform(src.crs, "EPSG:4326", [cx], [cy])
            dst_crs = src.crs if metric else utm_crs_for(lat[0], lon[0])
            transform, width, height = calculate_default_transform(
                src.crs, dst_crs, src.width, src.height, *src.bounds, resolution=gsd)
            self.ds = WarpedVRT(src, crs=dst_crs, transform=transform, width=width, height=height,
                                resampling=rasterio.enums.Resampling.bilinear)
        self.crs = self.ds.crs
        self.transform = self.ds.transform
        self.gsd = float(self.transform.a)
        self.width, self.height = self.ds.width, self.ds.height
        self.geodesy = Geodesy(self.crs)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in metres."""
        b = self.ds.bounds
        return b.left, b.bottom, b.right, b.top

    @cached_property
    def sha256(self) -> str:
        h = hashlib.sha256()
        with open(self.path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        return h.hexdigest()

    def pixel_to_xy(self, col: float, row: float) -> tuple[float, float]:
        t = self.transform
        return t.c + col * t.a, t.f + row * t.e

    def xy_to_pixel(self, x: float, y: float) -> tuple[float, float]:
        t = self.transform
        return (x - t.c) / t.a, (y - t.f) / t.e

    def read_window(self, x: float, y: float, size_m: float, out_px: int | None = None) -> np.ndarray:
        """North-up RGB uint8 square of `size_m` metres centred on (x, y); outside the map is black.

        The part inside the map is read (resampled to the output scale) and pasted into a black
        canvas, which also works for reprojected (WarpedVRT) maps that refuse boundless reads.
        """
        from rasterio.enums import Resampling
        from rasterio.windows import Window

        side = size_m / self.gsd
        n = int(round(side)) if out_px is None else int(out_px)
        scale = n / side  # output pixels per map pixel
        col, row = self.xy_to_pixel(x, y)
        c0, r0 = col - side / 2, row - side / 2
        cc0, rr0 = max(0.0, c0), max(0.0, r0)
        cc1, rr1 = min(float(self.width), c0 + side), min(float(self.height), r0 + side)
        out = np.zeros((n, n, 3), np.uint8)
        if cc1 <= cc0 or rr1 <= rr0:
            return out
        ox0, oy0 = int(round((cc0 - c0) * scale)), int(round((rr0 - r0) * scale))
        ox1, oy1 = min(n, int(round((cc1 - c0) * scale))), min(n, int(round((rr1 - r0) * scale)))
        if ox1 <= ox0 or oy1 <= oy0:
            return out
        data = self.ds.read([1, 2, 3], window=Window(cc0, rr0, cc1 - cc0, rr1 - rr0),
                            out_shape=(3, oy1 - oy0, ox1 - ox0), resampling=Resampling.bilinear)
        out[oy0:oy1, ox0:ox1] = np.transpose(data, (1, 2, 0)).astype(np.uint8, copy=False)
        return out

    def read_all(self, max_pixels: int = 16_000 * 16_000) -> np.ndarray:
        """The whole map as RGB uint8 [H,W,3] (for rendering training views)."""
        if self.width * self.height > max_pixels:
            raise SkylocError(f"{self.path} is {self.width}x{self.height} px, too large to load whole; "
                              "crop the area you need first")
        return np.ascontiguousarray(np.transpose(self.ds.read([1, 2, 3]), (1, 2, 0))).astype(np.uint8, copy=False)

    def close(self) -> None:
        if self.ds is not self._src:
            self.ds.close()
        self._src.close()


def crop_geotiff(src: str | Path, dst: str | Path, x0: float, x1: float, y0: float = 0.0, y1: float = 1.0) -> Path:
    """Write a sub-rectangle (fractions of width/height) of a GeoTIFF as an RGB GeoTIFF.

    Used to split one image into training and evaluation regions.
    """
    import rasterio
    from rasterio.windows import Window

    dst = Path(dst)
    with rasterio.open(src) as s:
        c0, c1, r0, r1 = int(s.width * x0), int(s.width * x1), int(s.height * y0), int(s.height * y1)
        win = Window(c0, r0, c1 - c0, r1 - r0)
        prof = s.profile.copy()
        prof.update(width=c1 - c0, height=r1 - r0, count=3, transform=s.window_transform(win), photometric="RGB")
        with rasterio.open(dst, "w", **prof) as d:
            d.write(s.read([1, 2, 3], window=win))
    return dst
