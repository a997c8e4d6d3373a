"""Multi-scale test-time augmentation measured on a cross-validation's held-out scans.

    python experiments/multiscale_tta.py runs/cv_w8d5 [--sizes 224 256 288]

Each pool scan is predicted by its fold's model at every input size (with flip TTA) and the maps
are averaged; the plain rule (threshold 0.5) and the shipped setting are scored against flip
TTA at the model's own size, paired over the same scans.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from busseg.checkpoint import load_model
from busseg.cv import read_pool
from busseg.data.dataset import load_pair
from busseg.inference import predict_maps, torch_forward
from busseg.metrics import image_metrics
from busseg.postprocess import decide, lesion_score, plain_settings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("cv")
    ap.add_argument("--data", default="data")
    ap.add_argument("--sizes", type=int, nargs="+", default=[224, 256, 288])
    args = ap.parse_args()
    doc = json.loads((Path(args.cv) / "folds.json").read_text())
    folds = doc["folds"]
    pool = [r for r in read_pool(args.data) if r["name"] in folds]
    rules = {"plain": plain_settings(),
             "shipped": load_model(None).settings.replace(tta=True)}
    dice: dict[tuple[str, str], list[float]] = {}
    for fold in range(doc["k"]):
        loaded = load_model(Path(args.cv) / f"fold_{fold}" / "unet_final.pt")
        forward = torch_forward(loaded)
        rows = [r for r in pool if folds[r["name"]] == fold]
        pairs = [load_pair(Path(r["image"]), Path(r["mask"])) for r in rows]
        grays = [g for g, _ in pairs]
        maps = {s: predict_maps(forward, grays, s, tta=True) for s in args.sizes}
        for i, (_, truth) in enumerate(pairs):
            if not truth.any():
                continue
            variants = {"flip": maps[loaded.size][i].prob,
                        "multiscale": np.mean([maps[s][i].prob for s in args.sizes], axis=0)}
            for vname, prob in variants.items():
                for rname, rule in rules.items():
                    mask = decide(prob, lesion_score(prob, None), rule)
                    dice.setdefault((vname, rname), []).append(
                        image_metrics(mask, truth, False)["dice"])
        print(f"fold {fold} done", flush=True)
    rng = np.random.default_rng(0)
    for rname in rules:
        a, b = np.array(dice[("flip", rname)]), np.array(dice[("multiscale", rname)])
        boot = [np.mean((b - a)[idx]) for idx in rng.integers(0, a.size, (2000, a.size))]
        lo, hi = np.percentile(boot, [2.5, 97.5])
        print(f"{rname:8s} flip {a.mean():.4f}  multiscale {b.mean():.4f}  paired "
              f"{(b - a).mean():+.4f} ({lo:+.4f} to {hi:+.4f})  emptied {int((a == 0).sum())} "
              f"vs {int((b == 0).sum())} of {a.size} (Dice 0)")


if __name__ == "__main__":
    main()
