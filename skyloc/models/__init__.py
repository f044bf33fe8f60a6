"""Both cross-view networks behind one timm-style registry.

    >>> from skyloc.models import create_model
    >>> model = create_model("mlr_convnext_tiny", num_classes=701)
    >>> model.embed(images)  # unit-length retrieval descriptors
"""
from skyloc.models import mift as _mift  # noqa: F401  (registers models)
from skyloc.models import mlr as _mlr  # noqa: F401
from skyloc.models.base import BranchOutput, CrossViewModel, weights_fingerprint
from skyloc.models.registry import create_model, is_model, list_models, register_model

__all__ = ["BranchOutput", "CrossViewModel", "create_model", "is_model", "list_models", "register_model",
           "weights_fingerprint"]
