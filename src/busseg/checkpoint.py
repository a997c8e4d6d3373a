"""Saving and loading weights: `.pt` checkpoints of plain types, shipped `.safetensors` weights."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from busseg.config import TrainConfig
from busseg.errors import InvalidInput, MissingFile
from busseg.jsonio import clean
from busseg.models import create_model
from busseg.postprocess import SETTINGS_FILE, PostprocessSettings, read_settings

WEIGHTS_DIR = Path(__file__).parent / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "busseg_default.safetensors"

DEFAULTS = TrainConfig()  # size and threshold for files that do not record them


@dataclass
class LoadedModel:
    """A model in eval mode with what inference needs to know about it."""

    net: nn.Module
    size: int
    name: str
    meta: dict
    settings: PostprocessSettings

    @property
    def threshold(self) -> float:
        return self.settings.threshold

    @property
    def tta(self) -> bool:
        return self.settings.tta

    @property
    def has_presence(self) -> bool:
        """Whether the network outputs an image-level lesion score."""
        return bool(self.meta.get("model", {}).get("presence_head", False))


def legacy_settings(meta: dict) -> PostprocessSettings:
    """Settings stored the older way (flat keys; the confidence gate is no longer applied)."""
    return PostprocessSettings(
        threshold=float(meta.get("threshold", 0.5)),
        tta=bool(meta.get("tta", False)),
        min_area_frac=float(meta.get("min_area_frac", 0.0)),
        keep_largest=bool(meta.get("keep_largest", False)))


def settings_for(checkpoint: Path, meta: dict) -> PostprocessSettings:
    """A model's post-processing: `postprocess.json` beside a `.pt` when it was chosen for that
    file (or names none), else the model's own metadata."""
    sidecar = checkpoint.with_name(SETTINGS_FILE)
    if checkpoint.suffix == ".pt" and sidecar.is_file():
        settings, owner = read_settings(sidecar)
        if owner in (None, checkpoint.name):
            return settings
    if isinstance(meta.get("postprocess"), dict):
        return PostprocessSettings.from_dict(meta["postprocess"])
    return legacy_settings(meta)


def saved_model_config(model_cfg: dict) -> dict:
    """A model config as saved by any busseg version, in today's terms: U-Nets saved before
    `norm` existed hold BatchNorm weights; `deep_supervision: false` (a removed option, whose
    auxiliary heads inference never used) is dropped."""
    cfg = dict(model_cfg)
    if cfg.get("name", "unet") in ("unet", "unet_classic"):
        cfg.setdefault("norm", "batch")
        cfg.pop("deep_supervision", None)
    return cfg


def build_from_config(model_cfg: dict, fresh: bool = False) -> nn.Module:
    """Create the network a saved model config describes. Unless `fresh` (a training run's
    start) its weights come from a checkpoint next, so start-up weights (an encoder's ImageNet
    weights) are not read."""
    cfg = saved_model_config(model_cfg)
    if not fresh and "encoder_weights" in cfg:
        cfg["encoder_weights"] = "random"
    return create_model(cfg.pop("name", "unet"), **cfg)


def save_checkpoint(path: Path | str, state: dict[str, Any]) -> None:
    """Write atomically (temp file + rename) so an interrupted save never corrupts a run."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def checkpoint_meta(ckpt: dict) -> dict:
    """What inference needs from a `.pt` checkpoint dict (model config, size, settings keys)."""
    cfg = ckpt.get("config", {})
    return {"model": cfg.get("model", {}), "size": cfg.get("size", DEFAULTS.size),
            "threshold": ckpt.get("threshold", cfg.get("threshold", 0.5)),
            "epoch": ckpt.get("epoch"), "metrics": ckpt.get("metrics", {}),
            "provenance": ckpt.get("provenance"), **ckpt.get("postprocess", {})}


def _read_pt(path: Path) -> dict:
    """A `.pt` checkpoint's dict; an unreadable file raises ValueError naming it."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InvalidInput(f"{path}: not a readable busseg checkpoint ({exc})") from None
    if not isinstance(ckpt, dict) or "model_state" not in ckpt:
        raise InvalidInput(f"{path}: not a busseg checkpoint (no model_state)")
    return ckpt


