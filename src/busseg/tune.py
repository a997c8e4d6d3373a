"""`busseg tune`: choose the post-processing (`PostprocessSettings`) on held-out predictions.

The predictions are the out-of-fold ones of a cross-validation (`--cv DIR`, the default way:
every train + val scan) or a model's predictions on a folder (`--data`, e.g. the val split).
The choice, in order:
1. the presence threshold: the highest one that empties at most `max_missed` (2%) of the lesion
   scans (so the fewest normal scans keep a mask);
2. flip TTA, threshold and component filter: among the settings that still empty at most
   `max_missed` of the lesion scans (a component filter or a high threshold can empty them too,
   most of all for models without a presence head), the highest mean Dice over all scans
   (normal scans score 1 when empty, 0 otherwise); when none does, the fewest emptied.
The result is written to `postprocess.json` beside the checkpoint (the weights are not touched)
and the full grid to `tune.json`. The test split is never read.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
from tqdm import tqdm

from busseg.errors import InvalidInput, MissingFile
from busseg.jsonio import write_json
from busseg.metrics import image_metrics
from busseg.postprocess import (
    SETTINGS_FILE,
    PostprocessSettings,
    decide,
    lesion_score,
    save_settings,
)
from busseg.safety import claim

THRESHOLDS = (0.3, 0.4, 0.5, 0.6)
MIN_AREAS = (0.0, 0.0025, 0.005, 0.01)
MAX_MISSED = 0.02


def presence_threshold(lesion_scores: np.ndarray, max_missed: float = MAX_MISSED) -> float | None:
    """The highest threshold leaving at most `max_missed` of the lesion scans below it."""
    s = np.sort(lesion_scores[~np.isnan(lesion_scores)])
    if s.size == 0:
        return None
    k = int(math.floor(max_missed * s.size + 1e-9))  # scans allowed below the threshold
    return float(s[min(k, s.size - 1)])


def _score_setting(probs, scores, truths,
                   settings: PostprocessSettings) -> tuple[np.ndarray, np.ndarray]:
    """Per-image Dice and whether the final mask is empty."""
    dice, empty = [], []
    for p, s, t in zip(probs, scores, truths):
        mask = decide(p, s, settings)
        dice.append(image_metrics(mask, t, False)["dice"])
        empty.append(not mask.any())
    return np.array(dice), np.array(empty)


def choose(preds: dict[bool, tuple[list[np.ndarray], list[float | None]]],
           truths: list[np.ndarray], max_missed: float = MAX_MISSED,
           progress: bool = True) -> dict:
    """Grid-search the settings on predictions `{tta: (probs, scores)}` against `truths`."""
    lesion = np.array([t.any() for t in truths])
    # one lesion score per map (the peak where a model has no head), read by every grid row
    preds = {tta: (probs, [lesion_score(p, s) for p, s in zip(probs, scores)])
             for tta, (probs, scores) in preds.items()}
    gates = {}  # the presence threshold depends on the scores alone: one per TTA choice
    for tta, (_, scores) in preds.items():
        sc = np.array(scores, dtype=float)
        gates[tta] = presence_threshold(sc[lesion], max_missed) if lesion.any() else None
    results = []
    grid = list(itertools.product(preds, THRESHOLDS, MIN_AREAS, (False, True)))
    for tta, thr, area, largest in tqdm(grid, desc="tune", unit="setting", disable=not progress):
        probs, scores = preds[tta]
        settings = PostprocessSettings(threshold=thr, tta=tta, presence_threshold=gates[tta],
                                       min_area_frac=area, keep_largest=largest)
        dice, empty = _score_setting(probs, scores, truths, settings)
        results.append({
            "settings": settings.to_dict(), "dice_all": float(dice.mean()),
            "dice_lesion": float(dice[lesion].mean()) if lesion.any() else None,
            "missed_lesion_rate": float(empty[lesion].mean()) if lesion.any() else None,
            "normal_fp_rate": float((~empty[~lesion]).mean()) if (~lesion).any() else None,
        })
    return {"best": best_setting(results, max_missed), "n": len(truths),
            "n_lesion": int(lesion.sum()), "n_normal": int((~lesion).sum()),
            "max_missed": max_missed, "grid": results}


def best_setting(results: list[dict], max_missed: float = MAX_MISSED) -> dict:
    """The highest `dice_all` among the rows emptying at most `max_missed` of the lesion scans
    (all rows when there are none); when no row qualifies, the fewest emptied, then Dice. Ties
    go to the first (simplest) row."""
    def missed(r: dict) -> float:
        return r["missed_lesion_rate"] or 0.0

    allowed = [r for r in results if missed(r) <= max_missed + 1e-9]
    if allowed:
        return max(allowed, key=lambda r: round(r["dice_all"], 6))
    return max(results, key=lambda r: (-round(missed(r), 6), round(r["dice_all"], 6)))


def preds_from_oof(cv_dir: Path | str) -> tuple[dict, list[np.ndarray]]:
    """`{tta: (probs, scores)}` and truths from a cross-validation's OOF predictions."""
    from busseg.cv import load_oof

    z = load_oof(cv_dir)

    def unpack(prob_key: str, score_key: str):
        probs = [p.astype(np.float32) / 255.0 for p in z[prob_key]]
        # OOF files written before models without a head had a lesion score hold NaN there
        # (`choose` fills those in)
        return probs, [None if np.isnan(s) else float(s) for s in z[score_key]]

    return ({False: unpack("prob", "score"), True: unpack("prob_tta", "score_tta")},
            list(z["truth"]))


