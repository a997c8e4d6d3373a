"""A small, readable U-Net: two 3x3 conv + BatchNorm + ReLU per block, 2x2 max-pool, channels
doubling, a bottleneck, transposed-conv up-sampling with skip connections, a 1x1 conv to one logit.
`norm="instance"` replaces BatchNorm by per-image, per-channel normalisation (GroupNorm with one
group per channel), which uses no statistics of the training scans at inference: the config's
default (`model.norm`) and the shipped model's. The constructor keeps BatchNorm as its default,
which is what checkpoints saved without a `norm` key hold.

`stem_stride=2` runs the first stage at half resolution (a strided 3x3 conv stem, and a final
transposed conv back to full size), which makes a 256x256 image cost about what a 128x128 one
costs in the plain network. Input is a float image in [0, 1]; it is standardised per image inside
the model, so every consumer (training, evaluation, prediction, ONNX) sees the same numbers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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
    raise ValueError(f"unknown norm {kind!r}; known: {', '.join(NORMS)}")


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
    """U-Net returning logits (apply a sigmoid for probabilities).

    Args:
        width: channels of the first stage; stage k has width * 2**k.
        depth: number of down-sampling steps (the bottleneck runs at 1 / 2**depth).
        in_channels: input channels (1 for grayscale ultrasound).
        stem_stride: 1 for the classic layout, 2 to run the first stage at half resolution.
        deep_supervision: also return auxiliary logits from the two coarsest decoder stages
            during training (ignored in eval mode).
        presence_head: also return one image-level "holds a lesion" logit per image, from the
            average- and max-pooled bottleneck features; the output is then `(seg, presence)`.
        norm: `batch` (BatchNorm) or `instance` (per-image, per-channel normalisation).
    """

    def __init__(
        self,
        width: int = 16,
        depth: int = 4,
        in_channels: int = 1,
        stem_stride: int = 2,
        deep_supervision: bool = False,
        presence_head: bool = False,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        if depth < 1 or width < 1 or stem_stride not in (1, 2) or norm not in NORMS:
            raise ValueError(f"bad UNet shape: width={width}, depth={depth}, stem={stem_stride}, "
                             f"norm={norm!r}")
        self.depth, self.stem_stride, self.deep_supervision = depth, stem_stride, deep_supervision
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
        # auxiliary heads on the outputs of the first (coarsest) two decoder stages
        aux_chans = [chans[k] for k in reversed(range(depth))][:2]
        self.aux = nn.ModuleList(nn.Conv2d(c, 1, 1) for c in aux_chans) if (
            deep_supervision) else None
        self.presence = nn.Linear(2 * chans[depth], 1) if presence_head else None

    @property
    def multiple(self) -> int:
        """Input sides are padded to a multiple of this."""
        return 2**self.depth * self.stem_stride

    def forward(self, x: torch.Tensor) -> SegOutput:
        h, w = x.shape[-2:]
        m = self.multiple
        ph, pw = (-h) % m, (-w) % m
        # Always pad (by zero when aligned) so traced/exported graphs keep dynamic sizes; zero is
        # the image mean after standardisation.
        x = F.pad(self.norm(x), (0, pw, 0, ph))
        x = self.inc(x)
        skips = [x]
        for down in self.downs:
            x = down(F.max_pool2d(x, 2))
            skips.append(x)
        skips.pop()
        presence = None
        if self.presence is not None:
            pooled = torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)
            presence = self.presence(pooled)[:, 0]
        aux_out = []
        for i, up in enumerate(self.ups):
            x = up(x, skips.pop())
            if self.aux is not None and self.training and i < 2:
                aux_out.append(self.aux[i](x))
        logits = self.head(self.head_up(x))[..., :h, :w]
        seg: torch.Tensor | list[torch.Tensor] = [logits] + aux_out if aux_out else logits
        return seg if presence is None else (seg, presence)


SegOutput = torch.Tensor | list[torch.Tensor] | tuple


def split_output(out: SegOutput) -> tuple[torch.Tensor | list[torch.Tensor], torch.Tensor | None]:
    """(segmentation logits or deep-supervision list, presence logits or None) of a model output."""
    if isinstance(out, tuple):
        return out[0], out[1]
    return out, None
