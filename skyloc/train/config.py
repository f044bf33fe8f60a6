"""Training configuration: a validated pydantic model, loaded from YAML (errors name the field)."""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

from skyloc.configfile import read_yaml, validate


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = "mlr_convnext_tiny"
    model_kwargs: dict = Field(default_factory=dict, description="more arguments for the model factory, e.g. "
                               "{image_norm: false} (recorded in the checkpoint, like timm's --model-kwargs)")
    data: Optional[list[str]] = Field(None, description="one or more dataset roots (your pairs, University-1652, "
                                      "SUES-200, synthetic worlds); each root's classes are kept apart")
    balance_sources: bool = Field(True, description="draw each root equally often, whatever its size")
    height: Optional[str] = Field(None, description="SUES-200 flight height (150/200/250/300)")
    out: str = "runs/train"
    epochs: int = Field(120, ge=1)
    batch_size: int = Field(8, ge=2, description="classes per batch (each gives a satellite and a drone image)")
    k_sat: int = Field(1, ge=1, description="satellite augmentations per class per epoch (MIFT: 3)")
    lr: float = Field(0.01, gt=0)
    backbone_lr: float = Field(0.001, gt=0)
    optimizer: Literal["sgd", "adamw"] = Field("sgd", description="sgd: the papers' (fine-tuning ImageNet "
                                                "weights); adamw: trains from scratch far better (see README)")
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: Literal["step", "cosine"] = Field("step", description="step: x gamma at each milestone; cosine: "
                                                "to zero over the run after warmup_epochs")
    warmup_epochs: float = Field(0.0, ge=0, description="linear learning-rate warm-up (cosine schedule)")
    milestones: list[int] = [70, 110]
    gamma: float = 0.1
    aligned: bool = Field(False, description="turn and mirror both views of a pair together (your maps: views "
                          "north-up as the runtime derotates frames); off: each view flipped on its own "
                          "(University-1652, whose drone views circle a building)")
    loss: Literal["triplet", "infonce"] = "triplet"
    appearance: float = Field(0.0, ge=0, le=2, description="strength of the appearance randomisation (sensor, "
                              "exposure, haze, shadows, blur, noise/JPEG, season): 0 off, 1 full strength "
                              "(8-epoch runs with the edge layout: synthetic autumn R@1 31.2 -> 35.8 %; NAIP "
                              "across dates 50.6 -> 50.0 %, same-date 75.6 -> 72.5 %)")
    colour: Literal["auto", "rgb", "grey"] = Field("auto", description="auto: grey when the satellite images are "
                                                   "grey (a panchromatic map); the model records it")
    clip_grad: Optional[float] = Field(None, gt=0, description="clip the gradient norm (None: off)")
    margin: float = 0.3
    temperature: float = 0.07
    ce_weight: float = 1.0
    metric_weight: float = 1.0
    pretrained: bool = False
    backbone_weights: Optional[str] = None
    amp: bool = True
    workers: int = 2
    seed: int = 0
    max_steps: Optional[int] = Field(None, description="stop each epoch after this many steps (smoke tests)")
    log_every: int = 10
    device: str = "auto"

    @field_validator("data", mode="before")
    @classmethod
    def _roots(cls, v):
        if v is None or isinstance(v, list):
            return v
        return [str(v)]

    @field_validator("model")
    @classmethod
    def _registered(cls, name: str) -> str:
        from skyloc.models import is_model, list_models

        if not is_model(name):
            raise ValueError(f"unknown model {name!r}; known: {', '.join(list_models())}")
        return name

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides) -> "TrainConfig":
        data = read_yaml(path)
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.parse(data, str(path))

    @classmethod
    def parse(cls, data: dict, source: str = "config") -> "TrainConfig":
        return validate(cls, data, source)
