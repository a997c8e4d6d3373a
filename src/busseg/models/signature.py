"""Checking a model's config arguments against its constructor's signature (pydantic)."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from functools import cache
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from busseg.errors import InvalidInput


@cache
def _schema(name: str, ctor: Callable) -> type[BaseModel]:
    """A strict pydantic model of `ctor`'s keyword arguments (annotations, defaults)."""
    target = ctor.__init__ if inspect.isclass(ctor) else ctor
    hints = typing.get_type_hints(target)
    fields = {}
    for p in inspect.signature(ctor).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        default = ... if p.default is p.empty else p.default
        fields[p.name] = (hints.get(p.name, Any), default)
    return create_model(f"{name}_arguments", __config__=ConfigDict(extra="forbid", strict=False),
                        **fields)


def check_arguments(name: str, ctor: Callable, given: dict[str, Any]) -> dict[str, Any]:
    """`given` validated against `ctor`'s signature, completed with its defaults, and the
    model built once on PyTorch's meta device (no memory, no weights) so that the
    constructor's own checks of the values run too."""
    try:
        args = _schema(name, ctor).model_validate(given).model_dump()
    except ValidationError as exc:
        known = ", ".join(_schema(name, ctor).model_fields)
        problems = []
        for e in exc.errors():
            key = ".".join(str(p) for p in e["loc"])
            if e["type"] == "extra_forbidden":
                problems.append(f"unknown config key 'model.{key}': model {name!r} takes no "
                                f"argument {key!r} (it takes {known})")
            else:
                problems.append(f"config key 'model.{key}': {e['msg'].lower()}, "
                                f"got {e.get('input')!r}")
        raise InvalidInput("; ".join(problems)) from None
    _build_on_meta(name, ctor, args)
    return args


def _build_on_meta(name: str, ctor: Callable, args: dict[str, Any]) -> None:
    import torch

    try:
        with torch.device("meta"):
            ctor(**args)
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"config key 'model': model {name!r} refuses these arguments "
                           f"({exc})") from None
