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

from busseg.errors import InvalidInput, MissingFile


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


def _f(default: Any, text: str, **bounds: Any) -> Any:
    """A config field with its default, its meaning (docs/reference/config.md) and bounds."""
    if callable(default):
        return Field(default_factory=default, description=text, **bounds)
    return Field(default, description=text, **bounds)


class AugmentConfig(_Strict):
    """Batched tensor augmentation; `*_malignant` values apply to malignant images."""

    flip: float = _f(0.5, "chance of a left-right flip", ge=0.0, le=1.0)
    rotate_deg: float = _f(15.0, "largest rotation, degrees either way", ge=0.0, le=180.0)
    scale: float = _f(0.15, "largest zoom in or out, as a fraction", ge=0.0, lt=1.0)
    translate: float = _f(0.08, "largest shift, as a fraction of the side", ge=0.0, le=0.5)
    brightness: float = _f(0.15, "largest brightness offset (image in [0, 1])", ge=0.0, le=1.0)
    contrast: float = _f(0.2, "largest contrast change, as a fraction", ge=0.0, lt=1.0)
    gamma: float = _f(0.25, "largest log-gamma change", ge=0.0, lt=1.0)
    noise: float = _f(0.05, "standard deviation of multiplicative (speckle-like) noise",
                      ge=0.0, le=1.0)
    blur: float = _f(0.2, "chance of a 3x3 binomial blur", ge=0.0, le=1.0)
    ramp: float = _f(0.0, "largest gain ramp with depth (as other scanners attenuate); "
                     "configs/finetune.yaml uses 0.3", ge=0.0, lt=1.0)
    p: float = _f(0.8, "chance that a benign or normal scan is augmented at all", ge=0.0, le=1.0)
    p_malignant: float = _f(1.0, "chance that a malignant scan is augmented", ge=0.0, le=1.0)
    strength_malignant: float = _f(1.3, "factor on every range above for malignant scans",
                                   ge=0.0, le=3.0)


class TrainConfig(_Strict):
    """Everything a training run needs; saved resolved beside the weights. The defaults are the
    U-Net recipe on one data folder (`configs/busi.yaml` spells them out); the shipped weights'
    recipe is `configs/all_sources_lite0.yaml`."""

    data: str | list[str] = _f("data", "prepared data folder (its train/ and val/ splits), or "
                               "a list of them: several sources in one run")
    sources: dict[str, float] = _f(dict, "share of the training draws per source (by folder "
                                   "name; normalised); empty: by each source's size")
    out: str = _f("results", "run folder: weights, logs, config.yaml")
    size: int = _f(256, "training and inference side in pixels", ge=16)
    epochs: int = _f(50, "epochs to train (an epoch: as many draws as training scans, or "
                     "epoch_steps optimizer steps)", ge=1)
    epoch_steps: int | None = _f(None, "optimizer steps per epoch (null: as many draws as "
                                 "training scans); a number makes the training length "
                                 "epochs x epoch_steps steps whatever the data's size", ge=1)
    batch_size: int = _f(8, "scans per optimizer step (per process under torchrun)", ge=1)
    optimizer: Literal["adam", "adamw"] = _f("adamw", "Adam or AdamW (fused)")
    lr: float = _f(1e-3, "peak learning rate", ge=0.0, le=1.0)
    weight_decay: float = _f(1e-4, "weight decay (decoupled for AdamW)", ge=0.0)
    schedule: Literal["constant", "cosine"] = _f("cosine", "learning-rate schedule after the "
                                                 "warm-up; the cosine ends at 1% of the peak")
    schedule_epochs: int | None = _f(130, "the cosine's length in epochs (null: epochs); "
                                     "longer than epochs stops it part-way", ge=1)
    warmup_epochs: int = _f(3, "linear warm-up epochs", ge=0)
    ema: float = _f(0.995, "decay of the weights' moving average (0: none)", ge=0.0, lt=1.0)
    select: Literal["best", "last"] = _f("last", "weights kept: the last (EMA), or the best "
                                         "epoch by val lesion Dice with early stopping")
    patience: int = _f(20, "select best: stop after this many epochs without progress", ge=1)
    init: str | None = _f(None, "start from weights: default (the shipped model) or a path")
    limit: int = _f(0, "train on this many training scans only (0: all)", ge=0)
    seed: int = _f(0, "seed of weights, sampling and augmentation")
    device: str = _f("auto", "auto, cpu, cuda or cuda:N", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    amp: Literal["auto", "fp32", "bf16"] = _f("auto", "precision; auto: bf16 where a start-up "
                                              "probe shows it faster (precision.json)")
    compile: bool | Literal["auto"] = _f("auto", "torch.compile the training step; auto: where "
                                         "a start-up probe shows it faster")
    normal_share: float = _f(0.1, "share of the draws given to normal scans (benign and "
                             "malignant share the rest equally)", ge=0.0, lt=1.0)
    loss: str = _f("bce_dice", "a loss registered in busseg.losses.LOSSES")
    sync_bn: bool = _f(False, "torchrun on GPUs with model norm batch: SyncBatchNorm")
    model: ModelConfig = _f(ModelConfig, "model name and its constructor's arguments")
    augment: AugmentConfig = _f(AugmentConfig, "augmentation")

    @field_validator("sources")
    @classmethod
    def _positive_shares(cls, shares: dict[str, float]) -> dict[str, float]:
        bad = {k: v for k, v in shares.items() if not v >= 0}
        if bad or (shares and sum(shares.values()) <= 0):
            raise ValueError(f"source shares must be >= 0 and not all 0, got {shares}")
        return shares

    @field_validator("loss")
    @classmethod
    def _registered_loss(cls, name: str) -> str:
        from busseg.losses import LOSSES

        if name not in LOSSES:
            raise InvalidInput(f"unknown loss {name!r}; known: {', '.join(sorted(LOSSES))}")
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
        raise InvalidInput("; ".join(_message(e) for e in exc.errors())) from None


MAX_CONFIG_BYTES = 1 << 20  # a config file is a page of settings, never megabytes
MAX_CONFIG_NODES = 100_000  # values after anchors and aliases are expanded


def load_yaml(text: str, source: object) -> object:
    """YAML with bounds: at most MAX_CONFIG_BYTES of text and MAX_CONFIG_NODES values once
    aliases are expanded (an "anchor bomb" of nested aliases is refused before it is built)."""
    if len(text.encode()) > MAX_CONFIG_BYTES:
        raise InvalidInput(f"{source}: over {MAX_CONFIG_BYTES} bytes; not a busseg config")
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}) > MAX_CONFIG_NODES:
            raise InvalidInput(f"{source}: expands to over {MAX_CONFIG_NODES} values through "
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
            raise MissingFile(f"{path}: config file not found") from None
        except yaml.YAMLError as exc:
            raise InvalidInput(f"{path}: invalid YAML ({exc})") from None
        if not isinstance(data, dict):
            raise InvalidInput(f"{path}: config must be a mapping of keys to values")
    for item in overrides or []:
        if "=" not in item:
            raise InvalidInput(f"override {item!r} must look like key=value")
        key, raw = item.split("=", 1)
        node = data
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise InvalidInput(f"override {item!r}: {p!r} is not a section")
        node[leaf] = load_yaml(raw, f"override {item!r}")
    return from_dict(TrainConfig, data)


def config_to_dict(cfg: BaseModel) -> dict:
    """Plain nested dict of a config (safe for YAML, JSON and checkpoints)."""
    return cfg.model_dump()
