"""`busseg prepare`: raw BUSI -> resized, leakage-free `data/{train,val,test}/{images,masks}`."""

from __future__ import annotations

import csv
import logging
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from busseg.data.dataset import LESION_CLASSES
from busseg.data.raw import (
    RawCase,
    find_cases,
    find_plain_cases,
    is_plain_layout,
    load_case,
)
from busseg.data.split import SPLITS, split_groups
from busseg.data.twins import DEFAULT_THRESHOLD, group_ids, thumbnail, twin_pairs
from busseg.errors import InvalidInput, MissingFile
from busseg.imageio import ImageReadError, mask_image
from busseg.jsonio import write_csv, write_json
from busseg.preprocess import resize_image, resize_mask, to_gray01
from busseg.safety import claim

log = logging.getLogger("busseg.prepare")


@dataclass
class PrepareReport:
    """What prepare did: counts per split and class, twin groups, and skipped files."""

    counts: dict[str, dict[str, int]]
    n_groups: int
    n_grouped_images: int
    cross_class_groups: list[list[str]]
    skipped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = ["split   " + "  ".join(f"{c:>9}" for c in self._classes()) + "      total"]
        for s in SPLITS:
            row = self.counts.get(s, {})
            lines.append(
                f"{s:<7} " + "  ".join(f"{row.get(c, 0):>9}" for c in self._classes())
                + f"  {sum(row.values()):>9}"
            )
        lines.append(
            f"near-duplicate groups: {self.n_groups} groups holding {self.n_grouped_images} images"
        )
        for g in self.cross_class_groups:
            lines.append("WARNING cross-class twins: " + ", ".join(g))
        for s in self.skipped:
            lines.append(f"skipped {s}")
        return "\n".join(lines)

    def _classes(self) -> list[str]:
        return sorted({c for row in self.counts.values() for c in row})


RESERVED = ("name", "class", "orig_height", "orig_width", "split", "group")


def read_table(path: Path | str) -> dict[str, dict[str, str]]:
    """Rows of a CSV with a `name` column, by name."""
    path = Path(path)
    if not path.is_file():
        raise MissingFile(f"{path}: table not found")
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if "name" not in (reader.fieldnames or []):
            raise InvalidInput(f"{path}: needs a 'name' column (image file name without suffix)")
        return {r["name"]: r for r in reader}


TABLE_CLASS_COLUMNS = ("pathology", "class")  # where a case table gives benign / malignant


def table_classes(cases: list[RawCase], table: dict[str, dict[str, str]]) -> list[RawCase]:
    """Cases of a plain folder with their class from the table's `pathology` (or `class`)
    column where it says benign, malignant or normal (the sampler, the split's class balance
    and results per class then use it); BUSI's own class folders are kept."""
    out = []
    for case in cases:
        row = table.get(case.name, {})
        value = next((row[c].strip().lower() for c in TABLE_CLASS_COLUMNS if row.get(c)), "")
        if value in ("benign", "malignant", "normal") and case.label in ("lesion", "normal"):
            case = replace(case, label=value)
        out.append(case)
    return out


def table_pairs(cases: list[RawCase], table: dict[str, dict[str, str]],
                column: str = "group") -> list[tuple[int, int]]:
    """Index pairs joining the cases that share a value of `column` in the table."""
    first: dict[str, int] = {}
    pairs = []
    for i, case in enumerate(cases):
        group = table.get(case.name, {}).get(column)
        if group:
            if group in first:
                pairs.append((first[group], i))
            else:
                first[group] = i
    return pairs


def prepared_outputs(out: Path | str) -> list[Path]:
    """What prepare writes in `out`."""
    out = Path(out)
    return [out / s for s in SPLITS] + [out / "splits.json", out / "manifest.csv"]


@dataclass(frozen=True)
class PrepareOptions:
    """How `prepare` splits: output side (0 keeps original sizes), split seed, normal scans,
    near-duplicate threshold, train/val/test fractions, the case table and its group column,
    and whether an image without a mask file is a normal scan."""

    size: int = 256
    seed: int = 0
    include_normal: bool = False
    twin_threshold: float = DEFAULT_THRESHOLD
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    table_csv: Path | str | None = None
    normal_without_mask: bool = False
    group_column: str = "group"


