"""A map made of many rasters (a folder of GeoTIFFs, or a list of paths/URIs) read as one.

Regions come as tens of thousands of GeoTIFF tiles, sometimes in several CRSs (UTM zones).
MosaicMap opens every member as a GeoMap reprojected on the fly (WarpedVRT) into one metric CRS
and one GSD, and answers the same calls as a GeoMap: a window read asks only the members whose
bounds it overlaps and pastes their valid pixels, first member first. A member that is missing,
does not open, or fails to read is named; `on_bad="skip"` leaves its area as nodata instead.
"""
from __future__ import annotations

import hashlib
import logging
from collections import Counter
from functools import cached_property
from pathlib import Path

import numpy as np

from skyloc.errors import SkylocError
from skyloc.runtime.geo import Geodesy, GeoMap, WholeMapReads

log = logging.getLogger("skyloc.mosaic")

RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2", ".img")


def mosaic_members(path: Path) -> list[str]:
    """Members of a mosaic: a folder's rasters (sorted by name), or a .txt list, one per line."""
    if path.is_dir():
        names = sorted(str(p) for p in path.iterdir() if p.suffix.lower() in RASTER_SUFFIXES)
    elif path.is_file():
        lines = [ln.strip() for ln in path.read_text().splitlines()]
        names = [ln if ln.startswith("/vsi") or Path(ln).is_absolute() else str(path.parent / ln)
                 for ln in lines if ln and not ln.startswith("#")]
    else:
        raise SkylocError(f"map not found: {path}")
    if not names:
        raise SkylocError(f"{path} holds no rasters ({', '.join(RASTER_SUFFIXES)}): nothing to map")
    return names


