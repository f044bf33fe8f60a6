"""Inputs users already have: grey/multiband/16-bit orthophotos with nodata, autopilot logs, photo folders."""
import math

import numpy as np
import pytest
import rasterio
from affine import Affine

from skyloc.errors import SkylocError
from skyloc.runtime.geo import GeoMap, parse_bands
from tests.logfiles import write_dataflash, write_tlog, write_ulog

T0 = 1714558530.0  # 2024-05-01 10:15:30 UTC


@pytest.fixture(scope="module")
def scene():
    from skyloc.synth.world import generate

    return generate(640, 1.0, seed=5, lat=47.0, lon=8.0)


def _write(path, bands, crs, transform, dtype="uint8", nodata=None, **creation):
    prof = dict(driver="GTiff", width=bands.shape[2], height=bands.shape[1], count=bands.shape[0], dtype=dtype,
                crs=crs, transform=transform, nodata=nodata, **creation)
    with rasterio.open(path, "w", **prof) as d:
        d.write(bands.astype(dtype))
    return path


def _variants(tmp_path, world):
    """The same world as the files users have. Returns {name: (path, GeoMap kwargs, expected valid share)}."""
    rgb = np.transpose(world.image, (2, 0, 1)).astype(np.uint16)
    grey = (0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2])[None]
    tr = Affine(*world.transform)
    h, w = world.image.shape[:2]
    border = np.zeros((h, w), bool)
    border[:, : w // 5] = True  # the left 20 % is border
    out = {}
    out["grey"] = (_write(tmp_path / "grey.tif", grey, world.crs, tr), {}, 1.0)
    nir = np.concatenate([rgb, grey])
    out["rgbn"] = (_write(tmp_path / "rgbn.tif", nir, world.crs, tr), {}, 1.0)
    out["16bit"] = (_write(tmp_path / "u16.tif", rgb * 40 + 1000, world.crs, tr, "uint16"), {}, 1.0)
    nodata = rgb.copy()
    nodata[:, border] = 0
    out["declared_nodata"] = (_write(tmp_path / "nodata.tif", nodata, world.crs, tr, nodata=0), {}, 0.8)
    alpha = np.concatenate([rgb, np.where(border, 0, 255)[None]])
    out["alpha"] = (_write(tmp_path / "alpha.tif", alpha, world.crs, tr, photometric="RGB", alpha="YES"), {}, 0.8)
    white = grey.copy()
    white[:, border] = 255
    out["white_border"] = (_write(tmp_path / "white.tif", white, world.crs, tr), {"nodata": 255}, 0.8)
    # another CRS: the map in WGS84 degrees (reprojected on the fly)
    from rasterio.warp import calculate_default_transform, reproject

    dst_t, dw, dh = calculate_default_transform(world.crs, "EPSG:4326", w, h, *rasterio.transform.array_bounds(h, w, tr)[::-1][::-1])
    ll = np.zeros((3, dh, dw), np.uint8)
    for b in range(3):
        reproject(rgb[b].astype(np.uint8), ll[b], src_transform=tr, src_crs=world.crs, dst_transform=dst_t,
                  dst_crs="EPSG:4326")
    out["wgs84"] = (_write(tmp_path / "ll.tif", ll, "EPSG:4326", dst_t), {}, None)
    return out


def test_maps_as_they_come_read_as_8bit_with_the_right_mask(tmp_path, scene):
    for name, (path, kw, valid) in _variants(tmp_path, scene).items():
        gm = GeoMap(path, **kw)
        img, ok = gm.read_all_masked()
        assert img.dtype == np.uint8 and img.shape[2] == 3, name
        assert gm.colour == ("grey" if name in ("grey", "white_border") else "rgb"), name
        if valid is not None:
            assert ok.mean() == pytest.approx(valid, abs=0.01), name
        assert img[ok].std() > 10, name  # real content, not a flat or clipped image
        if name == "16bit":
            assert 0 <= img.min() and img.max() == 255 and np.percentile(img, 50) > 40  # percentile stretch
    rgbn = GeoMap(tmp_path / "rgbn.tif", bands=parse_bands("4"))
    assert rgbn.colour == "grey" and rgbn.bands == (4,)
    with pytest.raises(SkylocError, match="band 5 does not exist"):
        GeoMap(tmp_path / "rgbn.tif", bands=(5,))
    with pytest.raises(SkylocError, match="one band .* or three"):
        parse_bands("1,2")


def test_pairs_cache_and_registration_on_every_kind_of_map(tmp_path, scene, embedder):
    """make-pairs, build-cache and registration work on each map, and skipped tiles are counted right."""
    from skyloc.runtime.cache import build_cache, valid_share
    from skyloc.runtime.camera import Intrinsics, Pose
    from skyloc.runtime.registration import MapRegistration
    from skyloc.synth.pairs import PairsConfig, make_pairs
    from skyloc.synth.render import Camera, render_view

    x0, y0 = scene.transform[2], scene.transform[5]
    truth = (x0 + 400.0, y0 - 320.0)  # inside every map's valid part
    frame = render_view(scene.image, scene.transform, Camera(*truth, 110.0, 30.0, 0.0, 60.0, 320, 240))
    for name, (path, kw, valid) in _variants(tmp_path, scene).items():
        if name == "wgs84":
            continue  # covered by the reading test; tile counts differ after reprojection
        s = make_pairs(path, tmp_path / f"pairs_{name}", PairsConfig(classes=9, views=2, test_fraction=0.0,
                                                                      altitude=(60.0, 70.0), **kw))
        assert s["classes"] + s["skipped_places"] == 9, name
        cache = build_cache(path, embedder, tmp_path / f"{name}.cache", [80.0], overlap=0.5, **kw)
        import json

        m = json.loads((cache / "manifest.json").read_text())
        gm = GeoMap(path, **kw)
        from skyloc.runtime.cache import TilingPlan

        all_tiles = TilingPlan([80.0], 0.5).tiles(gm)
        expected_skips = int((valid_share(gm, all_tiles) < 0.5).sum())
        assert m["skipped_tiles"] == expected_skips and m["tiles"] == len(all_tiles) - expected_skips, name
        if valid == 1.0:
            assert m["skipped_tiles"] == 0, name
        else:
            assert m["skipped_tiles"] >= 4, name  # the left fifth of the map
        reg = MapRegistration(gm).register(frame, Intrinsics(320, 240, 60.0), Pose(truth[0] + 8, truth[1] - 6, 110.0, 30.0),
                                           search_radius_m=25.0)
        assert reg.ok and math.hypot(reg.x - truth[0], reg.y - truth[1]) < 1.5, (name, reg.reason)


def test_telemetry_logs_tlog_and_dataflash(tmp_path):
    from skyloc.onboard.telemetry import load_telemetry

    tl = load_telemetry(write_tlog(tmp_path / "f.tlog", T0, 20, 47.0, 8.0))
    assert tl.absolute
    s = tl.at(T0 + 10.0)
    assert s.alt == pytest.approx(80.0) and s.lat == pytest.approx(47.0 + 99.5 / 111_320, abs=2e-6)
    assert s.roll == pytest.approx(math.degrees(0.02), abs=1e-3) and s.yaw == pytest.approx(0.0, abs=1e-6)
    bl = load_telemetry(write_dataflash(tmp_path / "f.bin", T0, 20, 47.0, 8.0, triggers=5))
    s = bl.at(T0 + 10.0)
    assert bl.absolute and s.alt == pytest.approx(80.0) and s.yaw == pytest.approx(90.0) and s.roll == pytest.approx(1.5)
    assert s.lat == pytest.approx(47.0 + 100.0 / 111_320, abs=2e-6)  # UTC from the GPS week and time of week
    assert len(bl.triggers) == 5 and bl.triggers[0] == pytest.approx(T0, abs=0.01)
    ul = load_telemetry(write_ulog(tmp_path / "f.ulg", T0, 20, 47.0, 8.0))
    s = ul.at(T0 + 10.0)
    assert ul.absolute and s.alt == pytest.approx(80.0) and s.yaw == pytest.approx(90.0, abs=1e-3)
    assert s.lat == pytest.approx(47.0 + 100.0 / 111_320, abs=2e-6)  # UTC from vehicle_gps_position


def test_bad_logs_and_photos_get_one_line_errors(tmp_path, scene):
    import subprocess
    import sys

    import cv2

    from skyloc.onboard.replay import open_flight
    from skyloc.onboard.telemetry import load_telemetry

    with pytest.raises(SkylocError, match="no position messages"):
        load_telemetry(write_tlog(tmp_path / "att.tlog", T0, 5, 47.0, 8.0, positions=False))
    (tmp_path / "junk.tlog").write_bytes(b"\x00" * 64)
    with pytest.raises(SkylocError, match="no GLOBAL_POSITION_INT"):
        load_telemetry(tmp_path / "junk.tlog")
    # a log that does not cover the frames' time (photos named by their UTC time, a day later)
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        cv2.imwrite(str(photos / f"2024050210153{i}00Z.jpg"), scene.image[:200, :200])
    tel = load_telemetry(write_tlog(tmp_path / "f.tlog", T0, 20, 47.0, 8.0))
    flight = open_flight(str(photos), tel)
    from skyloc.onboard.replay import check_coverage

    with pytest.raises(SkylocError, match="covers 2024-05-01 10:15:30.*frames fall at 2024-05-02.*--time-offset"):
        check_coverage(flight, flight.source.times[0], flight.source.times[-1])
    # photos without a pose in their metadata and no log
    with pytest.raises(SkylocError, match="no altitude above ground.*--telemetry"):
        open_flight(str(photos))
    # a video with no creation time and a UTC log
    from skyloc.synth.flight import FlightConfig, render_flight
    from skyloc.synth.world import write_geotiff

    area = write_geotiff(scene, tmp_path / "area.tif")
    render_flight(area, tmp_path / "v.mp4", tmp_path / "v.csv", FlightConfig(duration_s=1, fps=2, altitude=80))
    with pytest.raises(SkylocError, match="no creation time.*--video-start"):
        open_flight(str(tmp_path / "v.mp4"), tel)
    # through the command line: one line, exit 2, no traceback
    r = subprocess.run([sys.executable, "-m", "skyloc.cli", "make-pairs", str(area), str(tmp_path / "p"), "--bands", "7"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "band 7 does not exist" in r.stderr and "Traceback" not in r.stderr
