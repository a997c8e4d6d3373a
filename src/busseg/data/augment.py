"""Batched augmentation on tensors, applied identically to images and masks.

One random affine (flip, rotation, scale, translation) per sample is turned into a sampling grid
shared by the image (bilinear) and the mask (bilinear, then thresholded at 0.5), so the two stay
aligned. Intensity changes (brightness, contrast, gamma, speckle-like multiplicative noise, blur,
and where switched on a depth gain ramp) touch the image only. Malignant samples get
`strength_malignant` times stronger geometry and intensity changes and are augmented with
probability `p_malignant`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from busseg.config import AugmentConfig


def _uniform(n: int, scale: torch.Tensor, gen: torch.Generator, device) -> torch.Tensor:
    return (torch.rand(n, generator=gen, device=device) * 2 - 1) * scale


def augment_batch(
    x: torch.Tensor,
    y: torch.Tensor,
    malignant: torch.Tensor,
    cfg: AugmentConfig,
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment float images `x` in [0, 1] and masks `y` (N x 1 x H x W) with one generator."""
    n, device = x.shape[0], x.device
    mal = malignant.to(device=device, dtype=torch.bool)
    strength = torch.where(mal, cfg.strength_malignant, 1.0).to(device)
    p = torch.where(mal, cfg.p_malignant, cfg.p).to(device)
    on = (torch.rand(n, generator=gen, device=device) < p).float()
    s = strength * on

    angle = _uniform(n, s * math.radians(cfg.rotate_deg), gen, device)
    scale = 1.0 + _uniform(n, s * cfg.scale, gen, device)
    flip = torch.where(torch.rand(n, generator=gen, device=device) < cfg.flip, -1.0, 1.0)
    flip = torch.where(on > 0, flip, torch.ones_like(flip))
    tx, ty = (_uniform(n, s * cfg.translate * 2, gen, device) for _ in range(2))
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([
        torch.stack([cos * flip, -sin, tx], dim=1),
        torch.stack([sin * flip, cos, ty], dim=1),
    ], dim=1)
    grid = affine_grid(theta, x.shape[-2], x.shape[-1])
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    y = F.grid_sample(y, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    y = (y >= 0.5).to(x.dtype)

    view = (n, 1, 1, 1)
    gamma = torch.exp(_uniform(n, s * cfg.gamma, gen, device)).view(view)
    x = x.clamp(0, 1).pow(gamma)
    contrast = (1.0 + _uniform(n, s * cfg.contrast, gen, device)).view(view)
    bright = _uniform(n, s * cfg.brightness, gen, device).view(view)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * contrast + mean + bright
    sigma = (s * cfg.noise).view(view)
    x = x * (1.0 + sigma * torch.randn(x.shape, generator=gen, device=device))
    if cfg.ramp > 0:  # gain rising or falling linearly with depth (image row)
        depth = torch.linspace(-1.0, 1.0, x.shape[-2], device=device).view(1, 1, -1, 1)
        x = x * (1.0 + _uniform(n, s * cfg.ramp, gen, device).view(view) * depth)
    if cfg.blur > 0:
        blur_on = (torch.rand(n, generator=gen, device=device) < cfg.blur * on).view(view)
        x = torch.where(blur_on, binomial_blur(x), x)
    return x.clamp(0, 1), y


def affine_grid(theta: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """`F.affine_grid(theta, (n, c, h, w), align_corners=False)` as broadcast multiply-adds
    (the batched matmul it runs has an inner size of 3 and is several times slower on a CPU)."""
    xs = (torch.arange(w, device=theta.device, dtype=theta.dtype) * 2 + 1) / w - 1
    ys = (torch.arange(h, device=theta.device, dtype=theta.dtype) * 2 + 1) / h - 1
    t = theta.view(-1, 2, 3, 1, 1)
    rows = [t[:, i, 0] * xs.view(1, 1, w) + t[:, i, 1] * ys.view(1, h, 1) + t[:, i, 2]
            for i in range(2)]
    return torch.stack(rows, dim=-1)


def binomial_blur(x: torch.Tensor) -> torch.Tensor:
    """The 3x3 binomial blur ([1, 2, 1] / 4 along each axis) with replicated edges, as shifted
    sums (a one-channel convolution is slow on a CPU)."""
    p = F.pad(x, (1, 1, 1, 1), mode="replicate")
    rows = p[..., :-2, :] + 2 * p[..., 1:-1, :] + p[..., 2:, :]
    return (rows[..., :-2] + 2 * rows[..., 1:-1] + rows[..., 2:]) / 16.0
