"""Shared fixtures: small synthetic worlds and one briefly trained model, built once per session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("skyloc")


@pytest.fixture(scope="session")
def train_map(workdir) -> Path:
    from skyloc.synth.world import generate, write_geotiff

    return write_geotiff(generate(1024, 1.0, seed=101), workdir / "train_map.tif")


@pytest.fixture(scope="session")
def heldout_map(workdir) -> Path:
    """A different world (other layout, other place): never seen in training."""
    from skyloc.synth.world import generate, write_geotiff

    return write_geotiff(generate(1024, 1.0, seed=202, lat=46.9, lon=7.4), workdir / "heldout_map.tif")


@pytest.fixture(scope="session")
def pairs(workdir, train_map) -> Path:
    from skyloc.synth.pairs import PairsConfig, make_pairs

    make_pairs(train_map, workdir / "pairs", PairsConfig(classes=64, views=6, test_fraction=0.0, seed=1,
                                                         altitude=(110, 140)))
    return workdir / "pairs"


@pytest.fixture(scope="session")
def heldout_pairs(workdir, heldout_map) -> Path:
    from skyloc.synth.pairs import PairsConfig, make_pairs

    make_pairs(heldout_map, workdir / "heldout_pairs", PairsConfig(classes=25, views=3, test_fraction=1.0, seed=2,
                                                                   altitude=(110, 140)))
    return workdir / "heldout_pairs"


@pytest.fixture(scope="session")
def trained(workdir, pairs) -> dict:
    """mlr_convnext_atto trained for a few CPU epochs on the training map."""
    from skyloc.train.config import TrainConfig
    from skyloc.train.trainer import train

    cfg = TrainConfig(model="mlr_convnext_atto", data=str(pairs), out=str(workdir / "run"), epochs=8, batch_size=16,
                      k_sat=2, lr=0.02, backbone_lr=0.01, milestones=[6], loss="infonce", temperature=0.1,
                      amp=False, workers=0)
    return train(cfg, resume=False)


@pytest.fixture(scope="session")
def onnx_model(workdir, trained) -> Path:
    from skyloc.export.onnx_export import export_onnx
    from skyloc.models.checkpoint import load_model

    model, _ = load_model(trained["checkpoint"])
    export_onnx(model, workdir / "mlr.onnx")
    return workdir / "mlr.onnx"


@pytest.fixture(scope="session")
def embedder(onnx_model):
    from skyloc.runtime.embedder import OnnxEmbedder

    return OnnxEmbedder(onnx_model)


@pytest.fixture(scope="session")
def flight(tmp_path_factory, heldout_map) -> Path:
    """12 s over the held-out map at 10 fps with a turn and a camera's exposure changes."""
    from skyloc.synth.flight import FlightConfig, render_flight

    d = tmp_path_factory.mktemp("track")
    cfg = FlightConfig(duration_s=12, fps=10, speed=10, altitude=125, altitude_jitter=3, pitch=0, width=480,
                       height=320, route="turns", turn_deg=90, turn_rate=20, exposure=0.8, exposure_time=0.02, seed=5)
    render_flight(heldout_map, d / "f.mp4", d / "f.csv", cfg)
    return d


def replay_flight(flight: Path, localizer):
    """Replay the `flight` fixture's video and telemetry through a localizer."""
    from skyloc.onboard.replay import replay
    from skyloc.onboard.telemetry import load_telemetry

    return replay(str(flight / "f.mp4"), localizer, load_telemetry(flight / "f.csv"))


@pytest.fixture(scope="session")
def heldout_cache(workdir, heldout_map, embedder) -> Path:
    from skyloc.runtime.cache import build_cache

    return build_cache(heldout_map, embedder, workdir / "heldout.cache", [138.6], overlap=0.75)
