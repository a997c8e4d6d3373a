"""Fitting the image-level lesion score on a trained segmentation model whose weights stay frozen.

The presence head (`model.presence_head`) is one linear layer on the network's `features(x)`
(for the U-Net, the average- and max-pooled bottleneck features). Fitted on the frozen network's
features by L2-regularised logistic regression over the lesion and normal training scans (each
also flipped, the two classes weighted equally), it leaves every segmentation output exactly as
it was and only adds the score that `busseg tune`'s presence rule reads.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from torch import nn

from busseg.data.dataset import TensorSplit
from busseg.errors import InvalidInput

DEFAULT_L2 = 1.0  # the lowest OOF normal FP of 1, 10, 100, 1000 (docs/lab/experiments.md)


@torch.inference_mode()
def pooled_features(net: nn.Module, images: torch.Tensor, batch: int = 32) -> torch.Tensor:
    """The head's inputs (`net.features`, float64) of uint8 images N x 1 x S x S, each image
    followed by its left-right flip."""
    own, flipped = [], []
    net.eval()
    for start in range(0, len(images), batch):
        x = images[start:start + batch].float().div_(255.0)
        for view, into in ((x, own), (x.flip(-1), flipped)):
            into.append(net.features(view.contiguous(memory_format=torch.channels_last)).double())
    # rows: image 0, its flip, image 1, its flip, ...
    return torch.stack([torch.cat(own), torch.cat(flipped)], dim=1).flatten(0, 1)


def fit_logistic(x: torch.Tensor, y: torch.Tensor, l2: float = DEFAULT_L2,
                 max_iter: int = 500) -> tuple[torch.Tensor, float]:
    """Weights and bias of an L2-regularised logistic regression on standardised `x`, both classes
    weighted equally, mapped back to the raw features (so it is one linear layer on them)."""
    if not l2 > 0:
        raise InvalidInput(f"the L2 strength must be positive, got {l2}")
    if not (y == 1).any() or not (y == 0).any():
        raise InvalidInput("fitting a lesion score needs lesion and normal scans; "
                           f"got {int((y == 1).sum())} lesion and {int((y == 0).sum())} normal")
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mean) / std
    weights = torch.where(y == 1, 0.5 / (y == 1).sum(), 0.5 / (y == 0).sum()).double()
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logits = z @ w + b
        bce = nn.functional.binary_cross_entropy_with_logits(logits, y.double(), reduction="none")
        loss = (weights * bce).sum() + 0.5 * l2 * w.pow(2).sum() / len(y)
        loss.backward()
        return loss

    opt.step(closure)
    w_raw = (w / std).detach()
    return w_raw, float((b - (w.detach() * mean / std).sum()).item())


def frozen_net(ckpt: dict) -> tuple[nn.Module, dict, dict]:
    """(network without a head in eval mode, its model config, its weights) of checkpoint dict
    `ckpt`; a head the checkpoint already has is left out."""
    from busseg.checkpoint import build_from_config, saved_model_config

    model_cfg = {**saved_model_config(ckpt["config"]["model"]), "presence_head": False}
    state = {k: v for k, v in ckpt["model_state"].items() if not k.startswith("presence.")}
    net = build_from_config(model_cfg)
    net.load_state_dict(state)
    return net.eval().to(memory_format=torch.channels_last), model_cfg, state


def fit_head_state(ckpt: dict, images: TensorSplit, l2: float = DEFAULT_L2) -> dict:
    """A copy of checkpoint dict `ckpt` with a presence head fitted on `images` (lesion when the
    mask is not empty) and `config.model.presence_head` set; `presence_fit` records the fit."""
    from busseg.metrics import auc

    net, model_cfg, state = frozen_net(ckpt)
    x = pooled_features(net, images.images)
    y = images.masks.flatten(1).any(1).repeat_interleave(2).long()
    w, b = fit_logistic(x, y, l2)
    train_auc = auc((x @ w + b).numpy(), y.numpy())
    head = {"presence.weight": w.float()[None, :], "presence.bias": torch.tensor([b]).float()}
    config = {**ckpt["config"], "model": {**model_cfg, "presence_head": True}}
    fit = {"method": "logistic regression on the frozen network's pooled bottleneck features",
           "l2": l2, "n_lesion": int(y.sum()) // 2, "n_normal": int((y == 0).sum()) // 2,
           "train_auc": train_auc}
    # settings chosen for the old score do not apply to the new one: `busseg tune` again
    kept = {k: v for k, v in ckpt.items() if k not in ("postprocess", "threshold")}
    return {**kept, "model_state": {**state, **head}, "config": config, "presence_fit": fit}


def _training_data(ckpt: dict, data: Path | str | list | None):
    """`data` where given, else the prepared folder(s) the model was trained on."""
    return ckpt["config"]["data"] if data is None else data


def fit_cv_heads(cv_dir: Path | str, out: Path | str, data: Path | str | list | None = None,
                 l2: float = DEFAULT_L2, overwrite: bool = False) -> list[dict]:
    """Fit a head on every fold model of `cv_dir` with that fold's training scans only, into a
    new cross-validation folder `out` (its `folds.json` and fold summaries copied) whose OOF
    predictions `busseg cv --gather-only` then gathers. `data` (one prepared folder or a list)
    defaults to each fold's own training data."""
    from busseg.checkpoint import checkpoint_dict, save_checkpoint
    from busseg.cv import load_pool, read_pool
    from busseg.safety import claim, inside

    cv_dir, out = Path(cv_dir), Path(out)
    if inside(out, cv_dir) or inside(cv_dir, out):
        raise InvalidInput(f"{out}: the fitted folds need a folder of their own, apart from "
                           f"{cv_dir}")
    doc = json.loads((cv_dir / "folds.json").read_text())
    claim([out], overwrite)
    fits = []
    for fold in range(doc["k"]):
        ckpt = checkpoint_dict(cv_dir / f"fold_{fold}" / "unet_final.pt")
        rows = [r for r in read_pool(_training_data(ckpt, data))
                if doc["folds"].get(r["name"], fold) != fold]
        fitted = fit_head_state(ckpt, load_pool(rows, ckpt["config"]["size"]), l2)
        (out / f"fold_{fold}").mkdir(parents=True)
        save_checkpoint(out / f"fold_{fold}" / "unet_final.pt", fitted)
        shutil.copy(cv_dir / f"fold_{fold}" / "train_summary.json", out / f"fold_{fold}")
        fits.append({"fold": fold, **fitted["presence_fit"]})
    shutil.copy(cv_dir / "folds.json", out / "folds.json")
    (out / "presence_fit.json").write_text(json.dumps(
        {"source": str(cv_dir), "folds": fits}, indent=1))
    return fits


