"""`busseg evaluate`: per-image metrics at original resolution, per-class means, bootstrap CI."""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from busseg.data.dataset import label_of, list_pairs, load_pair, manifest_classes
from busseg.errors import InvalidInput
from busseg.groups import format_groups, missed_lesions, per_group, read_groups
from busseg.imageio import ImageReadError, mask_image
from busseg.inference import Checkpoints, ModelChoice, predict_maps
from busseg.jsonio import write_csv, write_json
from busseg.metrics import METRICS, Reliability, bootstrap_ci, image_metrics, nanmean
from busseg.postprocess import PostprocessSettings, decide
from busseg.safety import claim


def summarise(rows: list[dict]) -> dict:
    """Means over images (NaN skipped), per class, Dice CI, missed-lesion rate (lesion scans
    whose final mask is empty) and normal false-positive rate (normal scans with any mask)."""
    lesion = [r for r in rows if r["class"] != "normal"] or rows
    summary: dict = {m: nanmean([r[m] for r in lesion]) for m in METRICS}
    summary["n_images"] = len(lesion)
    summary["n_hd95"] = int(sum(not math.isnan(r["hd95"]) for r in lesion))
    summary["dice_ci95"] = list(bootstrap_ci([r["dice"] for r in lesion]))
    summary["n_missed"], summary["missed_lesion_rate"] = missed_lesions(rows)
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


def score_image(name: str, truth: np.ndarray, pred: np.ndarray, score: float | None,
                label: str | None = None) -> dict:
    """One per-image row: class (`label`, else read from a BUSI-style name), sizes, areas,
    lesion score and every metric."""
    return {"name": name, "class": label or label_of(name, bool(truth.any())),
            "height": truth.shape[0],
            "width": truth.shape[1], "true_area": int(truth.sum()), "pred_area": int(pred.sum()),
            "lesion_score": score, **image_metrics(pred, truth)}


INT_COLUMNS = ("height", "width", "true_area", "pred_area")
TEXT_COLUMNS = ("name", "class")


def read_rows(path: Path | str) -> list[dict]:
    """Per-image rows from a `per_image.csv` that evaluate wrote, with their types back."""
    def typed(key: str, value: str):
        if key in TEXT_COLUMNS:
            return value
        if value == "":
            return None
        return int(value) if key in INT_COLUMNS else float(value)

    with open(path, newline="") as fh:
        return [{k: typed(k, v) for k, v in row.items()} for row in csv.DictReader(fh)]


def write_rows(path: Path, rows: list[dict]) -> None:
    """Per-image rows as CSV (`read_rows` reads them back)."""
    write_csv(path, rows, list(rows[0]))


EVAL_OUTPUTS = ("metrics.json", "per_image.csv", "reliability.json", "test_preds")


@dataclass(frozen=True)
class EvalOptions:
    """How `evaluate` scores: whether the presence rule and component filter apply (False keeps
    only the threshold and TTA), and a table of groups to report by (`groups` CSV, its
    `group_by` columns)."""

    filter_components: bool = True
    groups: Path | str | None = None
    group_by: list[str] | None = None


