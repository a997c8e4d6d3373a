"""Per-image segmentation metrics on binary masks, and their reductions.

Conventions for empty masks (a normal scan, or a prediction with no lesion):
- Dice and IoU are 1 when prediction and truth are both empty, 0 when only one is.
- precision is NaN when nothing is predicted, recall NaN when the truth is empty;
  specificity is NaN when the whole image is lesion. Means skip NaN.
- HD95 (pixels, MONAI, 95th percentile of symmetric surface distances) is 0 when both are
  empty and NaN when exactly one is; means skip NaN, so report `n_hd95` beside it.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from busseg.errors import InvalidInput

METRICS = ("dice", "iou", "accuracy", "precision", "recall", "specificity", "hd95")
LOG_KEYS = ("loss", "acc", "dice")  # per-epoch training logs: {train,val}_{key}.npy


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else math.nan


def hd95(pred: np.ndarray, truth: np.ndarray) -> float:
    """95th-percentile Hausdorff distance in pixels between two binary masks (MONAI)."""
    p, t = bool(pred.any()), bool(truth.any())
    if not p and not t:
        return 0.0
    if p != t:
        return math.nan
    from monai.metrics import compute_hausdorff_distance

    pt = torch.as_tensor(np.ascontiguousarray(pred), dtype=torch.float32)[None, None]
    tt = torch.as_tensor(np.ascontiguousarray(truth), dtype=torch.float32)[None, None]
    with warnings.catch_warnings():  # MONAI warns about its own deprecated internal argument
        warnings.simplefilter("ignore", FutureWarning)
        return float(compute_hausdorff_distance(pt, tt, percentile=95.0)[0, 0])


def confusion(pred: np.ndarray, truth: np.ndarray) -> tuple[int, int, int, int]:
    """(TP, FP, FN, TN) pixel counts of two boolean masks of equal shape."""
    if pred.shape != truth.shape:
        raise InvalidInput(f"prediction shape {pred.shape} != mask shape {truth.shape}")
    pred, truth = pred.astype(bool), truth.astype(bool)
    tp = int(np.count_nonzero(pred & truth))
    fp = int(np.count_nonzero(pred & ~truth))
    fn = int(np.count_nonzero(~pred & truth))
    return tp, fp, fn, pred.size - tp - fp - fn


def image_metrics(pred: np.ndarray, truth: np.ndarray, with_hd95: bool = True) -> dict[str, float]:
    """All per-image metrics of one binary prediction against its binary truth."""
    tp, fp, fn, tn = confusion(pred, truth)
    both_empty = tp + fp + fn == 0
    return {
        "dice": 1.0 if both_empty else 2 * tp / (2 * tp + fp + fn),
        "iou": 1.0 if both_empty else tp / (tp + fp + fn),
        "accuracy": (tp + tn) / (tp + fp + fn + tn),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "hd95": hd95(pred.astype(bool), truth.astype(bool)) if with_hd95 else math.nan,
    }


def batch_dice(pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Per-image hard Dice of N x 1 x H x W boolean tensors (1 when both are empty)."""
    p, t = pred.flatten(1).float(), truth.flatten(1).float()
    inter = (p * t).sum(1)
    denom = p.sum(1) + t.sum(1)
    return torch.where(denom > 0, 2 * inter / denom.clamp_min(1e-9), torch.ones_like(denom))


def nanmean(values: list[float]) -> float:
    """Mean ignoring NaN; NaN when nothing is left."""
    arr = np.asarray(values, dtype=float)
    arr = arr[~np.isnan(arr)]
    return float(arr.mean()) if arr.size else math.nan


def bootstrap_ci(
    values: list[float], n_boot: int = 2000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean (resampling images)."""
    arr = np.asarray(values, dtype=float)
    arr = arr[~np.isnan(arr)]
    if arr.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = arr[rng.integers(0, arr.size, size=(n_boot, arr.size))].mean(axis=1)
    return float(np.quantile(means, alpha / 2)), float(np.quantile(means, 1 - alpha / 2))


class Reliability:
    """Pixel-level calibration: observed lesion frequency per bin of predicted probability."""

    def __init__(self, bins: int = 10) -> None:
        self.edges = np.linspace(0, 1, bins + 1)
        self.count = np.zeros(bins)
        self.positive = np.zeros(bins)
        self.prob_sum = np.zeros(bins)

    def add(self, prob: np.ndarray, truth: np.ndarray) -> None:
        idx = np.clip(np.digitize(prob.ravel(), self.edges) - 1, 0, len(self.count) - 1)
        self.count += np.bincount(idx, minlength=len(self.count))
        self.positive += np.bincount(idx, weights=truth.ravel().astype(float),
                                     minlength=len(self.count))
        self.prob_sum += np.bincount(idx, weights=prob.ravel(), minlength=len(self.count))

    def ece(self) -> float:
        """Expected calibration error over pixels."""
        ok = self.count > 0
        gap = np.abs(self.positive[ok] / self.count[ok] - self.prob_sum[ok] / self.count[ok])
        return float((gap * self.count[ok]).sum() / self.count.sum())

    def to_dict(self) -> dict:
        """Plain lists (reliability.json); `from_dict` reads them back."""
        return {"edges": self.edges.tolist(), "count": self.count.tolist(),
                "positive": self.positive.tolist(), "prob_sum": self.prob_sum.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> Reliability:
        rel = cls(len(d["count"]))
        for key in ("edges", "count", "positive", "prob_sum"):
            setattr(rel, key, np.asarray(d[key], dtype=float))
        return rel


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (ties count half)."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))
