"""One path for a frame: the daemon and replay run the same loop and give the same estimates."""
import csv
import math
import time

import pytest
import yaml
from pymavlink.dialects.v20 import ardupilotmega as M

from skyloc.onboard.config import CameraConfig, DaemonConfig
from skyloc.onboard.daemon import Daemon
from skyloc.onboard.pipeline import RecordedFrames, camera_pose
from skyloc.onboard.replay import open_flight, replay
from skyloc.onboard.sources import Source, open_source
from skyloc.onboard.telemetry import TelemetrySample, load_telemetry

from tests.test_mavlink import _free_port

MOUNT_YAW = 30.0  # the camera looks 30 deg right of the nose


@pytest.fixture(scope="module")
def recording(tmp_path_factory, heldout_map):
    """A turning flight; its log holds the vehicle's yaw (the camera's minus the mount's)."""
    from skyloc.synth.flight import FlightConfig, render_flight

    d = tmp_path_factory.mktemp("recording")
    render_flight(heldout_map, d / "f.mp4", d / "camera.csv",
                  FlightConfig(duration_s=6, fps=4.0, altitude=125, pitch=0, route="turns", seed=5))
    rows = list(csv.DictReader(open(d / "camera.csv")))
    for r in rows:
        r["yaw"] = f"{(float(r['yaw']) - MOUNT_YAW) % 360:.2f}"
    with open(d / "vehicle.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return d


class _ShotAt(Source):
    """The recording as a camera that stamps each frame with its capture time on this clock."""

    def __init__(self, source: Source, epoch: float):
        self.source, self.epoch = source, epoch

    def read(self):
        f = self.source.read()
        if f is not None:
            f.capture = self.epoch + f.timestamp
        return f

    def close(self):
        self.source.close()


def _stream_log_into(link, track, epoch: float) -> None:
    """The log's samples as the autopilot sends them (GLOBAL_POSITION_INT, then ATTITUDE), received
    at `epoch` + their time: the link's own receive path fills its telemetry."""
    for t, lat, lon, alt, yaw in zip(track.t, track.lat, track.lon, track.alt, track.yaw):
        boot = int(round(t * 1000))
        link._handle(M.MAVLink_global_position_int_message(boot, int(lat * 1e7), int(lon * 1e7), 0,
                                                           int(round(alt * 1000)), 0, 0, 0, 65535), epoch + t)
        link._handle(M.MAVLink_attitude_message(boot, 0.0, 0.0, math.radians((yaw + 180) % 360 - 180), 0, 0, 0),
                     epoch + t)


def test_daemon_and_replay_give_the_same_estimate_for_every_frame(tmp_path, onnx_model, heldout_cache, recording):
    cfg_path = tmp_path / "skyloc.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "model": str(onnx_model), "cache": str(heldout_cache), "source": str(recording / "f.mp4"), "max_fps": 50,
        "camera": {"mount_yaw_deg": MOUNT_YAW}, "log": {"dir": str(tmp_path / "logs")},
        "status_file": str(tmp_path / "status.json"),
        "mavlink": {"url": f"udpout:127.0.0.1:{_free_port()}", "request_streams": False}}))
    cfg = DaemonConfig.load(cfg_path)
    track = load_telemetry(recording / "vehicle.csv")

    # flown: the camera and the autopilot's stream, on the wall clock (a minute ahead, so the
    # stream stays fresh for the whole run)
    epoch = time.time() + 60.0
    flown = []
    daemon = Daemon(cfg, frames=RecordedFrames(_ShotAt(open_source(str(recording / "f.mp4")), epoch)),
                    outputs=[flown.append])
    _stream_log_into(daemon.link, track, epoch)
    assert daemon.run() == 0

    # replayed: the same recording and its log, through `skyloc replay`'s path
    flight = open_flight(str(recording / "f.mp4"), track)
    loc = cfg.open_localizer(flight.localizer_config(cfg.localizer_config(), cfg.camera.hfov_deg))
    res = replay(flight, loc, camera=cfg.camera)

    assert len(flown) == len(res.rows) == 24
    assert sum(r.est.status == "ok" for r in res.rows) >= 12  # a flight that tracks, not 24 "no fix"
    for step, row in zip(flown, res.rows):
        a, b = step.estimate, row.est
        assert step.frame.index == row.frame
        assert a.time - epoch == pytest.approx(b.time, abs=1e-6)
        assert (a.status, a.source, a.registered, a.odometry) == (b.status, b.source, b.registered, b.odometry)
        assert step.pose.yaw_deg == pytest.approx(row.yaw, abs=1e-3)  # the camera's heading, mount included
        if b.has_position:
            assert (a.lat, a.lon) == pytest.approx((b.lat, b.lon), abs=1e-8)
            assert a.horizontal_accuracy == pytest.approx(b.horizontal_accuracy, rel=1e-5)


def test_the_pose_rules_mount_yaw_gimbal_and_a_reported_tilt():
    s = TelemetrySample(0.0, alt=120.0, yaw=350.0, roll=4.0, pitch=-3.0, tilt=math.nan, range=math.nan)
    fixed = camera_pose(s, CameraConfig(mount_yaw_deg=20.0))
    assert fixed.yaw_deg == pytest.approx(10.0) and (fixed.roll_deg, fixed.vehicle_pitch_deg) == (4.0, -3.0)
    assert fixed.pitch_deg is None and fixed.range_m is None and fixed.altitude_m == 120.0
    stabilised = camera_pose(s, CameraConfig(gimbal=True))
    assert (stabilised.roll_deg, stabilised.vehicle_pitch_deg) == (0.0, 0.0)
    s.tilt, s.yaw = 15.0, math.nan
    tilted = camera_pose(s, CameraConfig(pitch_deg=5.0))
    assert tilted.pitch_deg == 15.0 and tilted.yaw_deg is None  # what the gimbal reports wins over the config
    assert camera_pose(None, CameraConfig()).yaw_deg is None


def test_replay_with_the_flight_config_uses_its_camera_and_says_what_is_missing(tmp_path, onnx_model, heldout_cache,
                                                                                 recording):
    import json
    import subprocess
    import sys

    cfg = tmp_path / "skyloc.yaml"
    cfg.write_text(yaml.safe_dump({"model": str(onnx_model), "cache": str(heldout_cache), "source": "csi://0",
                                   "camera": {"mount_yaw_deg": MOUNT_YAW}, "mavlink": None}))
    run = lambda *a: subprocess.run([sys.executable, "-m", "skyloc.cli", "replay", str(recording / "f.mp4"), *a],  # noqa: E731
                                    capture_output=True, text=True)
    r = run("--config", str(cfg), "--telemetry", str(recording / "vehicle.csv"), "-o", str(tmp_path / "out"),
            "--max-frames", "8")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = list(csv.DictReader(open(tmp_path / "out" / "track.csv")))
    camera = list(csv.DictReader(open(recording / "camera.csv")))
    assert len(rows) == 8 and json.loads((tmp_path / "out" / "report.json").read_text())["frames"] == 8
    for row, truth in zip(rows, camera):  # the log's vehicle yaw turned by the config's mount: the camera's
        assert float(row["telemetry_yaw"]) == pytest.approx(float(truth["yaw"]), abs=0.05)
    r = run("--telemetry", str(recording / "vehicle.csv"))
    assert r.returncode != 0 and "--model and --cache, or --config" in r.stderr and "Traceback" not in r.stderr
