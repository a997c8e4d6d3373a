"""A lesion-presence head trained together with the segmentation, instead of fitted afterwards on
the frozen network's features (`busseg fit-presence`).

The loss `bce_dice_presence` adds to BCE + soft Dice of the masks a class-balanced binary
cross-entropy of the model's presence logit against "this scan holds a lesion" (its mask is not
empty), weighted by `PRESENCE_WEIGHT`. Every `busseg` verb runs with the loss registered, so a
5-fold CV of the shipped recipe with a jointly trained head is

    python experiments/joint_presence.py cv --by fold --folds 5 \\
        --config configs/all_sources_lite0.yaml --set model.presence_head=true \\
        --set loss=bce_dice_presence --out runs/cv5_joint
    busseg tune --cv runs/cv5_joint --checkpoint runs/cv5_joint/fold_0/unet_final.pt

The weights it writes load in plain `busseg` (evaluate, predict, tune, export): only training
needs the loss.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from busseg.errors import InvalidInput
from busseg.losses import LOSSES, bce_dice
from busseg.models.output import SegOutput

PRESENCE_WEIGHT = 0.5  # of the presence term against the segmentation's BCE + Dice


def presence_bce(presence: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of N presence logits against the masks' "not empty", the lesion and
    the normal scans of the batch weighted equally (a batch of one class: its plain mean)."""
    label = target.flatten(1).amax(1).to(presence.dtype)
    per = F.binary_cross_entropy_with_logits(presence, label, reduction="none")
    pos, neg = label > 0.5, label <= 0.5
    if not pos.any() or not neg.any():
        return per.mean()
    return 0.5 * per[pos].mean() + 0.5 * per[neg].mean()


def bce_dice_presence(out: SegOutput, target: torch.Tensor) -> torch.Tensor:
    """BCE + soft Dice of the segmentation logits, plus the weighted presence BCE; a model
    without a presence head (`model.presence_head: false`) is an error."""
    if out.presence is None:
        raise InvalidInput("loss bce_dice_presence needs a model with model.presence_head: true")
    return (bce_dice(out.logits.float(), target)
            + PRESENCE_WEIGHT * presence_bce(out.presence.float(), target))


LOSSES["bce_dice_presence"] = bce_dice_presence


def main(argv: list[str] | None = None) -> int:
    """`busseg` itself, with the loss registered."""
    from busseg.cli import main as busseg_main

    return busseg_main(argv)


if __name__ == "__main__":
    sys.exit(main())
