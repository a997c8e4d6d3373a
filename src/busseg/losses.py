"""BCE + soft Dice loss on logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - soft Dice per image (sum over pixels), averaged over the batch."""
    prob = torch.sigmoid(logits).flatten(1)
    target = target.flatten(1)
    inter = (prob * target).sum(1)
    denom = prob.sum(1) + target.sum(1)
    return (1.0 - (2.0 * inter + smooth) / (denom + smooth)).mean()


def bce_dice_loss(
    logits: torch.Tensor, target: torch.Tensor, bce_weight: float = 1.0, dice_weight: float = 1.0
) -> torch.Tensor:
    """Weighted sum of binary cross-entropy (on logits) and soft Dice loss."""
    target = target.to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, target)
    return bce_weight * bce + dice_weight * soft_dice_loss(logits, target)


def deep_supervision_loss(
    outputs: torch.Tensor | list[torch.Tensor], target: torch.Tensor, aux_weight: float = 0.4
) -> torch.Tensor:
    """Loss of the main output plus `aux_weight`-scaled losses of down-sampled auxiliary outputs."""
    if torch.is_tensor(outputs):
        return bce_dice_loss(outputs, target)
    main, *aux = outputs
    loss = bce_dice_loss(main, target)
    for a in aux:
        t = F.adaptive_avg_pool2d(target.to(a.dtype), a.shape[-2:])
        loss = loss + aux_weight * bce_dice_loss(a, (t >= 0.5).to(a.dtype)) / len(aux)
    return loss


def presence_loss(presence_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE of per-image presence logits (N) against "the mask holds any lesion pixel"."""
    has_lesion = (target.flatten(1).amax(1) > 0.5).to(presence_logits.dtype)
    return F.binary_cross_entropy_with_logits(presence_logits, has_lesion)