def evaluate(model: ModelChoice | Checkpoints, data: Path | str, out: Path | str = "results",
             options: EvalOptions | None = None, overwrite: bool = False,
             progress: bool = True, on_image: OnImage | None = None) -> dict:
    """Score a model on `data/images` + `data/masks`; write metrics.json, per_image.csv, PNGs.

    `model` is a `ModelChoice` or just the weights (None: the shipped model; several: their
    ensemble, mean probability with the first model's settings). The summary metrics (`dice`,
    `iou`, ...) are means over lesion images (all images when the folder holds only normal
    ones); `per_class` has every class, normal included. `on_image(row, gray, truth, prob,
    pred)` is called for each scored image. The pixel calibration bins go to reliability.json
    (the report's reliability diagram).
    """
    model, opts, out = ModelChoice.of(model), options or EvalOptions(), Path(out)
    pairs = list_pairs(data)  # a bad data folder fails before anything is written
    if opts.group_by and not opts.groups:
        raise InvalidInput("--group-by needs --groups FILE.csv")
    group_values = read_groups(opts.groups, opts.group_by or []) if opts.groups else None
    forward, size, settings = model.load()
    claim([out / f for f in EVAL_OUTPUTS], overwrite)
    if not opts.filter_components:
        settings = PostprocessSettings(threshold=settings.threshold, tta=settings.tta)
    rows, errors, reliability = _score_pairs(pairs, forward, size, settings,
                                             out / "test_preds", progress, on_image,
                                             manifest_classes(data))
    if not rows:
        raise InvalidInput(f"{data}: no image could be evaluated: {'; '.join(errors)}")
    summary = summarise(rows)
    summary["per_group"] = per_group(rows, group_values)
    summary.update({"postprocess": settings.to_dict(),
                    "checkpoint": _model_label(model.checkpoint, model.onnx_path
                                               if model.backend == "onnx" else None),
                    "backend": model.backend, "data": str(data), "errors": errors})
    write_json(out / "metrics.json", summary)
    write_rows(out / "per_image.csv", rows)
    write_json(out / "reliability.json", reliability.to_dict())
    return summary


OnImage = Callable[[dict, np.ndarray, np.ndarray, np.ndarray, np.ndarray], None]


def _score_pairs(pairs, forward, size: int, settings: PostprocessSettings,
                 pred_dir: Path, progress: bool, on_image: OnImage | None,
                 classes: dict[str, str] | None = None):
    """(rows, errors, calibration bins) of every image and mask pair (classes by name from
    `classes`); masks into `pred_dir`."""
    pred_dir.mkdir(parents=True, exist_ok=True)
    rows, errors, reliability = [], [], Reliability()
    for img_path, mask_path in tqdm(pairs, desc="evaluate", unit="img", disable=not progress):
        try:
            gray, truth = load_pair(img_path, mask_path)
        except ImageReadError as exc:
            errors.append(str(exc))
            continue
        p = predict_maps(forward, [gray], size, settings.tta)[0]
        pred = decide(p.prob, p.score, settings)
        mask_image(pred).save(pred_dir / f"{img_path.stem}_pred.png")
        rows.append(score_image(img_path.stem, truth, pred, p.score,
                                (classes or {}).get(img_path.stem)))
        reliability.add(p.prob, truth)
        if on_image is not None:
            on_image(rows[-1], gray, truth, p.prob, pred)
    return rows, errors, reliability


def _model_label(checkpoint: Checkpoints, onnx_path: Path | str | None) -> str:
    """What metrics.json names as the scored model."""
    if onnx_path:
        return str(onnx_path)
    if isinstance(checkpoint, (list, tuple)):
        return " + ".join(map(str, checkpoint)) or "shipped"
    return str(checkpoint or "shipped")


def format_summary(s: dict) -> str:
    """A short human-readable table of an evaluation summary."""
    lo, hi = s["dice_ci95"]
    lines = [f"images {s['n_images']}  Dice {s['dice']:.4f} (95% CI {lo:.4f}-{hi:.4f})  "
             f"IoU {s['iou']:.4f}  acc {s['accuracy']:.4f}  HD95 {s['hd95']:.1f}px"]
    if s.get("missed_lesion_rate") is not None:
        lines.append(f"  missed lesions {s['n_missed']} ({s['missed_lesion_rate']:.3f})"
                     + (f"  normal false-positive rate {s['normal_fp_rate']:.3f}"
                        if s.get("normal_fp_rate") is not None else ""))
    for c, m in s["per_class"].items():
        extra = (f"  false-positive rate {m['false_positive_rate']:.3f}"
                 if "false_positive_rate" in m else "")
        lines.append(f"  {c:<10} n={m['n_images']:<4} Dice {m['dice']:.4f}  IoU {m['iou']:.4f}  "
                     f"HD95 {m['hd95']:.1f}{extra}")
    if s.get("per_group"):
        lines.append(format_groups(s["per_group"]))
    for e in s.get("errors", []):
        lines.append(f"  error: {e}")
    return "\n".join(lines)
