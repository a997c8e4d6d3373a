"""Synthetic ultrasound-like scans with known lesion masks, written as a raw BUSI tree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def scan(seed: int, h: int = 96, w: int = 112, lesion: bool = True):
    """A speckled gray scan (uint8) and its elliptical dark lesion mask (bool)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    # a distinct smooth background per seed so unrelated scans do not correlate
    phase = rng.uniform(0, 2 * np.pi, 3)
    freq = rng.uniform(0.03, 0.12, 3)
    base = 120 + 40 * np.sin(freq[0] * xx + phase[0]) * np.cos(freq[1] * yy + phase[1])
    base += 30 * np.sin(freq[2] * (xx + yy) + phase[2])
    base += rng.normal(0, 8, (h, w))
    mask = np.zeros((h, w), bool)
    if lesion:
        cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
        ry, rx = rng.uniform(0.1, 0.2) * h, rng.uniform(0.1, 0.2) * w
        mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        base[mask] = 35 + rng.normal(0, 5, mask.sum())
    return np.clip(base, 0, 255).astype(np.uint8), mask


def write_png(path: Path, arr: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(arr)
    if mode:
        img = img.convert(mode)
    img.save(path)
    return path


def make_raw_tree(root: Path, n_benign: int = 20, n_malignant: int = 10, n_normal: int = 5,
                  twins: int = 3) -> Path:
    """A raw BUSI-like tree. The last `twins` benign images are noisy copies of benign 1..twins
    (so each twin pair must share a split); benign (1) has its lesion split over two mask files."""
    raw = root / "Dataset_BUSI_with_GT"
    seed = 0
    for label, n in (("benign", n_benign), ("malignant", n_malignant), ("normal", n_normal)):
        for i in range(1, n + 1):
            seed += 1
            img, mask = scan(seed, lesion=label != "normal")
            if label == "benign" and i > n - twins:
                src = i - (n - twins)
                img, mask = scan(src, lesion=True)  # same scan as benign (src) ...
                noise = np.random.default_rng(1000 + i).normal(0, 4, img.shape)
                img = np.clip(img * 1.05 + noise, 0, 255).astype(np.uint8)  # ... re-exported
            write_png(raw / label / f"{label} ({i}).png", img)
            if label == "benign" and i == 1:
                left = mask.copy()
                left[:, mask.shape[1] // 2:] = False
                write_png(raw / label / f"{label} ({i})_mask.png", left.astype(np.uint8) * 255)
                write_png(raw / label / f"{label} ({i})_mask_1.png",
                          (mask & ~left).astype(np.uint8) * 255, mode="1")
            else:
                write_png(raw / label / f"{label} ({i})_mask.png", mask.astype(np.uint8) * 255)
    return raw