def preds_from_folder(checkpoint: Path | str, data: Path | str) -> tuple[dict, list[np.ndarray]]:
    """`{tta: (probs, scores)}` and truths of a model on a folder of images and masks."""
    from busseg.checkpoint import load_model
    from busseg.data.dataset import list_pairs, load_pair
    from busseg.inference import predict_maps, torch_forward

    loaded = load_model(checkpoint)
    forward = torch_forward(loaded)
    pairs = [load_pair(i, m) for i, m in list_pairs(data)]
    grays = [g for g, _ in pairs]
    preds = {}
    for tta in (False, True):
        maps = predict_maps(forward, grays, loaded.size, tta)
        preds[tta] = ([m.prob for m in maps], [m.score for m in maps])
    return preds, [t for _, t in pairs]


def tune_postprocess(checkpoint: Path | str, val_dir: Path | str | None = None,
                     cv_dir: Path | str | None = None, write: bool = True,
                     progress: bool = True, overwrite: bool = False) -> dict:
    """Choose the settings on `cv_dir`'s OOF predictions (or the checkpoint's on `val_dir`);
    write `postprocess.json` and `tune.json` beside the checkpoint."""
    if (val_dir is None) == (cv_dir is None):
        raise InvalidInput("tune needs exactly one of --cv DIR or --data DIR")
    if not Path(checkpoint).is_file():
        raise MissingFile(f"{checkpoint}: checkpoint not found")
    folder = Path(checkpoint).parent
    if write:
        claim([folder / SETTINGS_FILE, folder / "tune.json"], overwrite)
    if cv_dir is not None:
        preds, truths = preds_from_oof(cv_dir)
    else:
        preds, truths = preds_from_folder(checkpoint, val_dir)
    report = choose(preds, truths, progress=progress)
    report["source"] = f"out-of-fold predictions of {cv_dir}" if cv_dir else str(val_dir)
    chosen = PostprocessSettings(**report["best"]["settings"])
    if write:
        save_settings(chosen, folder / SETTINGS_FILE, Path(checkpoint).name)
        write_json(folder / "tune.json", report)
    if cv_dir is not None and write:  # the OOF results under the chosen settings
        from busseg.cv import load_oof, score_oof

        claim([Path(cv_dir) / "oof" / "tuned"], overwrite)
        report["oof_tuned"] = score_oof(Path(cv_dir), load_oof(cv_dir), chosen, "tuned")
    return report
