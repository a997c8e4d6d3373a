"""Model registry: a plain dict of named constructors and `create_model`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from busseg.models.unet import UNet

MODELS: dict[str, Callable[..., nn.Module]] = {
    "unet": UNet,
    # The seed's classic U-Net: 64..1024 channels, ~31M parameters (with BatchNorm).
    "unet_classic": lambda **kw: UNet(**{"width": 64, "depth": 4, "stem_stride": 1, **kw}),
}


def create_model(name: str = "unet", **kwargs: Any) -> nn.Module:
    """Build a registered model by name; unknown names list the known ones."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
    return MODELS[name](**kwargs)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
