"""What every model returns: segmentation logits, and optionally an image-level presence logit
and auxiliary outputs (a NamedTuple, so tracing, export and torch.compile see plain tensors)."""

from __future__ import annotations

from typing import NamedTuple

import torch


class SegOutput(NamedTuple):
    """`logits`: N x 1 x H x W lesion logits at the input's size; `presence`: N logits of
    "this image holds a lesion" or None; `aux`: further outputs a loss may use (empty)."""

    logits: torch.Tensor
    presence: torch.Tensor | None = None
    aux: tuple[torch.Tensor, ...] = ()