def _read_safetensors(path: Path) -> tuple[dict, dict]:
    """(weights, busseg metadata) of a `.safetensors` file; unreadable raises ValueError."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {}).get("busseg", "{}"))
        return load_file(str(path)), meta
    except Exception as exc:
        raise InvalidInput(f"{path}: not a readable safetensors file ({exc})") from None


def check_finite(state: dict, path: Path | str) -> None:
    """Refuse weights holding NaN or infinity (a run that diverged), naming the first tensor."""
    for key, value in state.items():
        if torch.is_tensor(value) and value.is_floating_point() and \
                not torch.isfinite(value).all():
            raise InvalidInput(f"{path}: weight {key} holds NaN or infinite values (did the "
                               "training run diverge?); refusing to segment with it")


def load_model(checkpoint: Path | str | None = None, device: str = "cpu") -> LoadedModel:
    """Load a `.pt` checkpoint or `.safetensors` weights (None: the shipped default model)."""
    path = Path(checkpoint) if checkpoint is not None else DEFAULT_WEIGHTS
    if not path.is_file():
        hint = " (the shipped weights are missing: reinstall busseg)" if checkpoint is None else ""
        raise MissingFile(f"{path}: checkpoint not found{hint}")
    if path.suffix == ".safetensors":
        state, meta = _read_safetensors(path)
    else:
        ckpt = _read_pt(path)
        state, meta = ckpt["model_state"], checkpoint_meta(ckpt)
    check_finite(state, path)
    state = {k: v for k, v in state.items() if not k.startswith("aux.")}  # removed heads
    net = build_from_config(meta.get("model", {}))
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise InvalidInput(f"{path}: weights do not fit the model its config describes ({first})"
                           ) from None
    net.eval().to(device)
    if device != "cuda":
        net = net.to(memory_format=torch.channels_last)
    return LoadedModel(net, int(meta.get("size", DEFAULTS.size)), meta.get("name", path.stem), meta,
                       settings_for(path, meta))


def checkpoint_dict(path: Path | str) -> dict:
    """A `.pt` checkpoint's dict, or the same keys (weights, the config's model and size, epoch,
    metrics, provenance) of `.safetensors` weights."""
    path = Path(path)
    if not path.is_file():
        raise MissingFile(f"{path}: checkpoint not found")
    if path.suffix != ".safetensors":
        return _read_pt(path)
    state, meta = _read_safetensors(path)
    if "model" not in meta:
        raise InvalidInput(f"{path}: carries no busseg model config")
    return {"model_state": state,
            "config": {"model": meta["model"], "size": meta.get("size", DEFAULTS.size)},
            "epoch": meta.get("epoch"), "metrics": meta.get("metrics", {}),
            "provenance": meta.get("provenance")}


RUN_FILES = ("*.npy", "history.csv", "config.yaml", "splits.json", "split_used.json",
             "tune.json", "train_summary.json", "precision.json", "sources.json", SETTINGS_FILE)


def run_dir_of(weights: Path | str) -> Path:
    """The folder of training logs that ships beside a safetensors file."""
    weights = Path(weights)
    return weights.with_name(weights.stem + "_run")


def export_safetensors(checkpoint: Path | str, out: Path | str, name: str | None = None,
                       extra: dict | None = None, overwrite: bool = False) -> Path:
    """Write a checkpoint's weights as safetensors with its model config in the metadata, and
    copy the run's logs (curves, config, split, tuning) into `<out stem>_run/` beside it."""
    import shutil

    from safetensors.torch import save_file

    from busseg.safety import claim

    claim([out, run_dir_of(out)], overwrite)
    name = name or Path(out).stem
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    cfg = ckpt["config"]
    settings = settings_for(Path(checkpoint), checkpoint_meta(ckpt))
    meta = {"name": name, "model": cfg["model"], "size": cfg["size"],
            "threshold": settings.threshold, "postprocess": settings.to_dict(),
            "epoch": ckpt.get("epoch"), "metrics": ckpt.get("metrics", {}),
            "provenance": ckpt.get("provenance"),
            **({"presence_fit": ckpt["presence_fit"]} if "presence_fit" in ckpt else {}),
            **(extra or {})}
    state = {k: v.contiguous() for k, v in ckpt["model_state"].items()}
    save_file(state, str(out), metadata={"busseg": json.dumps(clean(meta), allow_nan=False)})
    logs = run_dir_of(out)
    logs.mkdir(parents=True, exist_ok=True)
    for pattern in RUN_FILES:
        for f in Path(checkpoint).parent.glob(pattern):
            shutil.copy(f, logs / f.name)
    return Path(out)
