"""Maps as regions come: a folder of GeoTIFFs in two CRSs, a list of paths, a VRT; bad members named."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from skyloc.errors import SkylocError
from skyloc.runtime.cache import TileCache, build_cache
from skyloc.runtime.geo import GeoMap, open_map
from skyloc.synth.mosaic import write_mosaic


@pytest.fixture(scope="module")
def whole(tmp_path_factory) -> Path:
    from skyloc.synth.world import generate, write_geotiff

    return write_geotiff(generate(512, 1.0, seed=11), tmp_path_factory.mktemp("mosaic") / "whole.tif")


@pytest.fixture(scope="module")
def folder(whole) -> Path:
    """The same map as 16 GeoTIFFs, every second column in the next UTM zone (EPSG:32633)."""
    write_mosaic(whole, whole.parent / "tiles", 4, 4, other_crs="EPSG:32633")
    return whole.parent / "tiles"


def test_a_folder_in_two_crss_reads_as_the_whole_map(whole, folder):
    gm, mm = GeoMap(whole), open_map(folder)
    assert len(mm.members) == 16 and mm.crs == gm.crs and mm.gsd == pytest.approx(gm.gsd)
    assert "8 in EPSG:32632, 8 in EPSG:32633" in mm.describe()
    left, bottom, right, top = gm.bounds
    for fx, fy in [(0.3, 0.3), (0.5, 0.5), (0.62, 0.41), (0.8, 0.7)]:  # windows across member seams
        x, y = left + (right - left) * fx, bottom + (top - bottom) * fy
        a, va = gm.read_window_masked(x, y, 90, 96)
        b, vb = mm.read_window_masked(x, y, 90, 96)
        assert vb.all() and va.all()
        diff = np.abs(a.astype(int) - b.astype(int))
        assert diff.mean() < 4 and np.percentile(diff, 95) < 14  # bilinear resampling, twice for 32633
        (dx, dy), _ = cv2.phaseCorrelate(a[..., 0].astype(np.float32), b[..., 0].astype(np.float32))
        assert np.hypot(dx, dy) < 0.3  # in place: a fraction of a pixel


def test_build_cache_from_a_mosaic(tmp_path, whole, folder, embedder):
    cache = TileCache.load(build_cache(folder, embedder, tmp_path / "m.cache", [150], 0.5, map_features=False))
    m = cache.manifest
    assert m["mosaic_members"] == 16 and m["mosaic_skipped"] == [] and m["crs"] == "EPSG:32632"
    # a tile's stored embedding is the embedding of that window of the original single map
    from skyloc.runtime.embedder import embed_images

    gm = GeoMap(whole)
    inside = [i for i, t in enumerate(cache.tiles) if gm.read_window_masked(t["x"], t["y"], 150, 32)[1].all()]
    side = embedder.meta.data_config.height
    imgs = [gm.read_window(cache.tiles[i]["x"], cache.tiles[i]["y"], 150.0, side) for i in inside[:8]]
    cos = (embed_images(embedder, imgs) * np.asarray(cache.embeddings[inside[:8]], np.float32)).sum(axis=1)
    assert cos.min() > 0.98


def test_a_missing_or_damaged_member_is_named_or_skipped(tmp_path, folder):
    members = sorted(folder.glob("*.tif"))
    listing = tmp_path / "region.txt"
    listing.write_text("\n".join(str(p) for p in members[:4]) + f"\n{tmp_path / 'gone.tif'}\n")
    with pytest.raises(SkylocError, match=r"gone\.tif.*--on-bad skip"):
        open_map(listing)
    assert open_map(listing, on_bad="skip").skipped == [str(tmp_path / "gone.tif")]
    # a truncated member opens (its header is intact) and fails on the first read there
    bad = tmp_path / "bad"
    bad.mkdir()
    for p in members[:2]:
        (bad / p.name).write_bytes(p.read_bytes())
    damaged = bad / members[1].name
    data = damaged.read_bytes()
    damaged.write_bytes(data[: len(data) // 3])
    mm = open_map(bad)
    x, y = mm.members[1].pixel_to_xy(mm.members[1].width / 2, mm.members[1].height / 2)
    with pytest.raises(SkylocError, match=members[1].name):
        mm.read_window_masked(x, y, 40, 40)
    skip = open_map(bad, on_bad="skip")
    img, valid = skip.read_window_masked(x, y, 40, 40)
    assert not valid.all() and skip.skipped == [str(damaged)]


def test_a_vrt_with_a_missing_member_is_refused_by_name(tmp_path, folder):
    import rasterio

    members = sorted(folder.glob("*_c00.tif"))  # one column: one CRS, stacked top to bottom
    srcs = [rasterio.open(p) for p in members]
    left, top = srcs[0].bounds.left, srcs[0].bounds.top
    g = srcs[0].transform.a
    height = int(round((top - min(s.bounds.bottom for s in srcs)) / g))
    sources = "".join(
        f'<SimpleSource><SourceFilename relativeToVRT="0">{p}</SourceFilename><SourceBand>1</SourceBand>'
        f'<SrcRect xOff="0" yOff="0" xSize="{s.width}" ySize="{s.height}"/><DstRect xOff="0" '
        f'yOff="{int(round((top - s.bounds.top) / g))}" xSize="{s.width}" ySize="{s.height}"/></SimpleSource>'
        for p, s in zip(members, srcs))
    vrt = tmp_path / "column.vrt"
    vrt.write_text(f'<VRTDataset rasterXSize="{srcs[0].width}" rasterYSize="{height}"><SRS>{srcs[0].crs.to_wkt()}'
                   f'</SRS><GeoTransform>{left}, {g}, 0, {top}, 0, {-g}</GeoTransform><VRTRasterBand '
                   f'dataType="Byte" band="1">{sources}</VRTRasterBand></VRTDataset>')
    gm = open_map(vrt)
    assert gm.colour == "grey" and gm.read_window_masked(*gm.pixel_to_xy(50, height / 2), 40, 40)[1].all()
    gm.close()
    moved = tmp_path / "moved"
    moved.mkdir()
    vrt.write_text(vrt.read_text().replace(str(members[2]), str(moved / members[2].name)))
    with pytest.raises(SkylocError, match=members[2].name):
        open_map(vrt)


def test_the_manifest_remembers_a_skipping_build(tmp_path, folder, embedder):
    members = sorted(folder.glob("*.tif"))
    listing = tmp_path / "region.txt"
    listing.write_text("\n".join(p.name for p in members[:8]) + "\nmissing.tif\n")
    (tmp_path / "region.txt").rename(folder / "region.txt")  # names relative to the list's folder
    try:
        path = build_cache(folder / "region.txt", embedder, tmp_path / "s.cache", [150], 0.5, map_features=False,
                           on_bad="skip")
        m = json.loads((path / "manifest.json").read_text())
        assert m["mosaic_members"] == 8 and m["mosaic_skipped"] == ["missing.tif"] and m["on_bad"] == "skip"
    finally:
        (folder / "region.txt").unlink()
