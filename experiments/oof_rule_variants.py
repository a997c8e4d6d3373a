"""Decision-rule variants measured on a cross-validation's stored OOF maps (no model runs).

    python experiments/oof_rule_variants.py runs/cv_w8d5 [runs/cv_recipe_nested ...]

1. Image-level lesion scores other than the map's peak: the normal false-positive rate at the
   highest threshold that empties at most 2% of the lesion scans, and the ROC AUC.
2. Filling holes (and a closing before it) in the shipped setting's masks: lesion Dice against
   the shipped setting, on flip-TTA maps.
"""

from __future__ import annotations

import sys

import numpy as np
from scipy import ndimage

from busseg.checkpoint import load_model
from busseg.cv import load_oof
from busseg.metrics import auc, image_metrics
from busseg.postprocess import decide, lesion_score
from busseg.tune import presence_threshold


def largest_component_mass(p: np.ndarray) -> float:
    labels, n = ndimage.label(p >= 0.5)
    return float(ndimage.sum_labels(p, labels, np.arange(1, n + 1)).max()) if n else 0.0


SCORES = {
    "peak (the shipped score)": lambda p: float(p.max()),
    "99.5th percentile": lambda p: float(np.percentile(p, 99.5)),
    "mean of the top 200 pixels": lambda p: float(np.sort(p.ravel())[-200:].mean()),
    "mean of the top 1000 pixels": lambda p: float(np.sort(p.ravel())[-1000:].mean()),
    "probability mass >= 0.5": lambda p: float(p[p >= 0.5].sum()),
    "largest component's mass": largest_component_mass,
    "area >= 0.3": lambda p: float((p >= 0.3).sum()),
}


def main() -> None:
    settings = load_model(None).settings
    for cv in sys.argv[1:]:
        z = load_oof(cv)
        probs = [p.astype(np.float32) / 255 for p in z["prob_tta"]]
        lesion = np.array([t.any() for t in z["truth"]])
        print(f"{cv}: {int(lesion.sum())} lesion, {int((~lesion).sum())} normal scans")
        for name, f in SCORES.items():
            s = np.array([f(p) for p in probs])
            thr = presence_threshold(s[lesion])
            print(f"  {name:30s} normal FP at <= 2% missed {(s[~lesion] >= thr).mean():.3f}"
                  f"  AUC {auc(s, lesion.astype(int)):.3f}")
        base, filled, closed = [], [], []
        for p, t in zip(probs, z["truth"]):
            if not t.any():
                continue
            m = decide(p, lesion_score(p, None), settings)
            base.append(image_metrics(m, t, False)["dice"])
            filled.append(image_metrics(ndimage.binary_fill_holes(m), t, False)["dice"])
            closed.append(image_metrics(ndimage.binary_fill_holes(
                ndimage.binary_closing(m, iterations=2)), t, False)["dice"])
        base, filled, closed = map(np.array, (base, filled, closed))
        print(f"  shipped setting {base.mean():.4f}; holes filled "
              f"{filled.mean() - base.mean():+.4f} ({int((filled != base).sum())} scans changed);"
              " closing + filling "
              f"{closed.mean() - base.mean():+.4f} ({int((closed != base).sum())} changed)")


if __name__ == "__main__":
    main()
