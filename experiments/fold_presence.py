"""The presence rule on one fold: lesion scores read from `busseg evaluate` folders.

For each model, given the evaluate folder of its held-out scans (lesion and normal) and the one
of an external folder (all lesion scans): the AUC of the lesion score (lesion vs normal), the
highest threshold emptying at most 2% of the held-out lesion scans, the normal scans passing
it and the external scans below it. The lesion score is the presence head's probability, or
the map's peak probability for a model without a head (`per_image.csv`, column lesion_score).

    python experiments/fold_presence.py runs/eval_f0held_A runs/eval_bb_A \
        runs/eval_f0held_B runs/eval_bb_B
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from busseg.metrics import auc
from busseg.tune import presence_threshold


def read_scores(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Lesion scores and whether each scan holds a lesion, from `per_image.csv`."""
    with open(folder / "per_image.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise SystemExit(f"error: {folder / 'per_image.csv'} holds no scans")
    scores = np.array([float(r["lesion_score"]) for r in rows])
    lesion = np.array([r["class"] != "normal" for r in rows])
    return scores, lesion


def rule_row(held: Path, external: Path) -> str:
    """One table row: AUC, threshold, held-out missed, normal FP, external below it."""
    scores, lesion = read_scores(held)
    ext, _ = read_scores(external)
    thr = presence_threshold(scores[lesion])
    missed = int((scores[lesion] < thr).sum())
    fp = int((scores[~lesion] >= thr).sum())
    return (f"| {held.name} | {auc(scores, lesion.astype(int)):.3f} | {thr:.4f} | "
            f"{missed} / {lesion.sum()} | {fp} / {(~lesion).sum()} | "
            f"{int((ext < thr).sum())} / {ext.size} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folders", type=Path, nargs="+",
                   help="pairs: held-out evaluate folder, external evaluate folder")
    a = p.parse_args()
    if len(a.folders) % 2:
        raise SystemExit("error: give the folders in pairs (held-out, external)")
    print("| model | AUC | threshold | held-out missed | normal FP | external below it |")
    print("|---|---|---|---|---|---|")
    for held, external in zip(a.folders[0::2], a.folders[1::2]):
        print(rule_row(held, external))


if __name__ == "__main__":
    main()
