"""Plain outputs: JSON that every parser reads (NaN and infinities become null) and CSV tables."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any


def clean(obj: Any) -> Any:
    """A copy of `obj` with non-finite floats replaced by None (numpy scalars made plain)."""
    if isinstance(obj, dict):
        return {k: clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: Path | str, obj: Any) -> None:
    """Write strict JSON (allow_nan=False after cleaning)."""
    Path(path).write_text(json.dumps(clean(obj), indent=1, allow_nan=False))


def write_csv(path: Path | str, rows: list[dict], fields: list[str] | None = None) -> None:
    """Rows as a CSV table; `fields` defaults to every key in order of first appearance (a row
    missing one leaves its cell empty)."""
    fields = fields or list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(rows)
