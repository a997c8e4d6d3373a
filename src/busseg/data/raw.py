"""Reading the raw BUSI download: `{benign,malignant,normal}/<stem>.png` + `<stem>_mask*.png`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from busseg.errors import MissingFile
from busseg.imageio import ImageReadError, read_mask, read_pil

_MASK_RE = re.compile(r"^(?P<stem>.+)_mask(?:_(?P<idx>\d+))?$")


@dataclass
class RawCase:
    """One raw image with all of its mask files."""

    image: Path
    masks: list[Path]
    label: str

    @property
    def name(self) -> str:
        return self.image.stem


def find_cases(raw_dir: Path | str, classes: tuple[str, ...]) -> tuple[list[RawCase], list[Path]]:
    """List the cases of `classes` under `raw_dir`; return (cases with masks, images without)."""
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise MissingFile(f"{raw_dir}: raw BUSI folder not found")
    cases: list[RawCase] = []
    missing: list[Path] = []
    for label in classes:
        folder = raw_dir / label
        if not folder.is_dir():
            raise MissingFile(f"{folder}: class folder '{label}' not found in {raw_dir}")
        masks: dict[str, list[Path]] = {}
        images: list[Path] = []
        for p in sorted(folder.iterdir()):
            if p.suffix.lower() != ".png" or not p.is_file():
                continue
            m = _MASK_RE.match(p.stem)
            if m:
                masks.setdefault(m.group("stem"), []).append(p)
            else:
                images.append(p)
        for img in images:
            found = sorted(masks.get(img.stem, []))
            if found:
                cases.append(RawCase(img, found, label))
            else:
                missing.append(img)
    return cases, missing


def load_case(case: RawCase) -> tuple[np.ndarray, np.ndarray]:
    """Read a case's image and the union of its masks; raise ImageReadError naming the file."""
    image = read_pil(case.image)
    if not case.masks:  # declared normal: no lesion
        return image, np.zeros(image.shape[:2], dtype=bool)
    union: np.ndarray | None = None
    for mpath in case.masks:
        mask = read_mask(mpath)
        if mask.shape != image.shape[:2]:
            raise ImageReadError(
                mpath, f"mask size {mask.shape[::-1]} differs from image size {image.shape[1::-1]}"
            )
        union = mask if union is None else (union | mask)
    return image, union


def is_plain_layout(raw_dir: Path | str) -> bool:
    """Whether `raw_dir` is a plain labelled folder (`images/` + `masks/`) rather than BUSI's."""
    return (Path(raw_dir) / "images").is_dir()


def find_plain_cases(raw_dir: Path | str, normal_without_mask: bool = False
                     ) -> tuple[list[RawCase], list[Path]]:
    """Cases of a plain folder: `images/<stem>.<ext>` with `masks/<stem>_mask*.png` (merged).

    Images with a mask are 'lesion' scans, or 'normal' when every mask file is empty; an image
    without a mask is 'normal' (no lesion) with `normal_without_mask`, else skipped."""
    from busseg.imageio import IMAGE_SUFFIXES

    raw_dir = Path(raw_dir)
    img_dir, mask_dir = raw_dir / "images", raw_dir / "masks"
    if not mask_dir.is_dir() and not normal_without_mask:
        raise MissingFile(f"{mask_dir}: folder not found (expected images/ and masks/)")
    masks: dict[str, list[Path]] = {}
    if mask_dir.is_dir():
        for p in sorted(mask_dir.iterdir()):
            m = _MASK_RE.match(p.stem)
            if m and p.is_file():
                masks.setdefault(m.group("stem"), []).append(p)
    cases, missing = [], []
    for img in sorted(img_dir.iterdir()):
        if not img.is_file() or img.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        found = masks.get(img.stem, [])
        if found:
            cases.append(RawCase(img, found, "lesion"))
        elif normal_without_mask:
            cases.append(RawCase(img, [], "normal"))
        else:
            missing.append(img)
    return cases, missing
