"""`busseg evaluate`: per-image metrics at original resolution, per-class means, bootstrap CI."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from busseg.checkpoint import load_model
from busseg.data.dataset import class_of, list_pairs, load_pair
from busseg.imageio import ImageReadError
from busseg.inference import predict_probs, torch_forward
from busseg.metrics import METRICS, bootstrap_ci, image_metrics, nanmean


def summarise(rows: list[dict]) -> dict:
    """Means over images (NaN skipped), per class, Dice CI, normal false-positive rate."""
    lesion = [r for r in rows if r["class"] != "normal"] or rows
    summary: dict = {m: nanmean([r[m] for r in lesion]) for m in METRICS}
    summary["n_images"] = len(lesion)
    summary["n_hd95"] = int(sum(not math.isnan(r["hd95"]) for r in lesion))
    summary["dice_ci95"] = list(bootstrap_ci([r["dice"] for r in lesion]))
    per_class = {}
    for c in sorted({r["class"] for r in rows}):
        sub = [r for r in rows if r["class"] == c]
        per_class[c] = {m: nanmean([r[m] for r in sub]) for m in METRICS}
        per_class[c]["n_images"] = len(sub)
        if c == "normal":
            per_class[c]["false_positive_rate"] = float(np.mean([r["pred_area"] > 0 for r in sub]))
    summary["per_class"] = per_class
    if "normal" in per_class:
        summary["normal_fp_rate"] = per_class["normal"]["false_positive_rate"]
    return summary


def evaluate(
    checkpoint: Path | str | None,
    data: Path | str,
    out: Path | str = "results",
    threshold: float | None = None,
    tta: bool | None = None,
    device: str = "cpu",
    batch_size: int = 8,
    progress: bool = True,
    on_image: Callable[[dict, np.ndarray, np.ndarray, np.ndarray, np.ndarray], None]
    | None = None,
    filter_components: bool = True,
) -> dict:
    """Score a model on `data/images` + `data/masks`; write metrics.json, per_image.csv, PNGs.

    The summary metrics (`dice`, `iou`, ...) are means over lesion images (all images when the
    folder holds only normal ones); `per_class` has every class, normal included.
    `on_image(row, gray, truth, prob, pred)` is called for each scored image (the report).
    `filter_components=False` scores the plain thresholded map (no component filtering).
    """
    loaded = load_model(checkpoint, device)
    thr = loaded.threshold if threshold is None else threshold
    tta = loaded.tta if tta is None else tta
    forward = torch_forward(loaded, device)
    out = Path(out)
    pred_dir = out / "test_preds"
    pred_dir.mkdir(parents=True, exist_ok=True)
    rows, errors = [], []
    for img_path, mask_path in tqdm(list_pairs(data), desc="evaluate", unit="img",
                                    disable=not progress):
        try:
            gray, truth = load_pair(img_path, mask_path)
        except ImageReadError as exc:
            errors.append(str(exc))
            continue
        prob = predict_probs(forward, [gray], loaded.size, tta, batch_size)[0]
        pred = loaded.postprocess(prob, thr) if filter_components else prob >= thr
        Image.fromarray(pred.astype(np.uint8) * 255).save(pred_dir / f"{img_path.stem}_pred.png")
        m = image_metrics(pred, truth)
        rows.append({"name": img_path.stem, "class": class_of(img_path.stem),
                     "height": truth.shape[0], "width": truth.shape[1],
                     "true_area": int(truth.sum()), "pred_area": int(pred.sum()), **m})
        if on_image is not None:
            on_image(rows[-1], gray, truth, prob, pred)
    if not rows:
        raise ValueError(f"{data}: no image could be evaluated: {'; '.join(errors)}")
    summary = summarise(rows)
    summary.update({"threshold": thr, "min_area_frac": loaded.min_area_frac,
                    "keep_largest": loaded.keep_largest,
                    "min_confidence": loaded.min_confidence, "tta": tta,
                    "filter_components": filter_components,
                    "checkpoint": str(checkpoint or "shipped"),
                    "model": loaded.name, "data": str(data), "errors": errors})
    (out / "metrics.json").write_text(json.dumps(summary, indent=1))
    with open(out / "per_image.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return summary


def format_summary(s: dict) -> str:
    """A short human-readable table of an evaluation summary."""
    lo, hi = s["dice_ci95"]
    lines = [f"images {s['n_images']}  Dice {s['dice']:.4f} (95% CI {lo:.4f}-{hi:.4f})  "
             f"IoU {s['iou']:.4f}  acc {s['accuracy']:.4f}  HD95 {s['hd95']:.1f}px"]
    for c, m in s["per_class"].items():
        extra = (f"  false-positive rate {m['false_positive_rate']:.3f}"
                 if "false_positive_rate" in m else "")
        lines.append(f"  {c:<10} n={m['n_images']:<4} Dice {m['dice']:.4f}  IoU {m['iou']:.4f}  "
                     f"HD95 {m['hd95']:.1f}{extra}")
    for e in s.get("errors", []):
        lines.append(f"  error: {e}")
    return "\n".join(lines)
