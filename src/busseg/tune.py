"""`busseg tune`: choose threshold, small-component removal and flip TTA on the validation split.

The objective is the mean per-image Dice over every validation image, normal scans included
(an empty prediction on a normal scan scores 1, any lesion 0), so the choice trades lesion Dice
against false positives on normal scans. The test split is never read.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import torch

from busseg.checkpoint import load_model, save_checkpoint
from busseg.data.dataset import class_of, list_pairs, load_pair
from busseg.inference import postprocess, predict_probs, torch_forward
from busseg.metrics import image_metrics

THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
MIN_AREAS = (0.0, 0.001, 0.0025, 0.005, 0.01, 0.02)
MIN_CONFIDENCES = (0.0, 0.7, 0.75, 0.8, 0.85)


def tune_postprocess(checkpoint: Path | str, val_dir: Path | str, write: bool = True) -> dict:
    """Grid-search the post-processing on `val_dir`; store the best in the checkpoint."""
    loaded = load_model(checkpoint)
    forward = torch_forward(loaded)
    paths = list_pairs(val_dir)
    pairs = [load_pair(i, m) for i, m in paths]
    names = [i.stem for i, _ in paths]
    lesion = np.array([class_of(n) != "normal" for n in names])
    grays = [g for g, _ in pairs]
    truths = [t for _, t in pairs]
    probs = {tta: predict_probs(forward, grays, loaded.size, tta) for tta in (False, True)}
    results = []
    for tta, thr, area, largest, conf in itertools.product(
            (False, True), THRESHOLDS, MIN_AREAS, (False, True), MIN_CONFIDENCES):
        dice = np.array([image_metrics(postprocess(p, thr, area, largest, conf), t, False)["dice"]
                         for p, t in zip(probs[tta], truths)])
        results.append({
            "tta": tta, "threshold": thr, "min_area_frac": area, "keep_largest": largest,
            "min_confidence": conf,
            "dice_all": float(dice.mean()), "dice_lesion": float(dice[lesion].mean()),
            "normal_fp_rate": float(1 - dice[~lesion].mean()) if (~lesion).any() else None,
        })
    # best objective; ties go to the simplest setting (listed first)
    best = max(results, key=lambda r: round(r["dice_all"], 6))
    base = next(r for r in results if not r["tta"] and r["threshold"] == 0.5
                and r["min_area_frac"] == 0 and not r["keep_largest"] and r["min_confidence"] == 0)
    report = {"best": best, "baseline": base, "n_val": len(names),
              "n_val_normal": int((~lesion).sum()), "grid": results}
    if write:
        ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
        ckpt["threshold"] = best["threshold"]
        ckpt["postprocess"] = {"min_area_frac": best["min_area_frac"],
                               "keep_largest": best["keep_largest"], "tta": best["tta"],
                               "min_confidence": best["min_confidence"]}
        save_checkpoint(checkpoint, ckpt)
        Path(checkpoint).with_name("tune.json").write_text(json.dumps(report, indent=1))
    return report
