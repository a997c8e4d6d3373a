"""The training loop as a small trainer: `Trainer.run()` reads like the recipe.

    for epoch in range(start, epochs):
        row = train_epoch(epoch)          # sampled, augmented batches; one optimiser step each
        val, chosen = validate_epoch()    # val loss / accuracy / lesion Dice (EMA or raw weights)
        stopped = on_epoch_end(...)       # best / last checkpoint, logs, early stopping

`TrainState` holds the run's progress; `Trainer.state_dict()` / `load_state_dict()` are the one
list of what `last.pt` keeps for `--resume`.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from busseg.checkpoint import build_from_config, save_checkpoint
from busseg.config import TrainConfig, config_to_dict
from busseg.cudagraph import can_graph, graph_training_forward
from busseg.data.augment import augment_batch
from busseg.data.dataset import TensorSplit
from busseg.distributed import (
    DistInfo,
    all_gather_objects,
    all_reduce_sum,
    barrier,
    broadcast_flag,
)
from busseg.errors import InvalidInput, MissingFile
from busseg.jsonio import write_csv, write_json
from busseg.losses import get_loss
from busseg.metrics import LOG_KEYS, batch_dice
from busseg.precision import autocast, choose_precision
from busseg.stepcompile import choose_compile

log = logging.getLogger("busseg.train")
LAST_EVERY_S = 30.0  # `last.pt` at most this often (and at the run's end): a GPU epoch is < 1 s


def sample_weights(labels: list[str], normal_share: float) -> torch.Tensor:
    """Per-sample weights giving benign and malignant (and unknown) equal total weight, and
    normal images `normal_share` of the total (0 leaves them out)."""
    lesion = [c for c in sorted(set(labels)) if c != "normal"]
    share = {c: (1.0 - (normal_share if "normal" in labels else 0.0)) / max(len(lesion), 1)
             for c in lesion}
    share["normal"] = normal_share
    counts = {c: labels.count(c) for c in set(labels)}
    return torch.tensor([share[c] / counts[c] for c in labels], dtype=torch.double)


def source_weights(split: TensorSplit, normal_share: float,
                   shares: dict[str, float]) -> torch.Tensor:
    """`sample_weights` within each source, scaled so that each source gets its share of the
    draws (`data.sources.source_shares`); one source: `sample_weights` itself."""
    if not split.sources:
        if shares:
            raise InvalidInput("sources: shares need several data folders (data: [a, b])")
        return sample_weights(split.labels, normal_share)
    from busseg.data.sources import source_shares

    share = source_shares(split.sources, shares)
    weights = torch.zeros(len(split), dtype=torch.double)
    for name, part in share.items():
        idx = [i for i, s in enumerate(split.sources) if s == name]
        inner = sample_weights([split.labels[i] for i in idx], normal_share)
        weights[idx] = inner / inner.sum() * part
    return weights


def lr_lambda(cfg: TrainConfig, steps_per_epoch: int):
    """Step-wise multiplier: linear warm-up, then constant or cosine decay to 1% over
    `schedule_epochs` (default `epochs`; longer: the run stops before the schedule ends)."""
    warm = cfg.warmup_epochs * steps_per_epoch
    total = max((cfg.schedule_epochs or cfg.epochs) * steps_per_epoch, 1)

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if cfg.schedule == "cosine":
            t = (step - warm) / max(total - warm, 1)
            return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
        return 1.0

    return f


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """Adam or AdamW as the config says, with the fused kernel (one launch per step on a GPU;
    on a CPU about 5x faster than the multi-tensor one for the default model)."""
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[cfg.optimizer]
    return cls(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """Exponential moving average of parameters; buffers (BatchNorm statistics) are copied.
    Multi-tensor ops: a few kernels per step rather than one per tensor."""
    params = [p.detach() for p in model.parameters()]
    torch._foreach_lerp_(list(ema.parameters()), params, 1.0 - decay)
    buffers = list(ema.buffers())
    if buffers:  # none without BatchNorm (`model.norm: instance`)
        torch._foreach_copy_(buffers, list(model.buffers()))


def batch_scores(pred: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel accuracy of a batch (a 0-d tensor) and the per-image hard Dice of boolean
    predictions."""
    truth = y > 0.5
    return (pred == truth).float().mean(), batch_dice(pred, truth)


