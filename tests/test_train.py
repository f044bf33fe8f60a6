"""Training: the loss falls, retrieval on an unseen map beats chance, resume works, DDP runs."""
import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from skyloc.errors import SkylocError
from skyloc.models.checkpoint import load_model, read_checkpoint
from skyloc.train.config import TrainConfig
from skyloc.train.evaluate import evaluate
from skyloc.train.trainer import train

ROOT = Path(__file__).resolve().parents[1]


def test_training_loss_falls_and_generalises_to_another_map(trained, heldout_pairs):
    loss = trained["loss"]
    assert loss[-1] < 0.8 * loss[0]
    model, state = load_model(trained["checkpoint"])
    assert state["config"]["model"] == "mlr_convnext_atto" and state["epoch"] == 7
    rows = evaluate(model, heldout_pairs)
    d2s = next(r for r in rows if r["task"] == "drone->satellite" and r["protocol"] == "full gallery")
    chance = 100.0 / d2s["gallery"]  # 25 places -> 4 %
    assert d2s["R@1"] >= 4 * chance, d2s
    assert d2s["R@10"] > d2s["R@1"]


def test_resume_continues_from_the_last_epoch(tmp_path, pairs):
    cfg = TrainConfig(model="mift_tiny", data=str(pairs), out=str(tmp_path / "run"), epochs=1, batch_size=8,
                      max_steps=2, workers=0, amp=False)
    first = train(cfg)
    assert len(first["loss"]) == 1
    cfg2 = cfg.model_copy(update={"epochs": 2})
    second = train(cfg2)  # resumes: runs only epoch 2, keeps the loss history
    assert len(second["loss"]) == 2 and second["loss"][0] == first["loss"][0]
    state = read_checkpoint(tmp_path / "run" / "last.pt")
    assert state["epoch"] == 1 and len(state["loss"]) == 2
    rows = list(csv.DictReader(open(tmp_path / "run" / "log.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    with pytest.raises(SkylocError, match="is a mift_tiny run"):
        train(cfg.model_copy(update={"model": "mlr_convnext_atto"}))


def test_config_errors_name_the_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: mift_tiny\nepochs: -3\n")
    with pytest.raises(SkylocError, match="field 'epochs'"):
        TrainConfig.from_yaml(bad)
    bad.write_text("model: mift_tiny\nlearning_rate: 0.1\n")
    with pytest.raises(SkylocError, match="field 'learning_rate'"):
        TrainConfig.from_yaml(bad)


def test_shipped_recipes_parse():
    for p in sorted((ROOT / "configs").glob("*.yaml")):
        if p.name.startswith("skyloc"):
            continue  # daemon configs: tests/test_daemon.py
        cfg = TrainConfig.from_yaml(p)
        assert cfg.model


def test_torchrun_ddp_on_cpu(tmp_path, pairs):
    """torchrun --nproc_per_node 2 with gloo: both ranks train, rank 0 writes the checkpoint."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           "-m", "skyloc.cli", "train", "--model", "mift_tiny", "--data", str(pairs), "--out", str(tmp_path / "ddp"),
           "--epochs", "1", "--batch-size", "4", "--max-steps", "2", "--workers", "0"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    state = read_checkpoint(tmp_path / "ddp" / "last.pt")
    assert state["epoch"] == 0
