"""Model registry: named network constructors, their arguments checked, one output type.

A model is a `torch.nn.Module` whose constructor takes keyword arguments (annotated, with
defaults) and whose `forward(x)` maps N x 1 x H x W images in [0, 1] to a `SegOutput`. Adding
one is a file in this package and a line in `MODELS`; the config (`model: {name: ..., <its
arguments>}`) is checked against the constructor's signature (docs/explanation/architecture.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from busseg.errors import InvalidInput
from busseg.models.lite0 import Lite0UNet
from busseg.models.output import SegOutput
from busseg.models.unet import UNet, unet_classic

MODELS: dict[str, Callable[..., nn.Module]] = {
    "unet": UNet,
    "unet_classic": unet_classic,  # the seed's U-Net: 64..1024 channels, ~31M parameters
    "lite0_unet": Lite0UNet,  # EfficientNet-Lite0 encoder from ImageNet weights, ~3.3M
}

__all__ = ["MODELS", "SegOutput", "count_parameters", "create_model", "model_arguments"]


def model_arguments(name: str, given: dict[str, Any]) -> dict[str, Any]:
    """Every constructor argument of model `name`: `given` checked (unknown names and values
    of the wrong type raise ValueError naming them) and the constructor's defaults for the
    rest."""
    from busseg.models.signature import check_arguments

    if name not in MODELS:
        raise InvalidInput(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
    return check_arguments(name, MODELS[name], given)


def create_model(name: str = "unet", **kwargs: Any) -> nn.Module:
    """Build a registered model by name with its (checked) arguments."""
    args = model_arguments(name, kwargs)
    return MODELS[name](**args)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
