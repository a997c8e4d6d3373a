"""A prepared split (`DIR/images/<stem>.png`, `DIR/masks/<stem>_mask.png`) held in memory."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from busseg.errors import MissingFile
from busseg.imageio import IMAGE_SUFFIXES, ImageReadError, read_mask, read_pil
from busseg.preprocess import resize_image, resize_mask, to_gray01

CLASS_NAMES = ("benign", "malignant", "normal")  # the one list of class names
LESION_CLASSES = CLASS_NAMES[:2]


def class_of(name: str) -> str:
    """The BUSI class a file name starts with, or 'unknown'."""
    low = name.lower()
    return next((c for c in CLASS_NAMES if low.startswith(c)), "unknown")


def list_pairs(split_dir: Path | str) -> list[tuple[Path, Path]]:
    """(image, mask) paths of a split folder; raise naming what is missing."""
    split_dir = Path(split_dir)
    img_dir, mask_dir = split_dir / "images", split_dir / "masks"
    for d in (img_dir, mask_dir):
        if not d.is_dir():
            raise MissingFile(f"{d}: folder not found (expected images/ and masks/)")
    pairs, missing = [], []
    for img in sorted(img_dir.iterdir()):
        if img.suffix.lower() not in IMAGE_SUFFIXES or not img.is_file():
            continue
        mask = mask_dir / f"{img.stem}_mask.png"
        (pairs if mask.is_file() else missing).append((img, mask))
    if missing:
        names = ", ".join(str(m) for _, m in missing[:5])
        raise MissingFile(f"{len(missing)} image(s) lack a mask, e.g. {names}")
    if not pairs:
        raise MissingFile(f"{img_dir}: no images found")
    return pairs


def load_pair(img: Path, mask: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an image as gray [0, 1] float and its mask as bool; sizes must agree."""
    gray = to_gray01(read_pil(img))
    m = read_mask(mask)
    if m.shape != gray.shape:
        raise ImageReadError(
            mask, f"mask size {m.shape[::-1]} differs from image {gray.shape[::-1]}"
        )
    return gray, m


@dataclass
class TensorSplit:
    """A split in memory: uint8 images and masks (N x 1 x S x S), names, class labels and,
    for several sources in one run, each scan's source (empty: one source)."""

    images: torch.Tensor
    masks: torch.Tensor
    names: list[str]
    labels: list[str]
    sources: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, idx: list[int]) -> TensorSplit:
        """The images at `idx`."""
        t = torch.as_tensor(idx, dtype=torch.long)
        return TensorSplit(self.images[t], self.masks[t], [self.names[i] for i in idx],
                           [self.labels[i] for i in idx],
                           [self.sources[i] for i in idx] if self.sources else [])

    def to(self, device: torch.device | str) -> TensorSplit:
        """The same images with their tensors on `device`."""
        return TensorSplit(self.images.to(device), self.masks.to(device), self.names, self.labels,
                           self.sources)

    def batch(self, idx: torch.Tensor, device: torch.device | str = "cpu"):
        """Float images in [0, 1] and float masks for the given indices."""
        x = self.images[idx].to(device, non_blocking=True).float().div_(255.0)
        y = self.masks[idx].to(device, non_blocking=True).float()
        return x, y


def manifest_classes(split_dir: Path | str) -> dict[str, str]:
    """Each scan's class by name from the `manifest.csv` that `busseg prepare` wrote beside a
    split folder (empty when there is none)."""
    manifest = Path(split_dir).parent / "manifest.csv"
    if not manifest.is_file():
        return {}
    with open(manifest, newline="") as fh:
        return {r["name"]: r["class"] for r in csv.DictReader(fh) if r.get("class")}


def load_split(split_dir: Path | str, size: int) -> TensorSplit:
    """Read every pair of a split folder, resized to size x size, into uint8 tensors; classes
    from the data folder's manifest."""
    return load_pairs(list_pairs(split_dir), size, manifest_classes(split_dir))


def load_pairs(pairs: list[tuple[Path, Path]], size: int,
               classes: dict[str, str] | None = None) -> TensorSplit:
    """Read (image, mask) pairs, resized to size x size, into uint8 tensors. A scan's class is
    `classes[name]` (the manifest's), else read from a BUSI-style name."""
    n = len(pairs)
    images = torch.empty(n, 1, size, size, dtype=torch.uint8)
    masks = torch.empty(n, 1, size, size, dtype=torch.uint8)
    for i, (img, mask) in enumerate(pairs):
        gray, m = load_pair(img, mask)
        images[i, 0] = (resize_image(gray, (size, size)).clamp(0, 1) * 255 + 0.5).to(torch.uint8)
        masks[i, 0] = resize_mask(m, (size, size)).to(torch.uint8)
    names = [img.stem for img, _ in pairs]
    classes = classes or {}
    labels = [classes.get(n) or label_of(n, bool(masks[i].any())) for i, n in enumerate(names)]
    return TensorSplit(images, masks, names, labels)


def label_of(name: str, has_lesion: bool) -> str:
    """BUSI class from the name; for other names 'normal' without a lesion, else 'unknown'."""
    label = class_of(name)
    return "normal" if label == "unknown" and not has_lesion else label
