"""Cut one GeoTIFF into a mosaic of GeoTIFFs, some in another CRS, as regional maps come."""
from __future__ import annotations

from pathlib import Path

from skyloc.errors import SkylocError


def write_mosaic(src: str | Path, out_dir: str | Path, rows: int, cols: int, other_crs: str | None = None,
                 margin_px: int = 8) -> list[Path]:
    """Cut `src` into rows x cols GeoTIFFs (overlapping by margin_px); with other_crs, every second
    column is reprojected into it (e.g. the neighbouring UTM zone), as a map straddling a zone
    boundary is delivered. Returns the members in row-major order."""
    import rasterio
    from rasterio.warp import Resampling, calculate_default_transform, reproject
    from rasterio.windows import Window

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    with rasterio.open(src) as s:
        if s.width // cols <= 2 * margin_px or s.height // rows <= 2 * margin_px:
            raise SkylocError(f"{src} ({s.width}x{s.height} px) is too small for a {rows}x{cols} mosaic")
        for r in range(rows):
            for c in range(cols):
                c0, c1 = max(0, s.width * c // cols - margin_px), min(s.width, s.width * (c + 1) // cols + margin_px)
                r0, r1 = max(0, s.height * r // rows - margin_px), min(s.height, s.height * (r + 1) // rows + margin_px)
                win = Window(c0, r0, c1 - c0, r1 - r0)
                data = s.read(window=win)
                prof = s.profile.copy()
                prof.update(width=c1 - c0, height=r1 - r0, transform=s.window_transform(win), tiled=False)
                prof.pop("blockxsize", None), prof.pop("blockysize", None)
                path = out / f"tile_r{r:02d}_c{c:02d}.tif"
                if other_crs and c % 2 == 1:
                    bounds = rasterio.windows.bounds(win, s.transform)
                    tr, w, h = calculate_default_transform(s.crs, other_crs, c1 - c0, r1 - r0, *bounds)
                    prof.update(crs=other_crs, transform=tr, width=w, height=h,
                                nodata=prof.get("nodata") if prof.get("nodata") is not None else 0)
                    with rasterio.open(path, "w", **prof) as d:
                        for b in range(s.count):
                            reproject(data[b], rasterio.band(d, b + 1), src_transform=s.window_transform(win),
                                      src_crs=s.crs, dst_transform=tr, dst_crs=other_crs,
                                      resampling=Resampling.bilinear, src_nodata=s.nodata,
                                      dst_nodata=prof["nodata"])
                        d.colorinterp = s.colorinterp
                else:
                    with rasterio.open(path, "w", **prof) as d:
                        d.write(data)
                        d.colorinterp = s.colorinterp
                paths.append(path)
    return paths
