"""Score the 5-fold OOF predictions with the shipped model's setting (fixed, not re-chosen)."""
import json
from pathlib import Path

from busseg.checkpoint import DEFAULT_WEIGHTS, load_model
from busseg.cv import load_oof, score_oof

cv = Path("runs/cv5_lite0")
settings = load_model(DEFAULT_WEIGHTS).settings
print(settings)
s = score_oof(cv, load_oof(cv), settings, "shipped")
for label in ("plain", "shipped"):
    m = json.loads((cv / "oof" / label / "metrics.json").read_text())
    def row(v):
        n = v.get("per_class", {}).get("normal", {})
        return (f"{v['dice']:.4f} ({v['dice_ci95'][0]:.4f}-{v['dice_ci95'][1]:.4f}) n={v['n_images']} "
                f"missed {v['n_missed']} normalFP {v.get('normal_fp_rate')} of {n.get('n_images')}")
    print(label, row(m), "mean", round(m["source_mean_dice"], 4), "worst", round(m["source_worst_dice"], 4))
    for src, v in m["by_source"].items():
        print("  ", src, row(v))
