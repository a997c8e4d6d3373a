"""Paired comparison of two evaluations of the same scans (per_image.csv of evaluate or of
`busseg cv`'s out-of-fold results): mean Dice difference B - A over the lesion scans both scored,
with a 95% bootstrap CI of the paired difference, and the missed lesions of each. Where both
hold normal scans: the lesion score's AUC (lesion against normal scans) and the normal scans
marked, for each.

    python experiments/compare_runs.py runs/cv/oof/plain runs/cv_plain_recipe/oof/plain
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from busseg.evaluate import read_rows
from busseg.metrics import auc, bootstrap_ci


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", help="folder with per_image.csv (the baseline)")
    ap.add_argument("b", help="folder with per_image.csv (the challenger)")
    args = ap.parse_args()
    a = {r["name"]: r for r in read_rows(Path(args.a) / "per_image.csv")}
    b = {r["name"]: r for r in read_rows(Path(args.b) / "per_image.csv")}
    names = sorted(n for n in a.keys() & b.keys() if a[n]["true_area"] > 0)
    if not names:
        raise SystemExit("no lesion scan in common")
    da = np.array([a[n]["dice"] for n in names])
    db = np.array([b[n]["dice"] for n in names])
    lo, hi = bootstrap_ci(list(db - da))
    print(f"{len(names)} lesion scans in common")
    for label, path, rows, dice in (("A", args.a, a, da), ("B", args.b, b, db)):
        missed = sum(rows[n]["pred_area"] == 0 for n in names)
        print(f"{label} {path}: Dice {dice.mean():.4f}, missed {missed}")
    print(f"B - A: {db.mean() - da.mean():+.4f} (95% CI {lo:+.4f} to {hi:+.4f}); "
          f"B better on {int((db > da).sum())}, worse on {int((db < da).sum())} scans")
    common = sorted(a.keys() & b.keys())
    normal = [n for n in common if a[n]["true_area"] == 0]
    if normal:
        labels = np.array([a[n]["true_area"] > 0 for n in common], dtype=int)
        for label, rows in (("A", a), ("B", b)):
            scores = np.array([rows[n]["lesion_score"] for n in common], dtype=float)
            marked = sum(rows[n]["pred_area"] > 0 for n in normal)
            print(f"{label} lesion score AUC {auc(scores, labels):.3f}; "
                  f"normal scans marked {marked} / {len(normal)}")


if __name__ == "__main__":
    main()
