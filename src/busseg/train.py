"""`busseg train`: the run folder, its data and the trainer (`busseg.trainer`) under torchrun or
alone."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from busseg.config import TrainConfig, config_to_dict
from busseg.data.dataset import TensorSplit
from busseg.data.sources import load_sources, record, source_shares
from busseg.distributed import DistInfo, cleanup
from busseg.distributed import setup as dist_setup
from busseg.errors import Unavailable
from busseg.jsonio import write_json
from busseg.metrics import LOG_KEYS
from busseg.provenance import provenance
from busseg.safety import claim
from busseg.trainer import Trainer

log = logging.getLogger("busseg.train")


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise Unavailable("--device cuda asked for, but no CUDA device is available")
    return torch.device(name)


def limit_split(split: TensorSplit, n: int, seed: int) -> TensorSplit:
    """A seeded random subset of `n` images (all when the split is smaller)."""
    if n >= len(split):
        return split
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed)).tolist()
    return split.subset(sorted(order[:n]))


RUN_OUTPUTS = ("unet_final.pt", "last.pt", "history.csv", "train_summary.json", "config.yaml",
               "sources.json",
               "splits.json", "split_used.json", "precision.json", "postprocess.json",
               "tune.json") + tuple(f"{p}_{k}.npy" for p in ("train", "val") for k in LOG_KEYS)


def train(cfg: TrainConfig, resume: bool = False,
          splits: tuple[TensorSplit, TensorSplit] | None = None, overwrite: bool = False) -> dict:
    """Train a model as `cfg` says; return a summary (best val Dice, epoch, paths, time).

    `splits` gives the (train, val) images directly (cross-validation folds); otherwise they are
    read from `cfg.data`/train and `cfg.data`/val. Under torchrun (WORLD_SIZE > 1) each rank
    trains on its share of every global batch of `batch_size * world` images with
    DistributedDataParallel; rank 0 alone logs and saves. A folder holding an earlier run is
    refused unless `resume` (continue it) or `overwrite` (remove its files first).
    """
    if not resume and int(os.environ.get("RANK", "0")) == 0:
        claim([Path(cfg.out) / f for f in RUN_OUTPUTS], overwrite, "--resume or --overwrite")
    info, device = dist_setup(resolve_device(cfg.device))
    try:
        return _train(cfg, resume, info, device, splits)
    finally:
        cleanup(info)


def _train(cfg: TrainConfig, resume: bool, info: DistInfo, device: torch.device,
           splits: tuple[TensorSplit, TensorSplit] | None = None) -> dict:
    if info.main:
        _warn_about_schedule(cfg)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    train_set, val_set = _load_data(cfg, info, device, splits)
    prov = provenance(config_to_dict(cfg), {"train": train_set.names, "val": val_set.names})
    if device.type == "cuda":  # data and augmentation live on the GPU
        train_set, val_set = train_set.to(device), val_set.to(device)
    trainer = Trainer(cfg, info, device, train_set, val_set, prov, resume=resume)
    if resume:
        trainer.resume()
    summary = trainer.run()
    if info.main:
        write_json(Path(cfg.out) / "train_summary.json", summary)
    return summary


def _warn_about_schedule(cfg: TrainConfig) -> None:
    if cfg.warmup_epochs >= cfg.epochs:
        log.warning("warning: %d epochs do not get past the %d warm-up epochs; the learning "
                    "rate never reaches its peak", cfg.epochs, cfg.warmup_epochs)


def _load_data(cfg: TrainConfig, info: DistInfo, device: torch.device,
               splits: tuple[TensorSplit, TensorSplit] | None) -> tuple[TensorSplit, TensorSplit]:
    """The (train, val) images, limited as the config says; rank 0 writes the run folder's
    config.yaml, splits.json (a copy) and split_used.json."""
    out, t_load = Path(cfg.out), time.time()
    if splits is None:
        train_set, val_set = load_sources(cfg.data, cfg.size)
    else:
        train_set, val_set = splits
    if cfg.limit > 0:
        train_set = limit_split(train_set, cfg.limit, cfg.seed)
    if info.main:
        out.mkdir(parents=True, exist_ok=True)
        log.info("loaded %d train / %d val images in %.1fs on %s (world %d)", len(train_set),
                 len(val_set), time.time() - t_load, device, info.world)
        (out / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        single = Path(cfg.data) if isinstance(cfg.data, str) else None
        if splits is None and single is not None and (single / "splits.json").is_file():
            shutil.copy(single / "splits.json", out / "splits.json")
        if splits is None and not isinstance(cfg.data, str):
            write_json(out / "sources.json", record(
                cfg.data, train_set, val_set, source_shares(train_set.sources, cfg.sources)))
        (out / "split_used.json").write_text(json.dumps(
            {"train": train_set.names, "val": val_set.names}, indent=1))
    return train_set, val_set
