"""Real frames with their own pose (../shared/data/real): DJI photos with EXIF/XMP and an orthophoto,
ArduPilot frames with their telemetry log. Skipped where that folder is absent (users don't have it)."""
import math
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import SHARED_DATA

REAL = SHARED_DATA / "real"
pytestmark = pytest.mark.skipif(not (REAL / "cmac" / "flight.tlog").is_file(),
                                reason="real frames ../shared/data/real are absent (only the project's CI has them)")

CMAC_HFOV = 62.2  # Raspberry Pi camera v2 in its 1640x1232 full-field mode
CMAC_CLOCK = -0.3  # s: the frames' file-name times run late of the autopilot's clock (bench/bench_tracking.py)


def _gpi(tlog):
    """Raw GLOBAL_POSITION_INT samples: receive time, boot time, lat, lon."""
    from pymavlink import mavutil

    conn = mavutil.mavlink_connection(str(tlog))
    out = []
    while (m := conn.recv_match(type="GLOBAL_POSITION_INT")) is not None:
        out.append((m._timestamp, m.time_boot_ms / 1e3, m.lat / 1e7, m.lon / 1e7))
    return np.array(out)


def test_tlog_gives_each_cmac_frame_its_pose():
    from skyloc.onboard.replay import open_flight
    from skyloc.onboard.telemetry import load_telemetry

    tel = load_telemetry(REAL / "cmac" / "flight.tlog")
    assert tel.absolute and tel.describe_span().startswith("2018-08-05 00:59:5")
    flight = open_flight(str(REAL / "cmac" / "images"), tel)
    frames = list(flight.source)
    assert len(frames) == 18 and not flight.photos  # poses come from the log, times from the file names
    raw = _gpi(REAL / "cmac" / "flight.tlog")
    offset = np.percentile(raw[:, 0] - raw[:, 1], 1)
    for f in frames:
        t = flight.to_telemetry_time(f.timestamp)
        s = tel.at(t)
        # the pose lies between the two GLOBAL_POSITION_INT samples around the frame time
        i = np.searchsorted(raw[:, 1] + offset, t)
        lo, hi = raw[i - 1], raw[i]
        assert min(lo[2], hi[2]) - 1e-7 <= s.lat <= max(lo[2], hi[2]) + 1e-7
        assert min(lo[3], hi[3]) - 1e-7 <= s.lon <= max(lo[3], hi[3]) + 1e-7
        assert 75 < s.alt < 90 and 300 < s.yaw < 360 and abs(s.roll) < 20
    assert frames[0].timestamp == pytest.approx(1533430844.80) and frames[-1].timestamp == pytest.approx(1533430859.58)


def test_cmac_odometry_against_the_log_never_reports_a_wrong_motion():
    from skyloc.onboard.replay import open_flight
    from skyloc.onboard.telemetry import load_telemetry
    from skyloc.runtime.camera import Intrinsics, Pose
    from skyloc.runtime.geo import Geodesy, utm_crs_for
    from skyloc.runtime.odometry import VisualOdometry

    tel = load_telemetry(REAL / "cmac" / "flight.tlog")
    flight = open_flight(str(REAL / "cmac" / "images"), tel, time_offset=CMAC_CLOCK)
    vo = VisualOdometry()
    geo = Geodesy(utm_crs_for(-35.36, 149.16))
    errors, refused, prev = [], 0, None
    for f in flight.source:
        s = tel.at(flight.to_telemetry_time(f.timestamp))
        xy = np.array(geo.from_latlon(s.lat, s.lon))
        step = vo.step(f.image, f.timestamp, Pose(altitude=s.alt, yaw=s.yaw, pitch=s.pitch, roll=s.roll),
                       Intrinsics(f.image.shape[1], f.image.shape[0], CMAC_HFOV))
        if step is not None:
            truth = xy - prev
            if step.ok:
                errors.append(math.hypot(step.dx - truth[0], step.dy - truth[1]))
                assert errors[-1] < 0.45 * np.linalg.norm(truth), (f.index, step, truth)  # never a made-up motion
            else:
                refused += 1
        prev = xy
    print(f"cmac odometry: {len(errors)} of 17 pairs measured, median error {np.median(errors):.2f} m, "
          f"max {max(errors):.2f} m; {refused} said 'no odometry'")
    assert len(errors) >= 10 and np.median(errors) < 1.5


def test_brighton_photo_poses_from_exif_and_xmp():
    from skyloc.onboard.photos import read_photo_pose
    from skyloc.runtime.preprocess import image_files

    poses = [read_photo_pose(p) for p in image_files(REAL / "brighton" / "images")]
    assert len(poses) == 18
    for p in poses:
        assert 38 < p.alt < 42 and abs(p.lat - 46.843) < 0.002 and abs(p.lon + 91.995) < 0.003
        assert 0 <= p.yaw < 360 and p.tilt < 1.0 and p.yaw_ambiguous  # gimbal straight down
        assert 75 < p.hfov < 90 and math.isfinite(p.time)
    assert {round(p.yaw) for p in poses} >= {45, 228}  # flown out and back


def test_replay_of_the_brighton_photos_never_calls_a_wrong_one_ok(tmp_path, onnx_model):
    """`skyloc replay brighton/images -m ... -c ...` registers each photo on the orthophoto using the
    altitude and yaw in its own metadata; ok fixes land within 5 m of the photo's GPS."""
    import json

    cache = tmp_path / "brighton.cache"
    cmd = [sys.executable, "-m", "skyloc.cli"]
    r = subprocess.run(cmd + ["build-cache", str(REAL / "brighton" / "ortho.tif"), "-m", str(onnx_model), "-o",
                              str(cache), "--footprint", "60", "--overlap", "0.75", "--nodata", "255"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run(cmd + ["replay", str(REAL / "brighton" / "images"), "-m", str(onnx_model), "-c", str(cache),
                              "-o", str(tmp_path / "out")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    print(f"brighton: {rep['ok']} of 18 photos ok, max error {rep['error_ok']['max_m']:.1f} m")
    assert rep["frames"] == 18 and rep["ok"] >= 8
    assert rep["error_ok"]["max_m"] <= 5.0 and rep["ok_within_3x_accuracy"] == 1.0
    # the same photos as if the drone had no compass, or one 20 deg off: the heading comes from
    # the map (the search turns the frame), never a wrong fix called ok
    for name, extra in (("noyaw", ["--drop-yaw"]), ("yaw20", ["--yaw-offset", "20"])):
        r = subprocess.run(cmd + ["replay", str(REAL / "brighton" / "images"), "-m", str(onnx_model), "-c", str(cache),
                                  "-o", str(tmp_path / name)] + extra, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
        rep = json.loads((tmp_path / name / "report.json").read_text())
        print(f"brighton {name}: {rep['ok']} of 18 photos ok, compass error {rep.get('compass_error_deg')}")
        assert rep["ok"] >= 3 and rep["error_ok"]["max_m"] <= 5.0 and rep["ok_within_3x_accuracy"] == 1.0
        if name == "yaw20":
            assert rep["compass_error_deg"] == pytest.approx(20.0, abs=5.0)