class MosaicMap(WholeMapReads):
    """Many rasters seen as one north-up metric map (the GeoMap interface)."""

    def __init__(self, path: str | Path, gsd: float | None = None, bands: tuple[int, ...] | None = None,
                 nodata: float | None = None, on_bad: str = "refuse", crs: str | None = None):
        from pyproj import CRS
        from rasterio.transform import from_origin

        if on_bad not in ("refuse", "skip"):
            raise SkylocError(f"on_bad {on_bad!r}: use refuse or skip")
        self.path, self.uri, self.on_bad, self.nodata_override = Path(path), str(path), on_bad, nodata
        self.remote = False
        names = mosaic_members(self.path)
        self.skipped: list[str] = []
        self._failed: set[str] = set()  # members that failed a read (skipped from then on)
        # The CRS most members are in (metric), else the first member's own choice.
        if crs is None:
            crs = self._common_crs(names)
        self.members: list[GeoMap] = []
        for name in names:
            try:
                self.members.append(GeoMap(name, gsd=gsd, bands=bands, nodata=nodata, crs=crs))
            except SkylocError as exc:
                self._bad(name, str(exc))
            if gsd is None and self.members:
                gsd = self.members[0].gsd  # every member at the first one's resolution
        if not self.members:
            raise SkylocError(f"{self.path}: no member of the mosaic could be opened")
        first = self.members[0]
        if any(m.bands != first.bands for m in self.members):
            raise SkylocError(f"{self.path}: members differ in bands (e.g. {first.path.name} "
                              f"{first.bands}); give --bands to choose the same ones in all")
        self.bands, self.colour, self.dtype = first.bands, first.colour, first.dtype
        self.crs = CRS.from_user_input(first.crs)
        self.gsd = float(gsd)
        self._bounds = np.array([m.bounds for m in self.members])  # left, bottom, right, top
        left, bottom = self._bounds[:, 0].min(), self._bounds[:, 1].min()
        right, top = self._bounds[:, 2].max(), self._bounds[:, 3].max()
        self.transform = from_origin(left, top, self.gsd, self.gsd)
        self.width = int(np.ceil((right - left) / self.gsd))
        self.height = int(np.ceil((top - bottom) / self.gsd))
        self.geodesy = Geodesy(self.crs)
        if self.dtype != "uint8":  # one brightness scaling for all, so seams do not show
            lv = np.stack([m._levels for m in self.members if m._levels is not None])
            shared = np.stack([lv[:, :, 0].min(axis=0), lv[:, :, 1].max(axis=0)], axis=1)
            for m in self.members:
                m._levels = shared
        crss = Counter(m._src.crs.to_string() for m in self.members)
        log.info("%s: %d rasters (%s) as %s at %.2f m/px%s", self.path, len(self.members),
                 ", ".join(f"{n} in {c}" for c, n in crss.items()), self.crs.to_string(), self.gsd,
                 f"; skipped {len(self.skipped)}" if self.skipped else "")

    @staticmethod
    def _common_crs(names: list[str]) -> str | None:
        import rasterio

        seen: Counter = Counter()
        for name in names[:64]:  # a sample decides; members are reprojected into it
            try:
                with rasterio.open(name) as src:
                    if src.crs is not None and src.crs.is_projected:
                        seen[src.crs.to_string()] += 1
            except Exception:  # reported properly when the member is opened
                continue
        return seen.most_common(1)[0][0] if seen else None

    def _bad(self, name: str, why: str) -> None:
        if self.on_bad == "refuse":
            raise SkylocError(f"mosaic {self.path}: {why} (fix or remove it, or pass --on-bad skip "
                              "to map around it)")
        log.warning("mosaic %s: skipping %s: %s", self.path, name, why)
        self.skipped.append(name)

    # -- geometry -------------------------------------------------------------------------------
    @property
    def bounds(self) -> tuple[float, float, float, float]:
        t = self.transform
        return t.c, t.f - self.height * self.gsd, t.c + self.width * self.gsd, t.f

    @cached_property
    def sha256(self) -> str:
        """Hash of the members' names and hashes (order matters: the first member wins overlaps)."""
        h = hashlib.sha256()
        for m in self.members:
            h.update(f"{m.path.name} {m.sha256}\n".encode())
        return h.hexdigest()

    def file_stamp(self) -> tuple[int, int]:
        stamps = [m.file_stamp() for m in self.members]
        return sum(s for s, _ in stamps), max(t for _, t in stamps)

    # -- reading --------------------------------------------------------------------------------
    def read_window_masked(self, x: float, y: float, size_m: float, out_px: int | None = None,
                           size_y_m: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(RGB uint8, valid bool) of a north-up window, pasted from the members it overlaps."""
        size_y_m = size_m if size_y_m is None else size_y_m
        nx = int(round(size_m / self.gsd)) if out_px is None else int(out_px)
        ny = max(1, int(round(size_y_m / self.gsd * nx / (size_m / self.gsd))))
        out = np.zeros((ny, nx, 3), np.uint8)
        valid = np.zeros((ny, nx), bool)
        b = self._bounds
        hit = np.flatnonzero((b[:, 0] < x + size_m / 2) & (b[:, 2] > x - size_m / 2)
                             & (b[:, 1] < y + size_y_m / 2) & (b[:, 3] > y - size_y_m / 2))
        for i in hit:
            m = self.members[i]
            if m.uri in self._failed:
                continue
            try:
                img, ok = m.read_window_masked(x, y, size_m, nx, size_y_m)
            except Exception as exc:  # a corrupt member: a truncated strip, a bad block
                self._failed.add(m.uri)
                self._bad(m.uri, f"cannot read {m.uri}: {str(exc).splitlines()[0]}")
                continue
            new = ok & ~valid
            out[new], valid[new] = img[new], True
            if valid.all():
                break
        return out, valid

    def describe(self) -> str:
        crss = Counter(m._src.crs.to_string() for m in self.members)
        return (f"{self.path.name}: mosaic of {len(self.members)} rasters ({', '.join(f'{n} in {c}' for c, n in crss.items())}), "
                f"using {','.join(map(str, self.bands))} ({self.colour}), {self.gsd:.2f} m/px, "
                f"{self.crs.to_string()}" + (f", {len(self.skipped)} skipped" if self.skipped else ""))

    def close(self) -> None:
        for m in self.members:
            m.close()
