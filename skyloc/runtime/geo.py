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

    def grid_rotation(self, lat: float, lon: float) -> float:
        """Degrees to add to a true bearing (compass, clockwise from true north) to get the bearing
        on this CRS's grid (the map's "north-up"): the meridian convergence, 2.3 deg 190 km off a
        UTM zone's central meridian at 52 deg north. Headings change CRS through this one definition."""
        x, y = self.from_latlon(lat, lon)
        x2, y2 = self.from_latlon(lat + 1e-4, lon)
        return math.degrees(math.atan2(x2 - x, y2 - y))


def parse_bands(text: str | None) -> tuple[int, ...] | None:
    """`--bands 1` or `--bands 3,2,1` -> (1,) or (3, 2, 1); None stays None (choose automatically)."""
    if text is None or str(text).strip() == "":
        return None
    try:
        bands = tuple(int(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        raise SkylocError(f"--bands {text!r}: give 1-based band numbers, one (grey) or three (R,G,B), e.g. 3,2,1") from None
    if len(bands) not in (1, 3) or min(bands) < 1:
        raise SkylocError(f"--bands {text!r}: give one band (grey) or three (R,G,B), numbered from 1")
    return bands


class WholeMapReads:
    """What every map kind shares, built on its transform (north-up), width/height/gsd and
    read_window_masked."""

    def pixel_to_xy(self, col: float, row: float) -> tuple[float, float]:
        t = self.transform
        return t.c + col * t.a, t.f + row * t.e

    def xy_to_pixel(self, x: float, y: float) -> tuple[float, float]:
        t = self.transform
        return (x - t.c) / t.a, (y - t.f) / t.e

    def read_window(self, x: float, y: float, size_m: float, out_px: int | None = None) -> np.ndarray:
        """North-up RGB uint8 square of `size_m` metres centred on (x, y); outside the map is black."""
        return self.read_window_masked(x, y, size_m, out_px)[0]

    def read_all(self, max_pixels: int = 16_000 * 16_000) -> np.ndarray:
        """The whole map as RGB uint8 [H,W,3] (for rendering training views); nodata is black."""
        return self.read_all_masked(max_pixels)[0]

    def read_all_masked(self, max_pixels: int = 16_000 * 16_000) -> tuple[np.ndarray, np.ndarray]:
        if self.width * self.height > max_pixels:
            raise SkylocError(f"{self.path} is {self.width}x{self.height} px, too large to load whole; "
                              "crop the area you need first")
        cx, cy = self.pixel_to_xy(self.width / 2, self.height / 2)
        return self.read_window_masked(cx, cy, self.width * self.gsd, self.width, self.height * self.gsd)

    def valid_mask(self, max_side: int = 2048) -> tuple[np.ndarray, float]:
        """A coarse validity mask of the whole map and its metres per pixel (for skipping tiles)."""
        f = max(1.0, max(self.width, self.height) / max_side)
        cx, cy = self.pixel_to_xy(self.width / 2, self.height / 2)
        _, valid = self.read_window_masked(cx, cy, self.width * self.gsd, max(1, int(self.width / f)),
                                           self.height * self.gsd)
        return valid, self.width * self.gsd / valid.shape[1]


class GeoMap(WholeMapReads):
    """A GeoTIFF (or any raster GDAL reads) seen north-up in metres, as 8-bit RGB plus a validity mask.

    Maps come as they are: 1 band (grey, panchromatic), 3 bands, 4 bands (RGB + NIR or alpha),
    8 or 16 bits, any CRS (reprojected on the fly with a WarpedVRT). `bands` picks the bands
    (one for grey, three for colour); 16-bit and float data are scaled to 8 bits by robust
    percentiles. Nodata comes from the file (nodata value, mask or alpha band) or from `nodata`,
    an override for maps whose border is an undeclared constant such as white. A grey map is
    handed out as RGB with three equal channels and reports `colour == "grey"`.

    Reads are windowed, so maps larger than memory work.
    """

    def __init__(self, path: str | Path, gsd: float | None = None, bands: tuple[int, ...] | None = None,
                 nodata: float | None = None, crs: str | None = None):
        import rasterio
        from rasterio.enums import ColorInterp
        from rasterio.vrt import WarpedVRT
        from rasterio.warp import calculate_default_transform, transform as warp_transform

        self.uri = str(path)  # GDAL's /vsis3/, /vsicurl/ ... addresses pass through unchanged
        self.path = Path(path)
        self.remote = self.uri.startswith("/vsi")
        if not self.remote and not self.path.is_file():
            raise SkylocError(f"map not found: {self.path}")
        try:
            self._src = rasterio.open(self.uri)
        except Exception as exc:
            raise SkylocError(f"cannot open map {self.uri}: {str(exc).splitlines()[0]}") from None
        src = self._src
        missing = [f for f in src.files[1:] if not f.startswith("/vsi") and not Path(f).exists()]
        if missing:  # a VRT whose member files moved: GDAL would fail on the first read there
            raise SkylocError(f"{self.path} refers to {len(missing)} missing file(s), first {missing[0]}: restore "
                              "them, or map the folder of GeoTIFFs as a mosaic (--on-bad skip maps around gaps)")
        if src.crs is None or src.transform.is_identity:
            raise SkylocError(f"{self.path} has no georeference (CRS/geotransform): use a GeoTIFF, or add one "
                              "with gdal_translate -a_srs/-a_ullr")
        interp = list(src.colorinterp)
        data_bands = [i + 1 for i, c in enumerate(interp) if c != ColorInterp.alpha]
        if bands is None:
            rgb = [interp.index(c) + 1 for c in (ColorInterp.red, ColorInterp.green, ColorInterp.blue) if c in interp]
            bands = tuple(rgb) if len(rgb) == 3 else tuple(data_bands[:3]) if len(data_bands) >= 3 else (data_bands[0],)
        bad = [b for b in bands if not 1 <= b <= src.count]
        if bad:
            raise SkylocError(f"{self.path} has {src.count} band(s): band {bad[0]} does not exist (--bands counts from 1)")
        self.bands = tuple(int(b) for b in bands)
        self.colour = "grey" if len(self.bands) == 1 else "rgb"
        self.nodata_override = nodata
        t = src.transform
        north_up = abs(t.b) < 1e-12 and abs(t.d) < 1e-12 and t.e < 0
        metric = src.crs.is_projected and abs(src.crs.linear_units_factor[1] - 1.0) < 1e-9
        same_crs = crs is None or src.crs == rasterio.crs.CRS.from_user_input(crs)
        if (north_up and metric and same_crs and (gsd is None or abs(gsd - t.a) < 1e-9)
                and abs(abs(t.e) - t.a) < 1e-6 * t.a):
            self.ds = src
        else:
            cx, cy = src.xy(src.height // 2, src.width // 2)
            lon, lat = warp_transform(src.crs, "EPSG:4326", [cx], [cy])
            dst_crs = crs if crs is not None else src.crs if metric else utm_crs_for(lat[0], lon[0])
            res = gsd or None
            transform, width, height = calculate_default_transform(
                src.crs, dst_crs, src.width, src.height, *src.bounds, resolution=res)
            if res is None:  # square pixels: the finer of the two
                r = min(abs(transform.a), abs(transform.e))
                transform, width, height = calculate_default_transform(
                    src.crs, dst_crs, src.width, src.height, *src.bounds, resolution=r)
            self.ds = WarpedVRT(src, crs=dst_crs, transform=transform, width=width, height=height,
                                resampling=rasterio.enums.Resampling.bilinear)
        self.crs = self.ds.crs
        self.transform = self.ds.transform
        self.gsd = float(self.transform.a)
        self.width, self.height = self.ds.width, self.ds.height
        self.geodesy = Geodesy(self.crs)
        self.dtype = src.dtypes[self.bands[0] - 1]
        self._levels = self._scaling() if self.dtype != "uint8" else None

    # -- pixel values ---------------------------------------------------------------------------
    def _scaling(self) -> np.ndarray:
        """Per-band (low, high) at the 0.5 / 99.5 percentiles of valid pixels, from a coarse read."""
        from rasterio.enums import Resampling

        f = max(1.0, max(self.width, self.height) / 1024)
        shape = (max(1, int(self.height / f)), max(1, int(self.width / f)))
        data = self.ds.read(list(self.bands), out_shape=(len(self.bands), *shape), resampling=Resampling.nearest)
        valid = self._valid(data, None, shape, Resampling.nearest)
        levels = []
        for band in data.astype(np.float64):
            v = band[valid & np.isfinite(band)]
            if v.size == 0:
                raise SkylocError(f"{self.path} has no valid pixels (all nodata)")
            lo, hi = np.percentile(v, [0.5, 99.5])
            levels.append((lo, hi if hi > lo else lo + 1.0))
        return np.asarray(levels)

    def _to8(self, data: np.ndarray) -> np.ndarray:
        if self._levels is None:
            return data.astype(np.uint8, copy=False)
        lo, hi = self._levels[:, 0, None, None], self._levels[:, 1, None, None]
        out = (np.nan_to_num(data.astype(np.float32)) - lo) * (255.0 / (hi - lo))
        return np.clip(out, 0, 255).astype(np.uint8)

    def _valid(self, data: np.ndarray, window, shape, resampling) -> np.ndarray:
        """Valid pixels of a read: the override value, or the file's own masks (nodata/alpha/mask)."""
        if self.nodata_override is not None:
            return ~np.all(data == np.asarray(self.nodata_override, dtype=data.dtype), axis=0)
        from rasterio.enums import MaskFlags

        if all(MaskFlags.all_valid in flags for flags in self.ds.mask_flag_enums):
            return np.ones(shape, bool)
        m = self.ds.read_masks(self.bands[0], window=window, out_shape=shape, resampling=resampling)
        return m > 0

    # -- geometry -------------------------------------------------------------------------------
    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in metres."""
        b = self.ds.bounds
        return b.left, b.bottom, b.right, b.top

    @cached_property
    def sha256(self) -> str:
        """The file's content hash; a remote (/vsi...) map is named by its address and grid instead."""
        h = hashlib.sha256()
        if self.remote:
            h.update(f"{self.uri} {self._src.width}x{self._src.height} {tuple(self._src.transform)}".encode())
            return h.hexdigest()
        with open(self.path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        return h.hexdigest()

    def file_stamp(self) -> tuple[int, int]:
        """(bytes, mtime ns) of the file: a cheap "has it changed" check before hashing."""
        if self.remote:
            return 0, 0
        st = self.path.stat()
        return st.st_size, st.st_mtime_ns

    # -- reading --------------------------------------------------------------------------------
    def read_window_masked(self, x: float, y: float, size_m: float, out_px: int | None = None,
                           size_y_m: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(RGB uint8 [h,w,3], valid bool [h,w]) of a north-up window of size_m (x size_y_m) metres.

        The part inside the map is read (resampled to the output scale) and pasted into a black,
        invalid canvas, which also works for reprojected (WarpedVRT) maps that refuse boundless reads.
        """
        from rasterio.enums import Resampling
        from rasterio.windows import Window

        size_y_m = size_m if size_y_m is None else size_y_m
        side_x, side_y = size_m / self.gsd, size_y_m / self.gsd
        nx = int(round(side_x)) if out_px is None else int(out_px)
        scale = nx / side_x  # output pixels per map pixel
        ny = max(1, int(round(side_y * scale)))
        col, row = self.xy_to_pixel(x, y)
        c0, r0 = col - side_x / 2, row - side_y / 2
        cc0, rr0 = max(0.0, c0), max(0.0, r0)
        cc1, rr1 = min(float(self.width), c0 + side_x), min(float(self.height), r0 + side_y)
        out = np.zeros((ny, nx, 3), np.uint8)
        valid = np.zeros((ny, nx), bool)
        if cc1 <= cc0 or rr1 <= rr0:
            return out, valid
        ox0, oy0 = int(round((cc0 - c0) * scale)), int(round((rr0 - r0) * scale))
        ox1, oy1 = min(nx, int(round((cc1 - c0) * scale))), min(ny, int(round((rr1 - r0) * scale)))
        if ox1 <= ox0 or oy1 <= oy0:
            return out, valid
        win = Window(cc0, rr0, cc1 - cc0, rr1 - rr0)
        shape = (oy1 - oy0, ox1 - ox0)
        try:
            data = self.ds.read(list(self.bands), window=win, out_shape=(len(self.bands), *shape),
                                resampling=Resampling.bilinear)
            if self.nodata_override is not None:
                near = self.ds.read(list(self.bands), window=win, out_shape=(len(self.bands), *shape),
                                    resampling=Resampling.nearest)
                ok = self._valid(near, win, shape, Resampling.nearest)
            else:
                ok = self._valid(data, win, shape, Resampling.nearest)
        except Exception as exc:  # rasterio's IO errors: a truncated or corrupt file
            raise SkylocError(f"cannot read {self.uri} near x={x:.0f} y={y:.0f}: {str(exc).splitlines()[0]} "
                              "(the file is damaged: fetch it again)") from None
        img = np.transpose(self._to8(data), (1, 2, 0))
        out[oy0:oy1, ox0:ox1] = img if img.shape[2] == 3 else np.repeat(img, 3, axis=2)
        valid[oy0:oy1, ox0:ox1] = ok
        out[~valid] = 0
        return out, valid

    def describe(self) -> str:
        from rasterio.enums import MaskFlags

        src = self._src
        flags = src.mask_flag_enums[self.bands[0] - 1]
        nod = (f"nodata {self.nodata_override:g} (override)" if self.nodata_override is not None
               else f"nodata {src.nodata:g}" if src.nodata is not None
               else "alpha band" if MaskFlags.alpha in flags
               else "mask band" if MaskFlags.per_dataset in flags else "no nodata")
        return (f"{self.path.name}: {src.count} band(s) {self.dtype}, using {','.join(map(str, self.bands))} "
                f"({self.colour}), {self.gsd:.2f} m/px, {self.crs.to_string()}, {nod}")

    def close(self) -> None:
        if self.ds is not self._src:
            self.ds.close()
        self._src.close()


def map_exists(path: str | Path) -> bool:
    """A map file, a mosaic's folder or list, or a GDAL /vsi... address (checked when opened)."""
    return str(path).startswith("/vsi") or Path(path).exists()


def open_map(path: str | Path, gsd: float | None = None, bands: tuple[int, ...] | None = None,
             nodata: float | None = None, on_bad: str = "refuse"):
    """A map as users have it: one raster (GeoTIFF, COG, GDAL VRT, /vsis3/... address), or a
    mosaic (a folder of GeoTIFFs, or a .txt listing one raster per line), read the same way.
    on_bad ("refuse" or "skip") says what a mosaic does with a member it cannot read."""
    p = str(path)
    if Path(p).is_dir() or p.lower().endswith(".txt"):
        from skyloc.runtime.mosaic import MosaicMap

        return MosaicMap(path, gsd=gsd, bands=bands, nodata=nodata, on_bad=on_bad)
    return GeoMap(path, gsd=gsd, bands=bands, nodata=nodata)


def crop_geotiff(src: str | Path, dst: str | Path, x0: float, x1: float, y0: float = 0.0, y1: float = 1.0) -> Path:
    """Write a sub-rectangle (fractions of width/height) of a GeoTIFF, every band kept.

    Used to split one image into training and evaluation regions.
    """
    import rasterio
    from rasterio.windows import Window

    dst = Path(dst)
    with rasterio.open(src) as s:
        c0, c1, r0, r1 = int(s.width * x0), int(s.width * x1), int(s.height * y0), int(s.height * y1)
        win = Window(c0, r0, c1 - c0, r1 - r0)
        prof = s.profile.copy()
        prof.update(width=c1 - c0, height=r1 - r0, transform=s.window_transform(win))
        with rasterio.open(dst, "w", **prof) as d:
            d.write(s.read(window=win))
            d.colorinterp = s.colorinterp
    return dst
