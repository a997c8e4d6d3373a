"""JSON output that every parser reads: NaN and infinities become null."""

from __future__ import annotations

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
