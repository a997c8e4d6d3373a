"""Saving and loading weights: `.pt` checkpoints of plain types, shipped `.safetensors` weights."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from busseg.models import create_model

WEIGHTS_DIR = Path(__file__).parent / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "busseg_default.safetensors"


@dataclass
class LoadedModel:
    """A model in eval mode with what inference needs to know about it."""

    net: nn.Module
    size: int
    threshold: float
    name: str
    meta: dict
    min_area_frac: float = 0.0
    keep_largest: bool = False
    tta: bool = False
    min_confidence: float = 0.0

    def postprocess(self, prob, threshold: float | None = None):
        """The model's own post-processing (threshold, small-component removal) of a prob map."""
        from busseg.inference import postprocess

        thr = self.threshold if threshold is None else threshold
        return postprocess(prob, thr, self.min_area_frac, self.keep_largest, self.min_confidence)


def build_from_config(model_cfg: dict) -> nn.Module:
    """Create the network a saved model config describes."""
    cfg = dict(model_cfg)
    return create_model(cfg.pop("name", "unet"), **cfg)


def save_checkpoint(path: Path | str, state: dict[str, Any]) -> None:
    """Write atomically (temp file + rename) so an interrupted save never corrupts a run."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_model(checkpoint: Path | str | None = None, device: str = "cpu") -> LoadedModel:
    """Load a `.pt` checkpoint or `.safetensors` weights (None: the shipped default model)."""
    path = Path(checkpoint) if checkpoint is not None else DEFAULT_WEIGHTS
    if not path.is_file():
        hint = " (the shipped weights are missing: reinstall busseg)" if checkpoint is None else ""
        raise FileNotFoundError(f"{path}: checkpoint not found{hint}")
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads(fh.metadata().get("busseg", "{}"))
        state = load_file(str(path))
    else:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ValueError(f"{path}: not a readable busseg checkpoint ({exc})") from None
        if not isinstance(ckpt, dict) or "model_state" not in ckpt:
            raise ValueError(f"{path}: not a busseg checkpoint (no model_state)")
        state = ckpt["model_state"]
        cfg = ckpt.get("config", {})
        meta = {"model": cfg.get("model", {}), "size": cfg.get("size", 256),
                "threshold": ckpt.get("threshold", cfg.get("threshold", 0.5)),
                "epoch": ckpt.get("epoch"), "metrics": ckpt.get("metrics", {}),
                **ckpt.get("postprocess", {})}
    net = build_from_config(meta.get("model", {}))
    net.load_state_dict(state)
    net.eval().to(device)
    if device != "cuda":
        net = net.to(memory_format=torch.channels_last)
    return LoadedModel(net, int(meta.get("size", 256)), float(meta.get("threshold", 0.5)),
                       meta.get("name", path.stem), meta,
                       float(meta.get("min_area_frac", 0.0)), bool(meta.get("keep_largest", False)),
                       bool(meta.get("tta", False)), float(meta.get("min_confidence", 0.0)))


RUN_FILES = ("*.npy", "history.csv", "config.yaml", "splits.json", "tune.json",
             "train_summary.json")


def run_dir_of(weights: Path | str) -> Path:
    """The folder of training logs that ships beside a safetensors file."""
    weights = Path(weights)
    return weights.with_name(weights.stem + "_run")


def export_safetensors(checkpoint: Path | str, out: Path | str, name: str | None = None,
                       extra: dict | None = None) -> Path:
    """Write a checkpoint's weights as safetensors with its model config in the metadata, and
    copy the run's logs (curves, config, split, tuning) into `<out stem>_run/` beside it."""
    import shutil

    from safetensors.torch import save_file

    name = name or Path(out).stem
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    cfg = ckpt["config"]
    meta = {"name": name, "model": cfg["model"], "size": cfg["size"],
            "threshold": ckpt.get("threshold", cfg.get("threshold", 0.5)),
            "epoch": ckpt.get("epoch"), "metrics": ckpt.get("metrics", {}),
            **ckpt.get("postprocess", {}), **(extra or {})}
    state = {k: v.contiguous() for k, v in ckpt["model_state"].items()}
    save_file(state, str(out), metadata={"busseg": json.dumps(meta)})
    logs = run_dir_of(out)
    logs.mkdir(parents=True, exist_ok=True)
    for pattern in RUN_FILES:
        for f in Path(checkpoint).parent.glob(pattern):
            shutil.copy(f, logs / f.name)
    return Path(out)
