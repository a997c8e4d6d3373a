"""Results by group: per scanner, pathology, BI-RADS ... from a CSV, and by lesion size."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from busseg.errors import InvalidInput, MissingFile
from busseg.metrics import bootstrap_ci

SIZE_BINS = (("small", 0.0, 0.02), ("medium", 0.02, 0.08), ("large", 0.08, 1.01))


def read_groups(path: Path | str, columns: list[str]) -> dict[str, dict[str, str]]:
    """`{column: {image name: value}}` from a CSV with a `name` column."""
    path = Path(path)
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            fields = reader.fieldnames or []
            rows = list(reader)
    except OSError as exc:
        raise MissingFile(f"{path}: cannot read ({exc.strerror})") from None
    if "name" not in fields:
        raise InvalidInput(f"{path}: needs a 'name' column (the image file name without suffix)")
    missing = [c for c in columns if c not in fields]
    if missing:
        raise InvalidInput(f"{path}: no column(s) {', '.join(missing)}; has {', '.join(fields)}")
    return {c: {r["name"]: r[c] for r in rows} for c in columns}


def missed_lesions(rows: list[dict]) -> tuple[int, float | None]:
    """How many lesion scans got an empty final mask, and their share (None: no lesion scan)."""
    missed = [r["pred_area"] == 0 for r in rows if r["true_area"] > 0]
    return int(sum(missed)), (float(np.mean(missed)) if missed else None)


def group_stats(rows: list[dict]) -> dict:
    """Dice mean and 95% CI, n and missed-lesion rate of some per-image rows."""
    dice = [r["dice"] for r in rows]
    lo, hi = bootstrap_ci(dice)
    return {"n": len(rows), "dice": float(np.mean(dice)), "dice_ci95": [lo, hi],
            "missed_lesion_rate": missed_lesions(rows)[1]}


def size_bin(row: dict) -> str | None:
    """Lesion-size bin by the true lesion's share of the image (None for normal scans)."""
    if row["true_area"] == 0:
        return None
    frac = row["true_area"] / (row["height"] * row["width"])
    return next(name for name, lo, hi in SIZE_BINS if lo <= frac < hi)


def per_group(rows: list[dict], groups: dict[str, dict[str, str]] | None = None) -> dict:
    """`{column: {value: stats}}` over lesion scans, with `lesion_size` always included."""
    lesion = [r for r in rows if r["true_area"] > 0]
    out: dict = {}
    columns = {"lesion_size": {r["name"]: size_bin(r) for r in lesion}, **(groups or {})}
    for column, values in columns.items():
        buckets: dict[str, list[dict]] = {}
        for r in lesion:
            value = values.get(r["name"])
            if value is not None:
                buckets.setdefault(str(value), []).append(r)
        out[column] = {v: group_stats(b) for v, b in sorted(buckets.items())}
    return out


def format_groups(per: dict) -> str:
    """Plain-text table of `per_group`."""
    lines = []
    for column, values in per.items():
        lines.append(f"  by {column}:")
        for value, s in values.items():
            lo, hi = s["dice_ci95"]
            missed = "n/a" if s["missed_lesion_rate"] is None else f"{s['missed_lesion_rate']:.3f}"
            lines.append(f"    {value:<28} n={s['n']:<4} Dice {s['dice']:.3f} "
                         f"({lo:.3f}-{hi:.3f})  missed {missed}")
    return "\n".join(lines)
