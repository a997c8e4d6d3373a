"""A small, readable U-Net: two 3x3 conv + BatchNorm + ReLU per block, 2x2 max-pool, channels
doubling, a bottleneck, transposed-conv up-sampling with skip connections, a 1x1 conv to one logit.
`norm="instance"` replaces BatchNorm by per-image, per-channel normalisation (GroupNorm with one
group per channel), which uses no statistics of the training scans at inference: the default
and the shipped model's (checkpoints saved without a `norm` key hold BatchNorm weights).

`stem_stride=2` runs the first stage at half resolution (a strided 3x3 conv stem, and a final
transposed conv back to full size), which makes a 256x256 image cost about what a 128x128 one
costs in the plain network. Input is a float image in [0, 1]; it is standardised per image inside
the model, so every consumer (training, evaluation, prediction, ONNX) sees the same numbers.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from busseg.errors import InvalidInput
from busseg.models.output import SegOutput


class Standardize(nn.Module):
    """Per-image zero mean, unit variance over the spatial dims (and channels)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        var = (x - mean).pow(2).mean(dim=(1, 2, 3), keepdim=True)
        return (x - mean) / torch.sqrt(var + 1e-6)


NORMS = ("batch", "instance")


def norm_layer(kind: str, channels: int) -> nn.Module:
    """BatchNorm (`batch`) or per-image, per-channel normalisation with affine (`instance`)."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.GroupNorm(channels, channels)
    raise InvalidInput(f"unknown norm {kind!r}; known: {', '.join(NORMS)}")


def conv_bn_relu(cin: int, cout: int, stride: int = 1, norm: str = "batch") -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        norm_layer(norm, cout),
        nn.ReLU(inplace=True),
    )


class DoubleConv(nn.Sequential):
    """Two 3x3 conv + norm + ReLU."""

    def __init__(self, cin: int, cout: int, norm: str = "batch") -> None:
        super().__init__(conv_bn_relu(cin, cout, norm=norm), conv_bn_relu(cout, cout, norm=norm))


class Up(nn.Module):
    """Transposed-conv up-sampling, concatenation with the skip, then a DoubleConv."""

    def __init__(self, cin: int, cout: int, norm: str = "batch") -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cout, 2, stride=2)
        self.conv = DoubleConv(2 * cout, cout, norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([self.up(x), skip], dim=1))


class UNet(nn.Module):
    """U-Net returning a `SegOutput` of logits (apply a sigmoid for probabilities).

    Args:
        width: channels of the first stage; stage k has width * 2**k.
        depth: number of down-sampling steps (the bottleneck runs at 1 / 2**depth).
        in_channels: input channels (1 for grayscale ultrasound).
        stem_stride: 1 for the classic layout, 2 to run the first stage at half resolution.
        presence_head: also return one image-level "holds a lesion" logit per image, a linear
            layer on `features(x)` (fitted afterwards by `busseg fit-presence`).
        norm: `instance` (per-image, per-channel normalisation) or `batch` (BatchNorm).

    The defaults are the shipped recipe's network (`configs/busi.yaml`).
    """

    def __init__(
        self,
        width: int = 8,
        depth: int = 5,
        in_channels: int = 1,
        stem_stride: Literal[1, 2] = 2,
        presence_head: bool = False,
        norm: Literal["instance", "batch"] = "instance",
    ) -> None:
        super().__init__()
        if not 1 <= depth <= 6 or width < 1 or stem_stride not in (1, 2) or norm not in NORMS:
            raise InvalidInput(f"bad UNet shape: width={width}, depth={depth}, stem={stem_stride}, "
                               f"norm={norm!r}")
        self.depth, self.stem_stride = depth, stem_stride
        self.norm = Standardize()
        chans = [width * 2**k for k in range(depth + 1)]
        if stem_stride == 2:
            self.inc = nn.Sequential(conv_bn_relu(in_channels, chans[0], 2, norm),
                                     conv_bn_relu(chans[0], chans[0], norm=norm))
        else:
            self.inc = DoubleConv(in_channels, chans[0], norm)
        self.downs = nn.ModuleList(DoubleConv(chans[k], chans[k + 1], norm) for k in range(depth))
        self.ups = nn.ModuleList(Up(chans[k + 1], chans[k], norm) for k in reversed(range(depth)))
        if stem_stride == 2:
            self.head_up = nn.ConvTranspose2d(chans[0], chans[0], 2, stride=2)
            self.head = nn.Sequential(conv_bn_relu(chans[0], chans[0], norm=norm),
                                      nn.Conv2d(chans[0], 1, 1))
        else:
            self.head_up = nn.Identity()
            self.head = nn.Conv2d(chans[0], 1, 1)
        self.presence = nn.Linear(2 * chans[depth], 1) if presence_head else None

    @property
    def multiple(self) -> int:
        """Input sides are padded to a multiple of this."""
        return 2**self.depth * self.stem_stride

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(bottleneck features, skip features) of images padded to `multiple`."""
        h, w = x.shape[-2:]
        m = self.multiple
        # Always pad (by zero when aligned) so traced/exported graphs keep dynamic sizes; zero is
        # the image mean after standardisation.
        x = self.inc(F.pad(self.norm(x), (0, (-w) % m, 0, (-h) % m)))
        skips = [x]
        for down in self.downs:
            x = down(F.max_pool2d(x, 2))
            skips.append(x)
        skips.pop()
        return x, skips

    @staticmethod
    def pool(bottleneck: torch.Tensor) -> torch.Tensor:
        """Average- and max-pooled bottleneck features (N x 2C): what the presence head reads."""
        return torch.cat([bottleneck.mean(dim=(2, 3)), bottleneck.amax(dim=(2, 3))], dim=1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The image-level features a presence head is fitted on (N x 2C)."""
        return self.pool(self.encode(x)[0])

    def forward(self, x: torch.Tensor) -> SegOutput:
        h, w = x.shape[-2:]
        x, skips = self.encode(x)
        presence = None if self.presence is None else self.presence(self.pool(x))[:, 0]
        for up in self.ups:
            x = up(x, skips.pop())
        return SegOutput(self.head(self.head_up(x))[..., :h, :w], presence)


def unet_classic(width: int = 64, depth: int = 4, in_channels: int = 1,
                 stem_stride: Literal[1, 2] = 1, presence_head: bool = False,
                 norm: Literal["instance", "batch"] = "batch") -> UNet:
    """The seed's classic U-Net: 64..1024 channels, full-resolution first stage, BatchNorm.

    Args:
        width: channels of the first stage; stage k has width * 2**k.
        depth: number of down-sampling steps.
        in_channels: input channels (1 for grayscale ultrasound).
        stem_stride: 1 for the classic layout, 2 to run the first stage at half resolution.
        presence_head: also return an image-level "holds a lesion" logit.
        norm: `batch` (BatchNorm) or `instance` (per-image, per-channel normalisation).
    """
    return UNet(width, depth, in_channels, stem_stride, presence_head, norm)
