"""The README's workflow, command by command, as a newcomer runs it; and one-line errors."""
import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import cv2

from skyloc.runtime.geo import Geodesy, utm_crs_for

ROOT = Path(__file__).resolve().parents[1]


def skyloc(*args, cwd):
    r = subprocess.run([sys.executable, "-m", "skyloc.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd)
    return r


def test_readme_workflow_reaches_a_replay(tmp_path):
    steps = [
        ("synth-map", "area.tif", "--size", "768", "--seed", "3"),
        ("make-pairs", "area.tif", "pairs", "--classes", "24", "--views", "3", "--altitude", "120,160"),
        ("train", "--config", ROOT / "configs" / "cpu_small.yaml", "--data", "pairs", "--out", "runs/area",
         "--epochs", "1", "--max-steps", "2", "--workers", "0"),
        ("evaluate", "runs/area/last.pt", "--data", "pairs", "--figure", "top5.png"),
        ("export", "runs/area/last.pt", "--out", "model.onnx"),
        ("verify", "model.onnx", "runs/area/last.pt"),
        ("build-cache", "area.tif", "-m", "model.onnx", "-o", "area.cache", "--footprint", "160"),
        ("quantize", "model.onnx", "-c", "area.cache", "--tiles", "32"),
        ("synth-flight", "area.tif", "flight.mp4", "--telemetry", "flight.csv", "--duration", "3"),
        ("replay", "flight.mp4", "-m", "model.onnx", "-c", "area.cache", "--telemetry", "flight.csv", "--pitch", "5",
         "-o", "replay_out"),
    ]
    for step in steps:
        r = skyloc(*step, cwd=tmp_path)
        assert r.returncode == 0, f"skyloc {' '.join(map(str, step))}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
        if step[0] == "verify":
            assert "parity OK" in r.stdout, r.stdout
    assert (tmp_path / "top5.png").stat().st_size > 1000
    assert (tmp_path / "model.int8.onnx").is_file()
    report = json.loads((tmp_path / "replay_out" / "report.json").read_text())
    assert report["frames"] == 6
    assert (tmp_path / "replay_out" / "track.png").is_file()
    # one frame as the README localizes it (its yaw and altitude given): a fix within 3x its accuracy
    ok, frame = cv2.VideoCapture(str(tmp_path / "flight.mp4")).read()
    assert ok and cv2.imwrite(str(tmp_path / "frame.jpg"), frame)
    truth = next(csv.DictReader(open(tmp_path / "flight.csv")))
    r = skyloc("localize", "frame.jpg", "-m", "model.onnx", "-c", "area.cache", "--yaw", truth["yaw"],
               "--alt", truth["alt"], "--pitch", "5", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    fix = json.loads(r.stdout)
    assert fix["status"] == "ok", fix["message"]
    lat, lon = float(truth["lat"]), float(truth["lon"])
    utm = Geodesy(utm_crs_for(lat, lon))
    error = math.dist(utm.from_latlon(lat, lon), utm.from_latlon(fix["lat"], fix["lon"]))
    assert error <= 3 * fix["horizontal_accuracy"], (error, fix)


def test_errors_are_one_line(tmp_path):
    cases = [
        (("build-cache", "missing.tif", "-m", "m.onnx", "-o", "x.cache"), "model not found"),
        (("replay", "nope.mp4", "-m", "m.onnx", "-c", "c.cache"), "video source not found: nope.mp4"),
        (("replay", ".", "-m", "m.onnx", "-c", "c.cache", "--telemetry", "f.tlog"), "telemetry file not found"),
        (("localize", "f.jpg", "-m", "m.onnx", "-c", "c.cache", "--start", "91,8"), "--start '91,8'"),
        (("synth-flight", "missing.tif", "f.mp4", "--telemetry", "f.csv"), "map not found"),
        (("make-pairs", "missing.tif", "out"), "map not found"),
        (("quantize", "m.onnx", "-c", "c.cache"), "model not found: m.onnx"),
        (("train", "--model", "vgg16", "--data", "."), "unknown model 'vgg16'"),
        (("train", "--model", "mift_tiny"), "no training data"),
    ]
    for args, expected in cases:
        r = skyloc(*args, cwd=tmp_path)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert expected in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
