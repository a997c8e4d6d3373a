"""Distillation: soft training targets from the mean probability map of teacher models.

The teachers (for example the five fold models of `busseg cv`) run once on the un-augmented
training images; each target is `weight` x their mean probability + (1 - weight) x the mask,
stored as uint8 in the split (`TensorSplit.targets`) and augmented with the image like a mask.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from busseg.data.dataset import TensorSplit
from busseg.inference import ensemble_forward

log = logging.getLogger("busseg")
BATCH = 16


def teacher_probabilities(split: TensorSplit, teachers: Sequence[Path | str], size: int,
                          device: str = "cpu") -> torch.Tensor:
    """The teachers' mean probability maps (N x 1 x S x S float) of the split's images."""
    forward, teacher_size, _ = ensemble_forward(list(teachers), device)
    if teacher_size != size:
        raise ValueError(f"the teachers take {teacher_size}x{teacher_size} images; this run "
                         f"trains at {size}x{size}")
    out = []
    for start in range(0, len(split), BATCH):
        x = split.images[start:start + BATCH].float().div_(255.0)
        out.append(forward(x)[0])
    return torch.cat(out)


def distill_targets(split: TensorSplit, teachers: Sequence[Path | str], weight: float,
                    size: int, device: str = "cpu") -> TensorSplit:
    """The split with soft targets: `weight` x the teachers' mean probability + (1 - weight)
    x the mask, as uint8 (255 = lesion)."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"distill weight must lie in [0, 1], got {weight}")
    missing = [str(t) for t in teachers if not Path(t).is_file()]
    if missing:
        raise FileNotFoundError(f"teacher checkpoint(s) not found: {', '.join(missing)}")
    prob = teacher_probabilities(split, teachers, size, device)
    soft = weight * prob + (1.0 - weight) * split.masks.float()
    log.info("distilling from %d teacher(s), weight %.2f", len(teachers), weight)
    targets = (soft.clamp(0, 1) * 255 + 0.5).to(torch.uint8)
    return TensorSplit(split.images, split.masks, split.names, split.labels, targets)