@dataclass
class Totals:
    """Running sums of one epoch: image-weighted loss and accuracy, Dice over scored images."""

    loss: float = 0.0
    acc: float = 0.0
    dice: float = 0.0
    images: float = 0.0
    dice_images: float = 0.0

    def reduced(self, info: DistInfo, device: torch.device) -> Totals:
        """The sums over all ranks."""
        return Totals(*all_reduce_sum(list(asdict(self).values()), info, device))

    def means(self) -> dict[str, float]:
        return {"loss": self.loss / self.images, "acc": self.acc / self.images,
                "dice": self.dice / max(self.dice_images, 1.0)}


@torch.no_grad()
def validate(model: nn.Module, split: TensorSplit, cfg: TrainConfig, device: torch.device,
             batch_size: int = 16, info: DistInfo | None = None,
             dtype: torch.dtype | None = None) -> dict[str, float]:
    """Mean loss (the training's segmentation loss), pixel accuracy and per-image Dice at the
    training size.

    Dice is averaged over lesion images (benign, malignant, unknown) when the split has any, so
    model selection tracks the lesion Dice that evaluation reports; normal images still count in
    loss and accuracy. Under DDP each rank scores a shard and the sums are reduced.
    """
    info = info or DistInfo()
    model.eval()
    t = Totals()
    has_lesion = any(lab != "normal" for lab in split.labels)
    mine = torch.arange(info.rank, len(split), info.world)
    for start in range(0, len(mine), batch_size):
        idx = mine[start:start + batch_size]
        x, y = split.batch(idx, device)
        x = x.contiguous(memory_format=torch.channels_last)
        with autocast(dtype, device):
            out = model(x)
        logits = out.logits.float()
        acc, dice = batch_scores(logits >= 0, y)
        keep = torch.tensor([(split.labels[i] != "normal") or not has_lesion for i in idx])
        t.loss += float(get_loss(cfg.loss)(out, y)) * len(idx)
        t.acc += float(acc) * len(idx)
        t.dice += float(dice.cpu()[keep].sum())
        t.dice_images += float(keep.sum())
        t.images += len(idx)
    return t.reduced(info, device).means()


def init_weights(model: nn.Module, source: str) -> None:
    """Load the weights of `source` ('default': the shipped model, or a checkpoint path) into
    `model`; the two must have the same architecture."""
    from busseg.checkpoint import load_model

    loaded = load_model(None if source == "default" else source)
    try:
        model.load_state_dict(loaded.net.state_dict())
    except RuntimeError as exc:
        raise InvalidInput(f"init {source}: its weights do not fit this config's model "
                           f"({str(exc).splitlines()[0]}); use its model settings") from None


def save_logs(out: Path, history: list[dict]) -> None:
    """Per-epoch `{train,val}_{loss,acc,dice}.npy` and `history.csv`."""
    for phase in ("train", "val"):
        for key in LOG_KEYS:
            np.save(out / f"{phase}_{key}.npy", np.array([h[f"{phase}_{key}"] for h in history]))
    write_csv(out / "history.csv", history)


def weight_checksum(model: nn.Module) -> list[float]:
    """(sum, sum of squares) of all parameters: equal on every rank when DDP keeps them in sync."""
    with torch.no_grad():
        flat = torch.cat([p.detach().double().flatten().cpu() for p in model.parameters()])
    return [float(flat.sum()), float(flat.pow(2).sum())]


def plain_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """CPU state dict with plain BatchNorm keys (SyncBatchNorm shares them)."""
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


@dataclass
class TrainState:
    """A run's progress: what `--resume` needs besides the weights, optimiser and generators."""

    epoch: int = -1  # the last finished epoch, 0-based
    best: float = -1.0
    best_epoch: int = -1
    bad: int = 0  # epochs since val Dice last improved
    elapsed: float = 0.0
    stopped: bool = False
    history: list[dict] = field(default_factory=list)


