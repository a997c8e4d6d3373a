"""Typed training configuration: dataclasses, an optional YAML file, `key=value` overrides.

Unknown keys are errors. `resolve_config(path, ["epochs=5", "model.width=24"])` returns a
`TrainConfig`; `asdict(cfg)` is what each run folder keeps as `config.yaml`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


@dataclass
class ModelConfig:
    """Which model to build (`busseg.models.MODELS`) and its shape."""

    name: str = "unet"
    width: int = 16
    depth: int = 4
    stem_stride: int = 2
    deep_supervision: bool = False
    presence_head: bool = False


@dataclass
class AugmentConfig:
    """Batched tensor augmentation; `*_malignant` values apply to malignant images."""

    flip: float = 0.5
    rotate_deg: float = 15.0
    scale: float = 0.15
    translate: float = 0.08
    brightness: float = 0.15
    contrast: float = 0.2
    gamma: float = 0.25
    noise: float = 0.05
    blur: float = 0.2
    ramp: float = 0.0
    p: float = 0.8
    p_malignant: float = 1.0
    strength_malignant: float = 1.3


@dataclass
class TrainConfig:
    """Everything a training run needs; saved resolved beside the weights."""

    data: str = "data"
    out: str = "results"
    size: int = 256
    epochs: int = 100
    batch_size: int = 8
    optimizer: Literal["adam", "adamw"] = "adam"
    lr: float = 1e-4
    weight_decay: float = 0.0
    schedule: Literal["constant", "cosine"] = "constant"
    warmup_epochs: int = 0
    ema: float = 0.0
    select: Literal["best", "last"] = "best"
    patience: int = 20
    min_epochs: int = 0
    presence_weight: float = 0.5
    init: str | None = None  # start from weights: 'default' (the shipped model) or a path
    limit: int = 0  # train on this many training scans only (0: all)
    seed: int = 0
    threads: int = 0
    device: str = "auto"
    channels_last: bool = True
    amp: Literal["auto", "fp32", "bf16"] = "auto"
    normal_share: float = 0.0
    threshold: float = 0.5
    progress: bool = True
    sync_bn: bool = False
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


def _coerce(value: Any, typ: Any, key: str) -> Any:
    if dataclasses.is_dataclass(typ):
        if not isinstance(value, dict):
            raise ValueError(f"config key {key!r} must be a mapping")
        return from_dict(typ, value, prefix=f"{key}.")
    if typing.get_origin(typ) in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none")):
            return None
        inner = next(t for t in typing.get_args(typ) if t is not type(None))
        return _coerce(value, inner, key)
    if typing.get_origin(typ) is Literal:
        choices = typing.get_args(typ)
        if value not in choices:
            raise ValueError(f"config key {key!r} must be one of {', '.join(choices)}, "
                             f"got {value!r}")
        return value
    if typ is bool:
        if isinstance(value, str):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"config key {key!r} expects a boolean, got {value!r}")
        return bool(value)
    try:
        return typ(value)
    except (TypeError, ValueError):
        raise ValueError(f"config key {key!r} expects {typ.__name__}, got {value!r}") from None


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    """Build dataclass `cls` from a (nested) dict; unknown keys raise ValueError."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown config key(s): {', '.join(prefix + k for k in unknown)}")
    return cls(**{k: _coerce(v, hints[k], prefix + k) for k, v in data.items()})


def resolve_config(
    path: str | Path | None = None, overrides: list[str] | None = None
) -> TrainConfig:
    """Defaults, then the YAML file at `path`, then `key=value` overrides (dotted keys nest)."""
    data: dict = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: config file not found") from None
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: invalid YAML ({exc})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: config must be a mapping of keys to values")
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key=value")
        key, raw = item.split("=", 1)
        node = data
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(raw)
    return from_dict(TrainConfig, data)


def config_to_dict(cfg: Any) -> dict:
    """Plain nested dict of a config dataclass (safe for YAML, JSON and checkpoints)."""
    return dataclasses.asdict(cfg)