def prepare(raw: Path | str, out: Path | str, options: PrepareOptions | None = None,
            overwrite: bool = False) -> PrepareReport:
    """Read the raw BUSI tree, group near-duplicates, split by group, write images and masks.

    `options.size` is the side of the square output; 0 keeps every image at its original
    resolution (for scoring at original size with `busseg evaluate`); the split does not depend
    on it. An earlier split in `out` is refused unless `overwrite` (which removes it first).

    `raw` is BUSI's layout (`benign/`, `malignant/`, `normal/`) or a plain labelled folder
    (`images/` + `masks/<stem>_mask.png`); `options.table_csv` (columns `name`, optional
    `group` and any others) keeps each group in one split and its columns in the manifest.
    """
    o = options or PrepareOptions()
    size, seed, include_normal = o.size, o.seed, o.include_normal
    twin_threshold, fractions = o.twin_threshold, o.fractions
    table_csv, normal_without_mask, group_column = o.table_csv, o.normal_without_mask, \
        o.group_column
    claim(prepared_outputs(out), overwrite)
    table = read_table(table_csv) if table_csv else {}
    cases, skipped, include_normal = _find(raw, include_normal, normal_without_mask)
    cases = table_classes(cases, table)
    kept, images, masks, thumbs, sizes = _read_cases(cases, size, skipped)
    if not kept:
        raise InvalidInput(f"{raw}: no readable image with a mask was found")
    pairs = twin_pairs(np.stack(thumbs), twin_threshold) + table_pairs(
        kept, table, group_column)
    groups = group_ids(len(kept), pairs)
    labels = [c.label for c in kept]
    splits = split_groups(labels, groups, fractions, seed)

    keep = [include_normal or c.label != "normal" for c in kept]
    kept, images, masks, splits, sizes, labels, groups = (
        [x for x, k in zip(seq, keep) if k]
        for seq in (kept, images, masks, splits, sizes, labels, [kept[g].name for g in groups])
    )
    out = Path(out)
    _write_split(out, kept, images, masks, splits, groups, sizes, table)
    report = _report(kept, labels, splits, groups, skipped)
    splits_doc = {
        "seed": seed, "size": size, "twin_threshold": twin_threshold,
        "fractions": list(fractions), "include_normal": include_normal,
        "counts": report.counts, "n_groups": report.n_groups,
        "n_grouped_images": report.n_grouped_images,
        "cross_class_groups": report.cross_class_groups, "skipped": skipped,
        **{s: sorted(c.name for c, sp in zip(kept, splits) if sp == s) for s in SPLITS},
    }
    write_json(out / "splits.json", splits_doc)
    return report


def _find(raw: Path | str, include_normal: bool,
          normal_without_mask: bool) -> tuple[list[RawCase], list[str], bool]:
    """(cases, skipped lines, include_normal) for a BUSI tree or a plain labelled folder."""
    if is_plain_layout(raw):
        cases, missing = find_plain_cases(raw, normal_without_mask)
        include_normal = True
    else:
        # Twins and splits are computed over every class present, so the benign/malignant split
        # is the same with or without --include-normal (normal scans can chain lesion images).
        classes = LESION_CLASSES + (
            ("normal",) if (Path(raw) / "normal").is_dir() else ())
        if include_normal and "normal" not in classes:
            raise MissingFile(f"{Path(raw) / 'normal'}: --include-normal given but no "
                              "folder")
        cases, missing = find_cases(raw, classes)
    return cases, [f"{p}: image has no mask file" for p in missing], include_normal


def _read_cases(cases: list[RawCase], size: int, skipped: list[str]):
    """(kept cases, images, masks, thumbnails, original sizes); unreadable files are added to
    `skipped`. `size` 0 keeps the original resolution (twins are found on thumbnails)."""
    kept: list[RawCase] = []
    images, masks, thumbs, sizes = [], [], [], []
    for case in tqdm(cases, desc="reading", unit="img", leave=False):
        try:
            image, mask = load_case(case)
        except ImageReadError as exc:
            skipped.append(str(exc))
            continue
        gray = to_gray01(image)
        if case.label == "lesion" and not mask.any():
            case = RawCase(case.image, case.masks, "normal")  # empty mask files: no lesion
        kept.append(case)
        sizes.append(gray.shape)
        thumbs.append(thumbnail(gray))
        if size > 0:
            images.append(resize_image(gray, (size, size)))
            masks.append(resize_mask(mask, (size, size)))
        else:
            images.append(torch.from_numpy(gray))
            masks.append(torch.from_numpy(mask))
    return kept, images, masks, thumbs, sizes


def _write_split(out: Path, kept, images, masks, splits, groups, sizes, table) -> None:
    """`out/{train,val,test}/{images,masks}` and `out/manifest.csv`."""
    for s in SPLITS:
        (out / s / "images").mkdir(parents=True, exist_ok=True)
        (out / s / "masks").mkdir(parents=True, exist_ok=True)
    rows = []
    for case, img, msk, split, grp, (h, w) in zip(kept, images, masks, splits, groups, sizes):
        d = out / split
        arr = (img.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).numpy()
        Image.fromarray(arr).save(d / "images" / f"{case.name}.png")
        mask_image(msk.numpy()).save(d / "masks" / f"{case.name}_mask.png")
        extra = {k: v for k, v in table.get(case.name, {}).items() if k not in RESERVED}
        rows.append({"name": case.name, "class": case.label, "orig_height": h, "orig_width": w,
                     "split": split, "group": grp, **extra})
    write_csv(out / "manifest.csv", rows)


def _report(kept, labels, splits, groups, skipped) -> PrepareReport:
    """Counts per split and class, near-duplicate groups and groups that mix classes."""
    size_of = Counter(groups)
    grouped = [i for i, g in enumerate(groups) if size_of[g] > 1]
    by_group: dict[int, list[int]] = {}
    for i in grouped:
        by_group.setdefault(groups[i], []).append(i)
    cross = [[f"{labels[i]}/{kept[i].name}" for i in idx]
             for idx in by_group.values() if len({labels[i] for i in idx}) > 1]
    counts: dict[str, dict[str, int]] = {s: {} for s in SPLITS}
    for label, split in zip(labels, splits):
        counts[split][label] = counts[split].get(label, 0) + 1
    return PrepareReport(counts, len(by_group), len(grouped), cross, skipped)