class Trainer:
    """One training run of `cfg` on (train_set, val_set) on `device`, writing into `out`."""

    def __init__(self, cfg: TrainConfig, info: DistInfo, device: torch.device,
                 train_set: TensorSplit, val_set: TensorSplit, provenance: dict,
                 resume: bool = False) -> None:
        self.cfg, self.info, self.device = cfg, info, device
        self.train_set, self.val_set, self.provenance = train_set, val_set, provenance
        self.out = Path(cfg.out)
        if info.main:
            self.out.mkdir(parents=True, exist_ok=True)
        self.model = self._build_model()
        self.ema = copy.deepcopy(self.model) if cfg.ema > 0 else None
        self.dtype, self.precision = self._choose_precision(resume)
        self.net: nn.Module = self.model
        if info.enabled:
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None)
        self.opt = make_optimizer(cfg, self.model)
        self.loss_fn = get_loss(cfg.loss)
        self.global_batch = cfg.batch_size * info.world
        self.steps_per_epoch = (cfg.epoch_steps
                                or math.ceil(len(train_set) / self.global_batch))
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt,
                                                       lr_lambda(cfg, self.steps_per_epoch))
        # the sampling generator is the same on every rank (one global order per epoch), the
        # augmentation generator differs per rank
        self.gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
        self.aug_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1 + 1000 * info.rank)
        self.weights = source_weights(train_set, cfg.normal_share, cfg.sources)
        self.malignant = torch.tensor([lab == "malignant" for lab in train_set.labels])
        self.state = TrainState()
        self.last_path, self.best_path = self.out / "last.pt", self.out / "unet_final.pt"
        # the training forward becomes a CUDA graph at the first batch (after any resume)
        self.graph_pending = can_graph(device, info.enabled)
        self.graphed = False
        self.saved_at = time.time()  # when `last.pt` was last written
        self.step_net, self.precision["compile"] = self._choose_compile(resume)
        if info.main:
            write_json(self.out / "precision.json", self.precision)

    def _build_model(self) -> nn.Module:
        cfg = self.cfg
        model = build_from_config(config_to_dict(cfg.model), fresh=True)
        if cfg.init:
            init_weights(model, cfg.init)
        model = model.to(self.device)
        if cfg.sync_bn and self.info.enabled:
            if self.device.type != "cuda":
                raise InvalidInput("sync_bn needs CUDA devices (PyTorch's SyncBatchNorm has no "
                                   "CPU path)")
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return model.to(memory_format=torch.channels_last)

    def _choose_precision(self, resume: bool) -> tuple[torch.dtype | None, dict]:
        """bf16 or fp32 as `amp` says (a resumed 'auto' run keeps its recorded choice); every
        rank takes rank 0's choice, since each rank's probe may time differently."""
        recorded = self.out / "precision.json"
        if resume and self.cfg.amp == "auto" and recorded.is_file():
            dtype, precision = choose_precision(json.loads(recorded.read_text())["precision"],
                                                self.device)
            precision["reason"] = "resumed run: " + precision["reason"]
        else:
            dtype, precision = choose_precision(self.cfg.amp, self.device, self.model,
                                                self.cfg.size)
        if broadcast_flag(dtype is not None, self.info, self.device) != (dtype is not None):
            dtype = None if dtype is not None else torch.bfloat16
        if self.info.main:  # precision.json is written once the compile choice is made too
            log.info("precision: %s (%s)", precision["precision"], precision["reason"])
        return dtype, precision

    def _choose_compile(self, resume: bool) -> tuple[nn.Module, dict]:
        """The module that runs training steps: `self.net` or its `torch.compile` as `compile`
        says (a resumed 'auto' run keeps its recorded choice); every rank takes rank 0's."""
        cfg, recorded = self.cfg, self.out / "precision.json"
        setting = cfg.compile
        if resume and setting == "auto" and recorded.is_file():
            setting = bool(json.loads(recorded.read_text()).get("compile", {}).get("compiled"))
        gen = torch.Generator().manual_seed(0)  # the global RNG stays untouched
        x = torch.rand(cfg.batch_size, 1, cfg.size, cfg.size, generator=gen).to(self.device)
        x = x.contiguous(memory_format=torch.channels_last)
        net, info = choose_compile(setting, self.net, x, self.dtype,
                                   self.steps_per_epoch * cfg.epochs)
        if broadcast_flag(info["compiled"], self.info, self.device) != info["compiled"]:
            net, info = choose_compile(not info["compiled"], self.net, x, self.dtype, 0)
            info["reason"] = "rank 0's choice"
        if resume and cfg.compile == "auto":
            info = {**info, "setting": "auto", "reason": "resumed run: the recorded choice"}
        if info["compiled"]:
            self.graph_pending = False  # a compiled step is not captured as a CUDA graph
        if self.info.main:
            log.info("compile: %s (%s)", info["compiled"], info["reason"])
        return net, info

    def state_dict(self) -> dict:
        """Everything `last.pt` keeps: weights, optimiser, schedule, generators, progress."""
        return {
            "model_state": plain_state(self.model), "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "ema_state": plain_state(self.ema) if self.ema is not None else None,
            "gen_state": self.gen.get_state(),
            "aug_gen_states": all_gather_objects(self.aug_gen.get_state().cpu(), self.info),
            "torch_rng": torch.get_rng_state(), "config": config_to_dict(self.cfg),
            **asdict(self.state),
        }

    def load_state_dict(self, st: dict) -> None:
        """The inverse of `state_dict` (this rank's augmentation generator included)."""
        self.model.load_state_dict(st["model_state"])
        self.opt.load_state_dict(st["optimizer"])
        self.sched.load_state_dict(st["scheduler"])
        if self.ema is not None and st.get("ema_state") is not None:
            self.ema.load_state_dict(st["ema_state"])
        self.gen.set_state(st["gen_state"])
        aug_states = st["aug_gen_states"]
        if self.info.rank < len(aug_states):
            self.aug_gen.set_state(aug_states[self.info.rank].to(self.aug_gen.get_state().device))
        torch.set_rng_state(st["torch_rng"])
        names = TrainState.__dataclass_fields__
        self.state = TrainState(**{k: st[k] for k in names if k in st})

    def resume(self) -> None:
        """Continue from `last.pt` (build the trainer with `resume=True`: same precision)."""
        if not self.last_path.is_file():
            raise MissingFile(f"{self.last_path}: nothing to resume from")
        self.load_state_dict(torch.load(self.last_path, map_location="cpu", weights_only=True))
        if self.info.main:
            log.info("resumed from %s at epoch %d", self.last_path, self.state.epoch + 2)

    def train_epoch(self, epoch: int) -> dict:
        """One pass of sampled, augmented batches; the epoch's train loss / accuracy / Dice."""
        cfg, info, ts = self.cfg, self.info, self.train_set
        self.net.train()
        order = torch.multinomial(self.weights, self.steps_per_epoch * self.global_batch,
                                  replacement=True, generator=self.gen)
        sums = torch.zeros(3, device=self.device)  # loss, accuracy, Dice: no sync per step
        side = cfg.size
        bar = tqdm(range(self.steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   disable=None if info.main else True, leave=False, unit="batch")
        for step in bar:
            start = step * self.global_batch + info.rank * cfg.batch_size
            idx = order[start:start + cfg.batch_size]
            x, y = ts.batch(idx.to(ts.images.device), self.device)
            x, y = augment_batch(x, y, self.malignant[idx], cfg.augment, self.aug_gen)
            x = x.contiguous(memory_format=torch.channels_last)
            if self.graph_pending and side == cfg.size:  # a graph is captured at one shape
                self.graph_pending = False
                self.graphed = graph_training_forward(self.model, x, self.dtype)
            loss = self._step(x, y, sums)
            if not bar.disable:
                bar.set_postfix(loss=f"{float(loss):.3f}")
        n = float(self.steps_per_epoch * cfg.batch_size)
        totals = Totals(*sums.tolist(), images=n, dice_images=n)
        means = totals.reduced(info, self.device).means()
        return {"epoch": epoch + 1, "train_size": side,
                **{f"train_{k}": v for k, v in means.items()}}

    def _step(self, x: torch.Tensor, y: torch.Tensor, sums: torch.Tensor) -> torch.Tensor:
        """One optimiser step on a batch; its summed loss, accuracy and Dice are added to
        `sums`; the batch's loss."""
        with autocast(self.dtype, self.device):
            out = self.step_net(x)
        loss, logits = self.loss_fn(out, y), out.logits
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()
        if self.ema is not None:
            ema_update(self.ema, self.model, self.cfg.ema)
        with torch.no_grad():
            acc, dice = batch_scores(logits >= 0, y)  # logit >= 0 <=> sigmoid >= 0.5
            n = len(x)
            sums += torch.stack([loss.detach().float() * n, acc * n, dice.sum().float()])
        return loss.detach()

    def validate_epoch(self) -> tuple[dict, nn.Module, dict]:
        """(val figures, the weights they belong to, extra log columns). With EMA, `select:
        best` keeps whichever of EMA and raw weights scores better (EMA lags early in
        training); `select: last` always takes the EMA weights."""
        args = (self.val_set, self.cfg, self.device)
        val = validate(self.model, *args, info=self.info, dtype=self.dtype)
        if self.ema is None:
            return val, self.model, {}
        val_ema = validate(self.ema, *args, info=self.info, dtype=self.dtype)
        extra = {"val_dice_raw": val["dice"], "val_dice_ema": val_ema["dice"]}
        if val_ema["dice"] >= val["dice"] or self.cfg.select == "last":
            return val_ema, self.ema, extra
        return val, self.model, extra

    def on_epoch_end(self, row: dict, val: dict, chosen: nn.Module, t0: float) -> None:
        """Log the epoch, keep the best (or last) weights, checkpoint, decide early stopping."""
        cfg, st, epoch = self.cfg, self.state, row["epoch"] - 1
        row.update({f"val_{k}": v for k, v in val.items()})
        row["lr"] = self.opt.param_groups[0]["lr"]
        row["time_s"] = time.time() - t0
        st.history.append(row)
        # select 'last' keeps the final (EMA) weights: val only measures, never chooses
        improved = val["dice"] > st.best or cfg.select == "last"
        if improved:
            st.best, st.best_epoch, st.bad = val["dice"], epoch + 1, 0
        else:
            st.bad += 1
        st.stopped = broadcast_flag(cfg.select == "best" and st.bad >= cfg.patience, self.info,
                                    self.device)
        st.epoch, st.elapsed = epoch, time.time() - t0
        if self.info.main:
            if improved:
                self._save_best(chosen, val, epoch)
            log.info(f"epoch {epoch + 1:>3}  train loss {row['train_loss']:.4f} dice "
                     f"{row['train_dice']:.4f}  val loss {val['loss']:.4f} dice "
                     f"{val['dice']:.4f}{' *' if improved else ''}  {row['time_s']:.0f}s")
            save_logs(self.out, st.history)
        due = st.stopped or epoch + 1 >= cfg.epochs or time.time() - self.saved_at >= LAST_EVERY_S
        if broadcast_flag(due, self.info, self.device):
            state = self.state_dict()  # every rank joins the gather inside
            if self.info.main:
                save_checkpoint(self.last_path, state)
            self.saved_at = time.time()
        barrier(self.info)

    def _save_best(self, chosen: nn.Module, val: dict, epoch: int) -> None:
        save_checkpoint(self.best_path, {
            "model_state": plain_state(chosen), "config": config_to_dict(self.cfg),
            "epoch": epoch + 1, "metrics": {f"val_{k}": v for k, v in val.items()},
            "threshold": 0.5, "ema": chosen is self.ema,
            "provenance": self.provenance,
        })

    def run(self) -> dict:
        """Train until the last epoch or early stopping; the run's summary."""
        t0 = time.time() - self.state.elapsed
        for epoch in range(self.state.epoch + 1, self.cfg.epochs):
            row = self.train_epoch(epoch)
            val, chosen, extra = self.validate_epoch()
            row.update(extra)
            self.on_epoch_end(row, val, chosen, t0)
            if self.state.stopped:
                if self.info.main:
                    log.info("early stop: val Dice has not improved for %d epochs",
                             self.cfg.patience)
                break
        return self.summary(time.time() - t0)

    def summary(self, seconds: float) -> dict:
        st = self.state
        return {"best_val_dice": st.best, "best_epoch": st.best_epoch,
                "epochs_run": len(st.history),
                "optimizer_steps": len(st.history) * self.steps_per_epoch,
                "train_time_s": seconds, "checkpoint": str(self.best_path),
                "early_stopped": st.stopped,
                "precision": self.precision["precision"], "device": str(self.device),
                "cuda_graph": self.graphed,
                "world_size": self.info.world,
                "rank_weight_checksums": all_gather_objects(weight_checksum(self.model),
                                                            self.info)}
