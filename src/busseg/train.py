"""Training: in-memory data, batched augmentation, BCE + Dice, early stopping on val Dice."""

from __future__ import annotations

import copy
import csv
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn
from tqdm import tqdm

from busseg.checkpoint import build_from_config, save_checkpoint
from busseg.config import TrainConfig, config_to_dict
from busseg.data.augment import augment_batch
from busseg.data.dataset import TensorSplit, load_split
from busseg.distributed import (
    DistInfo,
    all_gather_objects,
    all_reduce_sum,
    barrier,
    broadcast_flag,
    cleanup,
)
from busseg.distributed import setup as dist_setup
from busseg.losses import bce_dice_loss, deep_supervision_loss, presence_loss
from busseg.metrics import batch_dice
from busseg.models.unet import split_output
from busseg.precision import autocast, choose_precision
from busseg.provenance import provenance
from busseg.safety import claim

log = logging.getLogger("busseg.train")
LOG_KEYS = ("loss", "acc", "dice")


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda asked for, but no CUDA device is available")
    return torch.device(name)


def sample_weights(labels: list[str], normal_share: float) -> torch.Tensor:
    """Per-sample weights giving benign and malignant (and unknown) equal total weight, and
    normal images `normal_share` of the total (0 leaves them out)."""
    lesion = [c for c in sorted(set(labels)) if c != "normal"]
    share = {c: (1.0 - (normal_share if "normal" in labels else 0.0)) / max(len(lesion), 1)
             for c in lesion}
    share["normal"] = normal_share
    counts = {c: labels.count(c) for c in set(labels)}
    return torch.tensor([share[c] / counts[c] for c in labels], dtype=torch.double)


