"""Presence scores of the finished folds' held-out scans (head probability), the 2% gate and the
normal scans it marks; plain output otherwise."""
import json, sys
from pathlib import Path
import numpy as np
from busseg.checkpoint import load_model
from busseg.cv import read_pool, predict_pool, fold_done
from busseg.inference import torch_forward
from busseg.tune import presence_threshold
# run from the repository root: python docs/lab/runs/cv5_joint/score_partial.py runs/cv5_joint
cv = Path(sys.argv[1]); data = ["data/busi", "data/busbra", "data/breast"]
doc = json.loads((cv / "folds.json").read_text()); folds = doc["folds"]
done = [f for f in range(doc["k"]) if fold_done(cv / f"fold_{f}")]
m = max(f for f in done if all(g in done for g in range(f + 1))) + 1
pool = [r for r in read_pool(data) if r["name"] in folds and folds[r["name"]] < m]
fw = lambda f: torch_forward(load_model(cv / f"fold_{f}" / "unet_final.pt"), "cpu")
a = predict_pool(fw, pool, folds, m, 256, False)
lesion = a["truth"].reshape(len(pool), -1).any(1)
src = np.array([n.split("/")[0] for n in a["names"]])
for key in ("score", "score_tta"):
    sc = a[key]; g = presence_threshold(sc[lesion])
    marked = ~lesion & (sc >= g) & ((a["prob" if key == "score" else "prob_tta"] >= 128).reshape(len(pool), -1).any(1))
    order = np.argsort(sc); ranks = np.empty(len(sc)); ranks[order] = np.arange(len(sc))
    auc = (ranks[lesion].mean() - (lesion.sum() - 1) / 2) / (~lesion).sum()
    print(f"folds 0..{m-1} {key}: {lesion.sum()} lesion {(~lesion).sum()} normal; AUC {auc:.3f}; gate {g:.4f}: "
          f"emptied {(lesion & (sc < g)).sum()}, normal marked {marked.sum()} "
          f"(BUSI {(marked & (src == 'busi')).sum()}/{(~lesion & (src == 'busi')).sum()})")
np.savez_compressed(cv / f"partial_presence_{m}.npz", **a)
# per-image plain Dice (threshold 0.5, no TTA) and the gate, beside the peak-rule model's OOF rows
import csv
from busseg.evaluate import read_rows
from busseg.metrics import bootstrap_ci
pred = (a["prob"] >= 128).reshape(len(pool), -1); tru = a["truth"].reshape(len(pool), -1)
inter = (pred & tru).sum(1); dice = np.where(lesion, 2 * inter / np.maximum(pred.sum(1) + tru.sum(1), 1), np.nan)
g = presence_threshold(a["score"][lesion]); gated = np.where(a["score"] >= g, dice, 0.0)
base = {r["name"]: r for r in read_rows("docs/lab/runs/cv5_lite0/oof/plain/per_image.csv")}
bd = np.array([base[n]["dice"] for n in a["names"]])
with open(cv / f"partial_{m}_per_image.csv", "w", newline="") as f:
    w = csv.writer(f); w.writerow(["name", "lesion", "score", "dice_plain", "dice_gated", "peak_model_dice_plain"])
    for row in zip(a["names"], lesion, a["score"], dice, gated, bd): w.writerow(row)
L = lesion
for label, v in (("joint plain", dice[L]), ("joint gated", gated[L]), ("peak-rule model plain", bd[L])):
    print(label, f"{v.mean():.4f}", bootstrap_ci(v))
d = dice[L] - bd[L]; print("joint minus peak-rule model, plain:", f"{d.mean():+.4f}", bootstrap_ci(d))
for s in ("breast", "busbra", "busi"):
    k = L & (src == s); print(s, int(k.sum()), f"joint {dice[k].mean():.4f} peak-model {bd[k].mean():.4f} gated {gated[k].mean():.4f}")
