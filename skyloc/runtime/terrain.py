"""An elevation model (DEM): the ground's height under the camera, so a barometric altitude above
the take-off point becomes a height above the ground there (hills are tens of percent of it).

Any GeoTIFF (or raster GDAL reads) with a CRS; it is reprojected on the fly to the map's CRS and
the part over the map is held in memory (a DEM is coarse: a 10 km square at 10 m is 1000 x 1000).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from skyloc.errors import SkylocError


class Terrain:
    def __init__(self, path: str | Path, map_crs, map_bounds: tuple[float, float, float, float]):
        import rasterio
        from rasterio.vrt import WarpedVRT
        from rasterio.windows import from_bounds

        self.path = Path(path)
        if not self.path.is_file():
            raise SkylocError(f"DEM not found: {self.path} (--dem / localizer.dem)")
        try:
            src = rasterio.open(self.path)
        except Exception as exc:
            raise SkylocError(f"cannot open DEM {self.path}: {str(exc).splitlines()[0]}") from None
        with src:
            if src.crs is None:
                raise SkylocError(f"DEM {self.path} has no CRS: give a georeferenced GeoTIFF (gdal_edit.py -a_srs EPSG:...)")
            with WarpedVRT(src, crs=map_crs, resampling=rasterio.enums.Resampling.bilinear) as vrt:
                left, bottom, right, top = map_bounds
                vl, vb, vr, vt = vrt.bounds
                ix = max(0.0, min(right, vr) - max(left, vl)) * max(0.0, min(top, vt) - max(bottom, vb))
                if ix < 0.5 * (right - left) * (top - bottom):
                    raise SkylocError(f"DEM {self.path} covers {100 * ix / ((right - left) * (top - bottom)):.0f} % of "
                                      "the map: give a DEM of the whole area flown")
                pad = 3 * max(abs(vrt.transform.a), abs(vrt.transform.e))
                win = from_bounds(max(vl, left - pad), max(vb, bottom - pad), min(vr, right + pad), min(vt, top + pad),
                                  vrt.transform).round_offsets().round_lengths()
                band = vrt.read(1, window=win, masked=True).astype(np.float64)
                self.transform = vrt.window_transform(win)
        self.z = np.where(np.ma.getmaskarray(band), np.nan, band.filled(np.nan))
        if not np.isfinite(self.z).any():
            raise SkylocError(f"DEM {self.path} has no valid elevations over the map")
        self.res = (abs(self.transform.a), abs(self.transform.e))

    def elevation(self, x: float, y: float) -> float:
        """Ground elevation (DEM units, metres) at map coordinates, bilinear; NaN outside the DEM."""
        inv = ~self.transform
        c, r = inv @ (x, y)
        c, r = c - 0.5, r - 0.5
        c0, r0 = int(math.floor(c)), int(math.floor(r))
        h, w = self.z.shape
        if not (0 <= c0 < w - 1 and 0 <= r0 < h - 1):
            return math.nan
        fc, fr = c - c0, r - r0
        q = self.z[r0:r0 + 2, c0:c0 + 2]
        return float((q[0, 0] * (1 - fc) + q[0, 1] * fc) * (1 - fr) + (q[1, 0] * (1 - fc) + q[1, 1] * fc) * fr)

    def elevations(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """elevation() for arrays of points (bilinear; NaN outside)."""
        inv = ~self.transform
        c = inv.a * np.asarray(x) + inv.b * np.asarray(y) + inv.c - 0.5
        r = inv.d * np.asarray(x) + inv.e * np.asarray(y) + inv.f - 0.5
        h, w = self.z.shape
        c0, r0 = np.floor(c).astype(int), np.floor(r).astype(int)
        ok = (c0 >= 0) & (c0 < w - 1) & (r0 >= 0) & (r0 < h - 1)
        c0, r0 = np.clip(c0, 0, w - 2), np.clip(r0, 0, h - 2)
        fc, fr = c - c0, r - r0
        z = self.z
        out = ((z[r0, c0] * (1 - fc) + z[r0, c0 + 1] * fc) * (1 - fr) + (z[r0 + 1, c0] * (1 - fc) + z[r0 + 1, c0 + 1] * fc) * fr)
        return np.where(ok, out, np.nan)
