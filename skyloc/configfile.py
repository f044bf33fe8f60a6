"""YAML config files validated by pydantic, with one-line errors that name the field (no torch)."""
from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from skyloc.errors import SkylocError

M = TypeVar("M", bound=BaseModel)


def read_yaml(path: str | Path, hint: str = "") -> dict:
    p = Path(path)
    if not p.is_file():
        raise SkylocError(f"config not found: {p}{f' ({hint})' if hint else ''}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SkylocError(f"{p} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise SkylocError(f"{p} must be a YAML mapping of field: value")
    return data


def validate(model: type[M], data: dict, source: str) -> M:
    """Build `model` from `data`; the first problem becomes "SOURCE: field 'a.b': message"."""
    try:
        return model(**data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(x) for x in err["loc"])
        raise SkylocError(f"{source}: field '{field}': {err['msg']}") from None
