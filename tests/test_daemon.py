"""The daemon: runs to the end of a source, survives faults, refuses bad configs, stops on SIGTERM."""
import csv
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from skyloc.errors import ModelMismatchError, SkylocError
from skyloc.onboard.config import DaemonConfig
from skyloc.onboard.daemon import Daemon
from skyloc.onboard.sources import Frame, LatestFrame, Source

from tests.test_mavlink import Autopilot, _free_port

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def flight(tmp_path_factory, heldout_map):
    from skyloc.synth.flight import FlightConfig, render_flight

    d = tmp_path_factory.mktemp("flight")
    render_flight(heldout_map, d / "f.mp4", d / "f.csv", FlightConfig(duration_s=4, fps=4.0, altitude=125, pitch=0))
    return d


def _config(tmp_path, onnx_model, cache, source, port=None, **extra):
    cfg = {"model": str(onnx_model), "cache": str(cache), "source": str(source), "max_fps": 20,
           "log": {"dir": str(tmp_path / "logs")}, "status_file": str(tmp_path / "status.json"),
           "mavlink": {"url": f"udpout:127.0.0.1:{port}"} if port else None, **extra}
    path = tmp_path / "skyloc.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_runs_a_file_source_to_its_end_and_feeds_the_autopilot(tmp_path, onnx_model, heldout_cache, flight):
    port = _free_port()
    ap = Autopilot(port)
    got = []
    t = threading.Thread(target=lambda: got.extend(ap.collect(6.0)), daemon=True)
    t.start()
    daemon = Daemon(DaemonConfig.load(_config(tmp_path, onnx_model, heldout_cache, flight / "f.mp4", port)))
    assert daemon.run() == 0
    t.join()
    ap.close()
    status = json.loads((tmp_path / "status.json").read_text())
    # every frame is accounted for: localized, or dropped as stale while a relocalization ran (as live)
    assert status["state"] == "source ended" and status["errors"] == 0
    assert status["frames"] + status["frames_dropped"] == 16 and status["frames"] >= 2
    rows = list(csv.DictReader(open(next((tmp_path / "logs").glob("frames-*.csv")))))
    assert len(rows) == status["frames"]
    assert any(m.get_type() == "GPS_INPUT" for _, m in got) and any(m.get_type() == "HEARTBEAT" for _, m in got)


def test_corrupt_frames_and_a_failing_frame_do_not_stop_it(tmp_path, onnx_model, heldout_cache, heldout_map):
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(4):
        cv2.imwrite(str(frames / f"{i:03d}.jpg"), np.full((160, 160, 3), 60 + i * 20, np.uint8))
    (frames / "001.jpg").write_bytes(b"\xff\xd8 broken jpeg")
    daemon = Daemon(DaemonConfig.load(_config(tmp_path, onnx_model, heldout_cache, frames)))
    calls = {"n": 0}
    real = daemon.localizer.locate

    def flaky(*a, **kw):  # one frame fails inside the localizer, as a driver error would
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("CUDA error: an illegal memory access")
        return real(*a, **kw)

    daemon.localizer.locate = flaky
    assert daemon.run() == 0
    rows = list(csv.DictReader(open(next((tmp_path / "logs").glob("frames-*.csv")))))
    assert len(rows) == 4 and daemon.errors == 1
    messages = [r["message"] for r in rows]
    assert "corrupt frame" in messages and any("illegal memory access" in m for m in messages)
    assert all(r["status"] == "no-fix" for r in rows if r["message"])


def test_bad_configs_are_named(tmp_path, onnx_model, heldout_cache, flight):
    p = _config(tmp_path, onnx_model, heldout_cache, flight / "f.mp4", mavlink={"url": "udpout:1:1", "gps_rate_hz": 2})
    with pytest.raises(SkylocError, match=r"field 'mavlink.gps_rate_hz'"):
        DaemonConfig.load(p)
    p.write_text(yaml.safe_dump({"model": "m.onnx", "cache": "c", "source": "x", "camera": {"fov": 60}}))
    with pytest.raises(SkylocError, match=r"field 'camera.fov'.*[Ee]xtra"):
        DaemonConfig.load(p)
    p.write_text(yaml.safe_dump({"model": "m.onnx", "source": "x"}))
    with pytest.raises(SkylocError, match="field 'cache'"):
        DaemonConfig.load(p)
    r = subprocess.run([sys.executable, "-m", "skyloc.cli", "run", "--config", str(p)], capture_output=True, text=True)
    assert r.returncode == 2 and "field 'cache'" in r.stderr and "Traceback" not in r.stderr


def test_example_config_is_valid():
    cfg = DaemonConfig.load(ROOT / "configs" / "skyloc.example.yaml")
    assert cfg.mavlink.outputs == ["gps_input"] and cfg.source == "csi://0"


def test_cache_of_another_model_stops_the_start(tmp_path, heldout_cache, flight):
    import torch

    from skyloc.export.onnx_export import export_onnx
    from skyloc.models import create_model

    torch.manual_seed(1)
    export_onnx(create_model("mlr_convnext_atto", num_classes=3), tmp_path / "other.onnx")
    cfg = DaemonConfig.load(_config(tmp_path, tmp_path / "other.onnx", heldout_cache, flight / "f.mp4"))
    with pytest.raises(ModelMismatchError, match="fingerprint"):
        Daemon(cfg)


def test_sigterm_stops_cleanly(tmp_path, onnx_model, heldout_cache, heldout_map):
    from skyloc.synth.flight import FlightConfig, render_flight

    render_flight(heldout_map, tmp_path / "long.mp4", tmp_path / "long.csv",
                  FlightConfig(duration_s=30, fps=2.0, altitude=125))
    p = _config(tmp_path, onnx_model, heldout_cache, tmp_path / "long.mp4", log={"dir": str(tmp_path / "logs"),
                                                                               "format": "json"})
    proc = subprocess.Popen([sys.executable, "-m", "skyloc.cli", "run", "--config", str(p)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    status = tmp_path / "status.json"
    deadline = time.time() + 60
    while time.time() < deadline and not (status.is_file() and json.loads(status.read_text())["frames"] >= 2):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert json.loads(status.read_text())["state"] == "stopped"
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert any("signal 15" in entry["message"] for entry in lines)  # structured log lines


class _FlakyCamera(Source):
    """A live camera that delivers 3 frames, dies, and works again after reopening."""

    live = True
    opened = 0

    def __init__(self):
        _FlakyCamera.opened += 1
        self.n = 0

    def read(self):
        self.n += 1
        if _FlakyCamera.opened == 1 and self.n > 3:
            return None
        time.sleep(0.01)
        return Frame(np.zeros((8, 8, 3), np.uint8), self.n, time.time())


def test_camera_drop_out_reconnects_and_only_the_newest_frame_is_handed_out():
    cam = LatestFrame("fake://", reconnect_s=0.1, opener=lambda uri: _FlakyCamera())
    try:
        time.sleep(0.6)
        assert cam.reconnects == 1 and cam.connected
        f = cam.get(timeout=1)
        assert f is not None and cam.dropped > 0  # frames we were too slow for were dropped, not queued
    finally:
        cam.close()