def fit_presence_head(checkpoint: Path | str, out: Path | str,
                      data: Path | str | list | None = None, l2: float = DEFAULT_L2,
                      overwrite: bool = False) -> dict:
    """Fit a head on `checkpoint` (`.pt` or `.safetensors`) with the train + val scans of the
    prepared `data` (one folder or a list; default: the data the model was trained on) and write
    the result as a `.pt` checkpoint `out`; returns the fit's record."""
    from busseg.checkpoint import checkpoint_dict, save_checkpoint
    from busseg.cv import load_pool, read_pool
    from busseg.postprocess import SETTINGS_FILE
    from busseg.safety import claim

    out = Path(out)
    if out.suffix != ".pt":
        raise InvalidInput(f"{out}: the fitted model is written as a .pt checkpoint")
    if out.resolve() == Path(checkpoint).resolve():
        raise InvalidInput(f"{out}: write the fitted model to a new file, not over {checkpoint}")
    if (out.parent / SETTINGS_FILE).is_file():
        raise InvalidInput(f"{out.parent / SETTINGS_FILE}: holds settings chosen for another "
                           "model, which a .pt in that folder would load; write to a folder of "
                           "its own")
    ckpt = checkpoint_dict(checkpoint)
    claim([out], overwrite)
    pool = read_pool(_training_data(ckpt, data))
    fitted = fit_head_state(ckpt, load_pool(pool, ckpt["config"]["size"]), l2)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, fitted)
    return fitted["presence_fit"]