def lr_lambda(cfg: TrainConfig, steps_per_epoch: int):
    """Step-wise multiplier: linear warm-up, then constant or cosine decay to 1%."""
    warm = cfg.warmup_epochs * steps_per_epoch
    total = max(cfg.epochs * steps_per_epoch, 1)

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if cfg.schedule == "cosine":
            t = (step - warm) / max(total - warm, 1)
            return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
        return 1.0

    return f


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """Adam or AdamW as the config says."""
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[cfg.optimizer]
    return cls(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """Exponential moving average of parameters; buffers (BatchNorm statistics) are copied."""
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach(), 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


def training_loss(outputs, y: torch.Tensor, presence_weight: float):
    """BCE + Dice (with deep supervision) plus, for models with a presence head, a weighted BCE
    on "this image holds a lesion" (taken from the augmented mask). Returns (loss, seg logits)."""
    seg, presence = split_output(outputs)
    seg = [o.float() for o in seg] if isinstance(seg, list) else seg.float()
    loss = deep_supervision_loss(seg, y)
    if presence is not None and presence_weight > 0:
        loss = loss + presence_weight * presence_loss(presence.float(), y)
    return loss, (seg[0] if isinstance(seg, list) else seg)


def batch_scores(pred: torch.Tensor, y: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Pixel accuracy of a batch and the per-image hard Dice of boolean predictions."""
    truth = y > 0.5
    return float((pred == truth).float().mean()), batch_dice(pred, truth)


@torch.no_grad()
def validate(model: nn.Module, split: TensorSplit, cfg: TrainConfig, device: torch.device,
             batch_size: int = 16, info: DistInfo | None = None,
             dtype: torch.dtype | None = None) -> dict[str, float]:
    """Mean loss, pixel accuracy and per-image Dice at the training size.

    Dice is averaged over lesion images (benign, malignant, unknown) when the split has any, so
    model selection tracks the lesion Dice that evaluation reports; normal images still count in
    loss and accuracy. Under DDP each rank scores a shard and the sums are reduced.
    """
    info = info or DistInfo()
    model.eval()
    loss_sum = acc_sum = dice_sum = n_lesion = 0.0
    has_lesion = any(lab != "normal" for lab in split.labels)
    mine = torch.arange(info.rank, len(split), info.world)
    for start in range(0, len(mine), batch_size):
        idx = mine[start:start + batch_size]
        x, y = split.batch(idx, device)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(dtype, device):
            logits, _ = split_output(model(x))
        logits = logits.float()
        loss_sum += float(bce_dice_loss(logits, y)) * len(idx)
        acc, dice = batch_scores(torch.sigmoid(logits) >= cfg.threshold, y)
        acc_sum += acc * len(idx)
        keep = torch.tensor([(split.labels[i] != "normal") or not has_lesion for i in idx])
        dice_sum += float(dice.cpu()[keep].sum())
        n_lesion += float(keep.sum())
    loss_sum, acc_sum, dice_sum, n_lesion = all_reduce_sum(
        [loss_sum, acc_sum, dice_sum, n_lesion], info, device)
    n = len(split)
    return {"loss": loss_sum / n, "acc": acc_sum / n, "dice": dice_sum / max(n_lesion, 1.0)}


def limit_split(split: TensorSplit, n: int, seed: int) -> TensorSplit:
    """A seeded random subset of `n` images (all when the split is smaller)."""
    if n >= len(split):
        return split
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed)).tolist()
    return split.subset(sorted(order[:n]))


def init_weights(model: nn.Module, source: str) -> None:
    """Load the weights of `source` ('default': the shipped model, or a checkpoint path) into
    `model`; the two must have the same architecture."""
    from busseg.checkpoint import load_model

    loaded = load_model(None if source == "default" else source)
    try:
        model.load_state_dict(loaded.net.state_dict())
    except RuntimeError as exc:
        raise ValueError(f"init {source}: its weights do not fit this config's model "
                         f"({str(exc).splitlines()[0]}); use its model settings") from None


def _save_logs(out: Path, history: list[dict]) -> None:
    for phase in ("train", "val"):
        for key in LOG_KEYS:
            np.save(out / f"{phase}_{key}.npy", np.array([h[f"{phase}_{key}"] for h in history]))
    with open(out / "history.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)


RUN_OUTPUTS = ("unet_final.pt", "last.pt", "history.csv", "train_summary.json", "config.yaml",
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
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    if info.main and cfg.warmup_epochs >= cfg.epochs:
        log.warning("warning: %d epochs do not get past the %d warm-up epochs; the learning "
                    "rate never reaches its peak", cfg.epochs, cfg.warmup_epochs)
    if info.main and cfg.select == "best" and cfg.min_epochs > cfg.epochs:
        log.warning("warning: min_epochs %d > epochs %d: early stopping can never act",
                    cfg.min_epochs, cfg.epochs)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    out = Path(cfg.out)
    data = Path(cfg.data)
    t_load = time.time()
    if splits is None:
        train_set = load_split(data / "train", cfg.size)
        val_set = load_split(data / "val", cfg.size)
    else:
        train_set, val_set = splits
    if cfg.limit > 0:
        train_set = limit_split(train_set, cfg.limit, cfg.seed)
    if info.main:
        out.mkdir(parents=True, exist_ok=True)
        log.info("loaded %d train / %d val images in %.1fs on %s (world %d)", len(train_set),
                 len(val_set), time.time() - t_load, device, info.world)
        (out / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        if splits is None and (data / "splits.json").is_file():
            shutil.copy(data / "splits.json", out / "splits.json")
        (out / "split_used.json").write_text(json.dumps(
            {"train": train_set.names, "val": val_set.names}, indent=1))
    prov = provenance(config_to_dict(cfg), {"train": train_set.names, "val": val_set.names})
    if device.type == "cuda":  # data and augmentation live on the GPU
        train_set = TensorSplit(train_set.images.to(device), train_set.masks.to(device),
                                train_set.names, train_set.labels)
        val_set = TensorSplit(val_set.images.to(device), val_set.masks.to(device),
                              val_set.names, val_set.labels)

    model = build_from_config(config_to_dict(cfg.model))
    if cfg.init:
        init_weights(model, cfg.init)
    model = model.to(device)
    if cfg.sync_bn and info.enabled:
        if device.type != "cuda":
            raise ValueError("sync_bn needs CUDA devices (PyTorch's SyncBatchNorm has no CPU path)")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = copy.deepcopy(model) if cfg.ema > 0 else None
    recorded = out / "precision.json"
    if resume and cfg.amp == "auto" and recorded.is_file():  # a resumed run keeps its precision
        dtype, precision = choose_precision(json.loads(recorded.read_text())["precision"], device)
        precision["reason"] = "resumed run: " + precision["reason"]
    else:
        dtype, precision = choose_precision(cfg.amp, device, model, cfg.size)
    if broadcast_flag(dtype is not None, info, device) != (dtype is not None):
        # every rank trains in rank 0's precision (each rank's probe may time differently)
        dtype = None if dtype is not None else torch.bfloat16
    if info.main:
        log.info("precision: %s (%s)", precision["precision"], precision["reason"])
        (out / "precision.json").write_text(json.dumps(precision, indent=1))
    net: nn.Module = model
    if info.enabled:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    opt = make_optimizer(cfg, model)
    global_batch = cfg.batch_size * info.world
    steps_per_epoch = math.ceil(len(train_set) / global_batch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, steps_per_epoch))
    # the sampling generator is the same on every rank (one global order per epoch), the
    # augmentation generator differs per rank
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    aug_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1 + 1000 * info.rank)
    weights = sample_weights(train_set.labels, cfg.normal_share)
    malignant = torch.tensor([lab == "malignant" for lab in train_set.labels])
    history: list[dict] = []
    best, best_epoch, bad, start_epoch, elapsed = -1.0, -1, 0, 0, 0.0

    last_path, best_path = out / "last.pt", out / "unet_final.pt"
    if resume:
        if not last_path.is_file():
            raise FileNotFoundError(f"{last_path}: nothing to resume from")
        st = torch.load(last_path, map_location="cpu", weights_only=True)
        model.load_state_dict(st["model_state"])
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        if ema is not None and st.get("ema_state") is not None:
            ema.load_state_dict(st["ema_state"])
        gen.set_state(st["gen_state"])
        aug_states = st["aug_gen_states"]
        if info.rank < len(aug_states):
            aug_gen.set_state(aug_states[info.rank].to(aug_gen.get_state().device))
        torch.set_rng_state(st["torch_rng"])
        history, best, best_epoch, bad = st["history"], st["best"], st["best_epoch"], st["bad"]
        start_epoch, elapsed = st["epoch"] + 1, st.get("elapsed", 0.0)
        if info.main:
            log.info("resumed from %s at epoch %d", last_path, start_epoch + 1)

    t0 = time.time() - elapsed
    stopped = False
    for epoch in range(start_epoch, cfg.epochs):
        net.train()
        order = torch.multinomial(weights, steps_per_epoch * global_batch, replacement=True,
                                  generator=gen)
        sums = [0.0, 0.0, 0.0, 0.0]  # loss, acc, dice (image-weighted), images
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   disable=not (cfg.progress and info.main), leave=False, unit="batch")
        for step in bar:
            start = step * global_batch + info.rank * cfg.batch_size
            idx = order[start:start + cfg.batch_size]
            x, y = train_set.batch(idx.to(train_set.images.device), device)
            x, y = augment_batch(x, y, malignant[idx], cfg.augment, aug_gen)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(dtype, device):
                outputs = net(x)
            loss, logits = training_loss(outputs, y, cfg.presence_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if ema is not None:
                ema_update(ema, model, cfg.ema)
            with torch.no_grad():
                acc, dice = batch_scores(logits >= 0, y)  # logit >= 0 <=> sigmoid >= 0.5
                sums[0] += float(loss.detach()) * len(idx)
                sums[1] += acc * len(idx)
                sums[2] += float(dice.sum())
                sums[3] += len(idx)
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
        sums = all_reduce_sum(sums, info, device)
        row = {"epoch": epoch + 1, "train_loss": sums[0] / sums[3],
               "train_acc": sums[1] / sums[3], "train_dice": sums[2] / sums[3]}
        val = validate(model, val_set, cfg, device, info=info, dtype=dtype)
        eval_model = model
        if ema is not None:  # EMA lags early in training: keep whichever is better on val
            val_ema = validate(ema, val_set, cfg, device, info=info, dtype=dtype)
            row["val_dice_raw"], row["val_dice_ema"] = val["dice"], val_ema["dice"]
            if val_ema["dice"] >= val["dice"] or cfg.select == "last":
                val, eval_model = val_ema, ema
        row.update({f"val_{k}": v for k, v in val.items()})
        row["lr"] = opt.param_groups[0]["lr"]
        row["time_s"] = time.time() - t0
        history.append(row)
        # select 'last' keeps the final (EMA) weights: val only measures, never chooses
        improved = val["dice"] > best or cfg.select == "last"
        if improved:
            best, best_epoch, bad = val["dice"], epoch + 1, 0
        else:
            bad += 1
        stopped = broadcast_flag(cfg.select == "best" and bad >= cfg.patience
                                 and epoch + 1 >= cfg.min_epochs, info, device)
        if info.main:
            if improved:
                save_checkpoint(best_path, {
                    "model_state": plain_state(eval_model), "config": config_to_dict(cfg),
                    "epoch": epoch + 1, "metrics": {f"val_{k}": v for k, v in val.items()},
                    "threshold": cfg.threshold, "ema": eval_model is ema,
                    "provenance": prov,
                })
            log.info(f"epoch {epoch + 1:>3}  train loss {row['train_loss']:.4f} dice "
                     f"{row['train_dice']:.4f}  val loss {val['loss']:.4f} dice {val['dice']:.4f}"
                     f"{' *' if improved else ''}  {row['time_s']:.0f}s")
            _save_logs(out, history)
        aug_states = all_gather_objects(aug_gen.get_state().cpu(), info)
        if info.main:
            save_checkpoint(last_path, {
                "model_state": plain_state(model), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "ema_state": plain_state(ema) if ema is not None else None,
                "gen_state": gen.get_state(), "aug_gen_states": aug_states,
                "torch_rng": torch.get_rng_state(), "history": history, "best": best,
                "best_epoch": best_epoch, "bad": bad, "epoch": epoch,
                "elapsed": time.time() - t0, "config": config_to_dict(cfg), "stopped": stopped,
            })
        barrier(info)
        if stopped:
            if info.main:
                log.info("early stop: val Dice has not improved for %d epochs", cfg.patience)
            break
    summary = {"best_val_dice": best, "best_epoch": best_epoch, "epochs_run": len(history),
               "train_time_s": time.time() - t0, "checkpoint": str(best_path),
               "early_stopped": stopped, "precision": precision["precision"],
               "device": str(device), "world_size": info.world,
               "rank_weight_checksums": all_gather_objects(weight_checksum(model), info)}
    if info.main:
        (out / "train_summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def weight_checksum(model: nn.Module) -> list[float]:
    """(sum, sum of squares) of all parameters: equal on every rank when DDP keeps them in sync."""
    with torch.no_grad():
        flat = torch.cat([p.detach().double().flatten().cpu() for p in model.parameters()])
    return [float(flat.sum()), float(flat.pow(2).sum())]


def plain_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """CPU state dict with plain BatchNorm keys (SyncBatchNorm shares them)."""
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}
