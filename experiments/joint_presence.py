"""A lesion-presence head trained together with the segmentation, instead of fitted afterwards on
the frozen network's features (`busseg fit-presence`).

The loss `bce_dice_presence` adds to BCE + soft Dice of the masks a class-balanced binary
cross-entropy of the model's presence logit against "this scan holds a lesion" (its mask is not
empty), weighted by `PRESENCE_WEIGHT` (0.5); `loss=bce_dice_presence:W` sets the weight W, and the
run's config.yaml records it. Every `busseg` verb runs with the loss registered, so a 5-fold CV of
the shipped recipe with a jointly trained head is

    python experiments/joint_presence.py cv --by fold --folds 5 \\
        --config configs/all_sources_lite0.yaml --set model.presence_head=true \\
        --set loss=bce_dice_presence --out runs/cv5_joint
    busseg tune --cv runs/cv5_joint --checkpoint runs/cv5_joint/fold_0/unet_final.pt

The weights it writes load in plain `busseg` (evaluate, predict, tune, export): only training
needs the loss.
"""

from __future__ import annotations

import functools
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


def bce_dice_presence(out: SegOutput, target: torch.Tensor,
                      weight: float = PRESENCE_WEIGHT) -> torch.Tensor:
    """BCE + soft Dice of the segmentation logits, plus `weight` x the presence BCE; a model
    without a presence head (`model.presence_head: false`) is an error."""
    if out.presence is None:
        raise InvalidInput("loss bce_dice_presence needs a model with model.presence_head: true")
    return (bce_dice(out.logits.float(), target)
            + weight * presence_bce(out.presence.float(), target))


def register_weighted(argv: list[str]) -> None:
    """Register `bce_dice_presence:W` for each such loss named in `argv` (`--set loss=...`)."""
    for arg in argv:
        name = arg.partition("loss=")[2]
        if not name.startswith("bce_dice_presence:"):
            continue
        text = name.partition(":")[2]
        try:
            weight = float(text)
        except ValueError:
            raise InvalidInput(f"loss {name!r}: the weight {text!r} is not a number") from None
        if not 0.0 < weight < 100.0:
            raise InvalidInput(f"loss {name!r}: the weight must be above 0 and below 100")
        LOSSES[name] = functools.partial(bce_dice_presence, weight=weight)


LOSSES["bce_dice_presence"] = bce_dice_presence


def main(argv: list[str] | None = None) -> int:
    """`busseg` itself, with the loss registered."""
    from busseg.cli import main as busseg_main

    try:
        register_weighted(sys.argv[1:] if argv is None else argv)
    except InvalidInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return busseg_main(argv)


if __name__ == "__main__":
    sys.exit(main())
