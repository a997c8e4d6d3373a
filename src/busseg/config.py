"""Typed, validated training configuration: pydantic models, an optional YAML file, overrides.

`resolve_config(path, ["epochs=5", "model.width=24"])` returns a `TrainConfig`. Unknown keys and
bad values are errors that name the key; `config_to_dict(cfg)` is what each run folder keeps as
`config.yaml` and every checkpoint as `config`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(BaseModel):
    """Which model to build (a name in `busseg.models.MODELS`) and that model's own constructor
    arguments beside it (`model: {name: unet, width: 8}`), checked against its signature and
    completed with its defaults."""

    model_config = ConfigDict(extra="allow", validate_assignment=False)

    name: str = "unet"

    @model_validator(mode="before")
    @classmethod
    def _arguments_of_the_model(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        from busseg.models import model_arguments

        name = data.get("name", "unet")
        args = {k: v for k, v in data.items() if k != "name"}
        return {"name": name, **model_arguments(str(name), args)}

    @property
    def arguments(self) -> dict[str, Any]:
        """The constructor's keyword arguments."""
        return dict(self.model_extra or {})


class AugmentConfig(_Strict):
    """Batched tensor augmentation; `*_malignant` values apply to malignant images."""

    flip: float = Field(0.5, ge=0.0, le=1.0)
    rotate_deg: float = Field(15.0, ge=0.0, le=180.0)
    scale: float = Field(0.15, ge=0.0, lt=1.0)
    translate: float = Field(0.08, ge=0.0, le=0.5)
    brightness: float = Field(0.15, ge=0.0, le=1.0)
    contrast: float = Field(0.2, ge=0.0, lt=1.0)
    gamma: float = Field(0.25, ge=0.0, lt=1.0)
    noise: float = Field(0.05, ge=0.0, le=1.0)
    blur: float = Field(0.2, ge=0.0, le=1.0)
    ramp: float = Field(0.0, ge=0.0, lt=1.0)  # depth gain ramp (configs/finetune.yaml uses it)
    p: float = Field(0.8, ge=0.0, le=1.0)
    p_malignant: float = Field(1.0, ge=0.0, le=1.0)
    strength_malignant: float = Field(1.3, ge=0.0, le=3.0)


class TrainConfig(_Strict):
    """Everything a training run needs; saved resolved beside the weights. The defaults are the
    recipe of the shipped weights (`configs/busi.yaml` spells them out)."""

    data: str = "data"
    out: str = "results"
    size: int = Field(256, ge=16)
    epochs: int = Field(50, ge=1)
    batch_size: int = Field(8, ge=1)
    optimizer: Literal["adam", "adamw"] = "adamw"
    lr: float = Field(1e-3, ge=0.0, le=1.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    schedule: Literal["constant", "cosine"] = "cosine"
    schedule_epochs: int | None = Field(130, ge=1)  # the cosine's length (None: epochs)
    warmup_epochs: int = Field(3, ge=0)
    ema: float = Field(0.995, ge=0.0, lt=1.0)  # 0: no EMA weights
    select: Literal["best", "last"] = "last"
    patience: int = Field(20, ge=1)
    init: str | None = None  # start from weights: 'default' (the shipped model) or a path
    limit: int = Field(0, ge=0)  # train on this many training scans only (0: all)
    seed: int = 0
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    cuda_graph: bool = True  # one GPU: replay the training forward / backward as CUDA graphs
    amp: Literal["auto", "fp32", "bf16"] = "auto"
    compile: bool | Literal["auto"] = "auto"  # torch.compile the training step (busseg.stepcompile)
    normal_share: float = Field(0.1, ge=0.0, lt=1.0)
    loss: str = "bce_dice"  # a name in busseg.losses.LOSSES
    progress: bool = True
    sync_bn: bool = False
    model: ModelConfig = Field(default_factory=ModelConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)

    @field_validator("loss")
    @classmethod
    def _registered_loss(cls, name: str) -> str:
        from busseg.losses import LOSSES

        if name not in LOSSES:
            raise ValueError(f"unknown loss {name!r}; known: {', '.join(sorted(LOSSES))}")
        return name


def _message(err: dict) -> str:
    key = ".".join(str(p) for p in err["loc"])
    if not key:  # a rule across keys
        return "config: " + err["msg"].removeprefix("Value error, ")
    if key == "model" and err["type"] == "value_error":  # from the model's own signature
        return err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        return f"unknown config key {key!r}"
    return f"config key {key!r}: {err['msg'].lower()}, got {err.get('input')!r}"


def from_dict(cls: type[BaseModel], data: dict) -> Any:
    """Build config model `cls` from a (nested) dict; unknown keys and bad values raise one
    ValueError naming every offending key."""
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ValueError("; ".join(_message(e) for e in exc.errors())) from None


MAX_CONFIG_BYTES = 1 << 20  # a config file is a page of settings, never megabytes
MAX_CONFIG_NODES = 100_000  # values after anchors and aliases are expanded


def load_yaml(text: str, source: object) -> object:
    """YAML with bounds: at most MAX_CONFIG_BYTES of text and MAX_CONFIG_NODES values once
    aliases are expanded (an "anchor bomb" of nested aliases is refused before it is built)."""
    if len(text.encode()) > MAX_CONFIG_BYTES:
        raise ValueError(f"{source}: over {MAX_CONFIG_BYTES} bytes; not a busseg config")
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}) > MAX_CONFIG_NODES:
            raise ValueError(f"{source}: expands to over {MAX_CONFIG_NODES} values through "
                             "YAML aliases; refused")
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """How many values `node` stands for once every alias is copied out (counted, not built)."""
    key = id(node)
    if key in memo:
        return memo[key]
    memo[key] = MAX_CONFIG_NODES + 1  # a node that holds itself never ends: too large
    if isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    elif isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(v, memo) for v in node.value)
    else:
        size = 1
    memo[key] = min(size, MAX_CONFIG_NODES + 1)
    return memo[key]


def resolve_config(
    path: str | Path | None = None, overrides: list[str] | None = None
) -> TrainConfig:
    """Defaults, then the YAML file at `path`, then `key=value` overrides (dotted keys nest)."""
    data: dict = {}
    if path is not None:
        try:
            data = load_yaml(Path(path).read_text(), path) or {}
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
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {p!r} is not a section")
        node[leaf] = load_yaml(raw, f"override {item!r}")
    return from_dict(TrainConfig, data)


def config_to_dict(cfg: BaseModel) -> dict:
    """Plain nested dict of a config (safe for YAML, JSON and checkpoints)."""
    return cfg.model_dump()
