"""Checkpoints that record the model name and config, so a file is enough to rebuild the model."""
from __future__ import annotations

import pickle
from pathlib import Path

import torch

from skyloc.errors import ModelMismatchError, SkylocError
from skyloc.models.base import CrossViewModel
from skyloc.models.registry import create_model, is_model
from skyloc.runtime.preprocess import DataConfig


def save_checkpoint(path: str | Path, model: CrossViewModel, **extra) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "skyloc_checkpoint": 3,  # 2: _layout models standardise their input (image_norm); 3: + edge layout
        "model_name": model.model_name,
        "num_classes": model.num_classes,
        "model_kwargs": getattr(model, "factory_kwargs", {}),
        "data_config": model.data_config.to_dict(),
        "state_dict": model.state_dict(),
        **extra,
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # never leave a half-written checkpoint behind


def read_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise SkylocError(f"checkpoint not found: {path}")
    try:  # tensors and plain types only: a checkpoint cannot run code on the machine that loads it
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        what = str(exc).split("Unsupported global:")[-1].strip().split()[1] if "Unsupported global" in str(exc) else ""
        raise SkylocError(f"refusing checkpoint {path}: it holds pickled objects{' (' + what + ')' if what else ''}, "
                          "which loading would run; skyloc checkpoints hold only tensors and plain types. If you "
                          "trust the file, re-save its state_dict, or train again with `skyloc train`") from None
    except Exception as exc:
        raise SkylocError(f"cannot read checkpoint {path}: the file is corrupt or not a skyloc checkpoint "
                          f"({type(exc).__name__})") from None
    if not isinstance(state, dict) or "model_name" not in state or "state_dict" not in state:
        raise SkylocError(f"{path} is not a skyloc checkpoint (no model_name/state_dict): train with `skyloc train`")
    return state


def model_kwargs_of(state: dict) -> dict:
    """The factory arguments a checkpoint's model was built with (older files: what was then the default)."""
    kwargs = dict(state.get("model_kwargs", {}))
    version = state.get("skyloc_checkpoint", 1)
    if state["model_name"].endswith("_layout"):
        if version < 2:
            kwargs.setdefault("image_norm", False)  # trained before the _layout models standardised their input
        if version < 3:
            kwargs.setdefault("edge_grid", 0)  # made before they carried the edge layout
    return kwargs


def load_model(path: str | Path, expect_model: str | None = None) -> tuple[CrossViewModel, dict]:
    """Rebuild the model a checkpoint was trained as; refuse if it is not `expect_model`."""
    state = read_checkpoint(path)
    name = state["model_name"]
    if expect_model and expect_model != name:
        raise ModelMismatchError(f"{path} is a {name} checkpoint, not {expect_model}: pass the matching "
                                 f"--model or the right checkpoint")
    if not is_model(name):
        raise SkylocError(f"{path} holds unknown model {name!r}: made by a newer skyloc?")
    model = create_model(name, num_classes=state["num_classes"], **model_kwargs_of(state))
    try:
        model.load_state_dict(state["state_dict"])
    except RuntimeError as exc:
        raise ModelMismatchError(f"{path}: weights do not fit {name} ({str(exc).splitlines()[0]})") from None
    if "data_config" in state:  # e.g. the colour handling the model was trained with
        model.data_config = DataConfig.from_dict(state["data_config"])
    return model.eval(), state
