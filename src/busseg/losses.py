"""Segmentation losses on logits: BCE + soft Dice (the default), BCE + soft Tversky, focal + soft
Dice; `seg_loss(name)` picks one by its config name (`TrainConfig.loss`)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

SegLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
TVERSKY_ALPHA, TVERSKY_BETA = 0.3, 0.7  # false positives / false negatives (Salehi et al. 2017)
FOCAL_GAMMA = 2.0


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


def soft_tversky_loss(
    logits: torch.Tensor, target: torch.Tensor, alpha: float = TVERSKY_ALPHA,
    beta: float = TVERSKY_BETA, smooth: float = 1.0,
) -> torch.Tensor:
    """1 - soft Tversky index per image, averaged over the batch: missed lesion pixels weigh
    `beta`, false lesion pixels `alpha` (0.5 / 0.5 is the soft Dice with `smooth` halved)."""
    prob = torch.sigmoid(logits).flatten(1)
    target = target.flatten(1)
    tp = (prob * target).sum(1)
    fp = (prob * (1.0 - target)).sum(1)
    fn = ((1.0 - prob) * target).sum(1)
    return (1.0 - (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)).mean()


def bce_tversky_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy plus soft Tversky loss (missed lesion pixels cost more)."""
    target = target.to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, target)
    return bce + soft_tversky_loss(logits, target)


def focal_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MONAI's sigmoid focal loss (gamma 2: confident pixels count less) plus soft Dice loss."""
    from monai.losses import FocalLoss

    target = target.to(logits.dtype)
    focal = FocalLoss(gamma=FOCAL_GAMMA, reduction="mean")(logits, target)
    return focal + soft_dice_loss(logits, target)


SEG_LOSSES: dict[str, SegLoss] = {
    "bce_dice": bce_dice_loss, "bce_tversky": bce_tversky_loss, "focal_dice": focal_dice_loss,
}


def seg_loss(name: str) -> SegLoss:
    """The segmentation loss called `name` in `SEG_LOSSES`."""
    if name not in SEG_LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(SEG_LOSSES)}")
    return SEG_LOSSES[name]


def deep_supervision_loss(
    outputs: torch.Tensor | list[torch.Tensor], target: torch.Tensor, aux_weight: float = 0.4,
    loss_fn: SegLoss = bce_dice_loss,
) -> torch.Tensor:
    """`loss_fn` of the main output plus `aux_weight`-scaled losses of down-sampled auxiliary
    outputs."""
    if torch.is_tensor(outputs):
        return loss_fn(outputs, target)
    main, *aux = outputs
    loss = loss_fn(main, target)
    for a in aux:
        t = F.adaptive_avg_pool2d(target.to(a.dtype), a.shape[-2:])
        loss = loss + aux_weight * loss_fn(a, (t >= 0.5).to(a.dtype)) / len(aux)
    return loss


def presence_loss(presence_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE of per-image presence logits (N) against "the mask holds any lesion pixel"."""
    has_lesion = (target.flatten(1).amax(1) > 0.5).to(presence_logits.dtype)
    return F.binary_cross_entropy_with_logits(presence_logits, has_lesion)
