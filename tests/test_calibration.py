"""Lens calibration: the file formats users have, the undistortion's geometry, a flight through a
wide-angle lens replayed with its calibration, and calibrations that do not fit the frames."""
import json
import math

import cv2
import numpy as np
import pytest

from skyloc.errors import SkylocError
from skyloc.runtime.cache import TileCache
from skyloc.runtime.calibration import Calibration, load_calibration, write_calibration
from skyloc.runtime.localizer import Localizer, LocalizerConfig

W, H = 480, 320
F = (W / 2) / math.tan(math.radians(45.0))  # a 90 deg pinhole's focal length
K = np.array([[F, 0, W / 2 - 0.5 + 3], [0, F * 1.001, H / 2 - 0.5 - 2], [0, 0, 1]])
WIDE = Calibration("pinhole", W, H, K, np.array([-0.3, 0.08, 0.0005, -0.0003, 0.0]), "wide")
FISHEYE = Calibration("fisheye", W, H, K, np.array([0.02, -0.01, 0.0, 0.0]), "fisheye")


def test_the_formats_users_have_read_to_the_same_lens(tmp_path):
    k, d = WIDE.K, WIDE.D
    files = {"opencv.yaml": None, "opencv.json": None}
    for name in files:  # as cv2's calibration samples write them
        fs = cv2.FileStorage(str(tmp_path / name), cv2.FILE_STORAGE_WRITE)
        fs.write("image_width", W), fs.write("image_height", H), fs.write("camera_matrix", k)
        fs.write("distortion_coefficients", d.reshape(1, -1))
        fs.release()
    (tmp_path / "camera_info.yaml").write_text(  # ROS camera_calibration's output
        f"image_width: {W}\nimage_height: {H}\ncamera_name: down\n"
        f"camera_matrix:\n  rows: 3\n  cols: 3\n  data: {json.dumps(k.ravel().tolist())}\n"
        f"distortion_model: plumb_bob\ndistortion_coefficients:\n  rows: 1\n  cols: 5\n"
        f"  data: {json.dumps(d.tolist())}\n")
    (tmp_path / "camchain.yaml").write_text(  # Kalibr's camchain
        f"cam0:\n  camera_model: pinhole\n  intrinsics: [{k[0, 0]}, {k[1, 1]}, {k[0, 2]}, {k[1, 2]}]\n"
        f"  distortion_model: radtan\n  distortion_coeffs: {json.dumps(d[:4].tolist())}\n"
        f"  resolution: [{W}, {H}]\n  rostopic: /cam0/image_raw\n")
    for name in ("opencv.yaml", "opencv.json", "camera_info.yaml", "camchain.yaml"):
        cal = load_calibration(tmp_path / name)
        assert (cal.model, cal.width, cal.height) == ("pinhole", W, H), name
        np.testing.assert_allclose(cal.K, k, rtol=1e-9, err_msg=name)
        np.testing.assert_allclose(cal.D[:4], d[:4], rtol=1e-9, err_msg=name)
    fish = load_calibration(write_calibration(FISHEYE, tmp_path / "fisheye.yaml"))
    assert fish.model == "fisheye" and np.allclose(fish.D, FISHEYE.D)


@pytest.mark.parametrize("lens", [WIDE, FISHEYE], ids=["wide", "fisheye"])
def test_undistorted_frames_are_a_centred_pinhole_with_every_pixel_seen(lens):
    und = lens.undistorter(W, H)
    assert und.hfov_deg > 90.0  # barrel distortion and the fisheye see more than the 90 deg pinhole
    f = und.K[0, 0]
    us, vs = np.meshgrid(np.arange(0, W, 7) + 0.5, np.arange(0, H, 7) + 0.5)
    src = cv2.convertMaps(und.map1, und.map2, cv2.CV_32FC1)
    sx, sy = src[0][vs.astype(int), us.astype(int)], src[1][vs.astype(int), us.astype(int)]
    assert sx.min() >= -0.5 and sx.max() <= W - 0.5 and sy.min() >= -0.5 and sy.max() <= H - 0.5  # no black corners
    rays = lens.undistort_points(np.stack([sx.ravel(), sy.ravel()], 1))  # where the lens saw each output pixel
    expected = np.stack([(us.ravel() - W / 2) / f, (vs.ravel() - H / 2) / f], 1)
    assert np.abs(rays - expected).max() * f < 0.05  # within 1/20 px (fixed-point remap tables)
    half = lens.scaled(W // 2, H // 2)  # a resized stream: the same lens, scaled
    assert half.K[0, 0] == pytest.approx(lens.K[0, 0] / 2)
    assert half.undistorter(W // 2, H // 2).hfov_deg == pytest.approx(und.hfov_deg, abs=0.2)


def test_a_flight_through_a_wide_lens_is_tracked_with_its_calibration(tmp_path, heldout_map, heldout_cache,
                                                                      embedder):
    from skyloc.onboard.replay import replay
    from skyloc.onboard.telemetry import load_telemetry
    from skyloc.synth.flight import FlightConfig, render_flight

    cal = write_calibration(WIDE, tmp_path / "wide.yaml")
    render_flight(heldout_map, tmp_path / "f.mp4", tmp_path / "f.csv", FlightConfig(
        duration_s=10, fps=10, speed=10, altitude=110, altitude_jitter=3, pitch=0, width=W, height=H,
        route="turns", turn_deg=90, turn_rate=20, exposure=0.8, exposure_time=0.02, seed=5, lens=str(cal)))
    import csv

    row = next(csv.DictReader(open(tmp_path / "f.csv")))
    start = (float(row["lat"]), float(row["lon"]), 40.0)
    runs = {}
    for name, cfg in (("calibrated", LocalizerConfig(calibration=str(cal))), ("pinhole", LocalizerConfig(hfov_deg=90))):
        loc = Localizer(embedder, TileCache.load(heldout_cache, embedder.meta), cfg, start=start)
        runs[name] = replay(str(tmp_path / "f.mp4"), loc, load_telemetry(tmp_path / "f.csv")).report
    rep = runs["calibrated"]
    assert rep["availability_ok"] >= 0.8, rep
    assert rep["error_ok"]["max_m"] < 5.0 and rep["ok_within_3x_accuracy"] == 1.0, rep
    # taken as a pinhole, the same lens tracks worse (the map's straight lines bend at the edges)
    other = runs["pinhole"]
    assert other["availability_ok"] < rep["availability_ok"] or \
        other["error_ok"].get("median_m", math.inf) > 2 * rep["error_ok"]["median_m"], (rep, other)


def test_calibrations_that_do_not_fit_get_one_line_errors(tmp_path):
    with pytest.raises(SkylocError, match=r"is for 480x320 images but the frames are 640x320"):
        WIDE.undistorter(640, 320)
    cases = {"missing.yaml": "calibration file not found"}
    (tmp_path / "bad.yaml").write_text("camera_matrix: [1, 2\n")
    cases["bad.yaml"] = "not valid YAML"
    (tmp_path / "other.yaml").write_text("image_width: 10\nimage_height: 10\ncamera_matrix: {data: [1,0,5,0,1,5,0,0,1]}\n"
                                         "distortion_model: kannala\ndistortion_coefficients: {data: [0,0,0,0]}\n")
    cases["other.yaml"] = "distortion_model 'kannala' is not supported"
    (tmp_path / "empty.yaml").write_text("foo: 1\n")
    cases["empty.yaml"] = "not an OpenCV, ROS camera_info or Kalibr file"
    for name, message in cases.items():
        with pytest.raises(SkylocError, match=message) as e:
            load_calibration(tmp_path / name)
        assert "\n" not in str(e.value)
