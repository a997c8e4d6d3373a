"""Segmentation losses on logits, in a registry the config's `loss` is checked against.

A loss maps (model output, target masks N x 1 x H x W in {0, 1}) to a scalar; adding one is a
function and a line in `LOSSES` (docs/explanation/architecture.md shows an example).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from busseg.errors import InvalidInput
from busseg.models.output import SegOutput

Loss = Callable[[SegOutput, torch.Tensor], torch.Tensor]


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - soft Dice per image (sum over pixels), averaged over the batch."""
    prob = torch.sigmoid(logits).flatten(1)
    target = target.flatten(1)
    inter = (prob * target).sum(1)
    denom = prob.sum(1) + target.sum(1)
    return (1.0 - (2.0 * inter + smooth) / (denom + smooth)).mean()


def bce_dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy (on logits) plus soft Dice loss, equally weighted."""
    target = target.to(logits.dtype)
    return F.binary_cross_entropy_with_logits(logits, target) + soft_dice_loss(logits, target)


def bce_dice_loss(out: SegOutput, target: torch.Tensor) -> torch.Tensor:
    """The seed's and the shipped recipe's loss: BCE + soft Dice of the segmentation logits."""
    return bce_dice(out.logits.float(), target)


LOSSES: dict[str, Loss] = {
    "bce_dice": bce_dice_loss,
}


def get_loss(name: str) -> Loss:
    """The loss called `name` in `LOSSES`."""
    if name not in LOSSES:
        raise InvalidInput(f"unknown loss {name!r}; known: {', '.join(sorted(LOSSES))}")
    return LOSSES[name]
