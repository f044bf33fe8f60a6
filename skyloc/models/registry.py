"""A timm-style model registry: `@register_model` functions, `create_model(name, ...)`."""
from __future__ import annotations

from typing import Callable

from skyloc.errors import SkylocError

_MODELS: dict[str, Callable] = {}


def register_model(fn: Callable) -> Callable:
    """Register a factory `fn(num_classes, pretrained, backbone_weights, **kw)` under its name."""
    _MODELS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_MODELS)


def is_model(name: str) -> bool:
    return name in _MODELS


def create_model(
    name: str,
    num_classes: int = 701,
    pretrained: bool = False,
    backbone_weights: str | None = None,
    **kwargs,
):
    """Build a registered cross-view model.

    pretrained=True loads ImageNet backbone weights through timm (needs the model hub);
    backbone_weights loads them from a local file instead, for offline machines.
    """
    if name not in _MODELS:
        raise SkylocError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    try:
        model = _MODELS[name](num_classes=num_classes, pretrained=pretrained, **kwargs)
    except TypeError as exc:
        if "unexpected keyword argument" not in str(exc):
            raise
        raise SkylocError(f"model {name} does not take {str(exc).split('argument ')[-1]}: check model_kwargs "
                          f"(given: {', '.join(kwargs) or 'none'})") from None
    model.factory_kwargs = dict(kwargs)  # recorded in checkpoints so the exact model can be rebuilt
    if backbone_weights:
        model.load_backbone_weights(backbone_weights)
    return model
