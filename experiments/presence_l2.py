"""The frozen-feature presence head across L2 strengths, on a finished cross-validation.

For every fold model: pooled bottleneck features of all train + val scans (and of an external
folder, if given) once; for each L2 strength a head fitted on the fold's training scans scores
its held-out scans. Prints, per strength, the OOF AUC (lesion vs normal scans), the highest
threshold emptying at most 2% of the OOF lesion scans, the normal scans passing it, and on the
external folder (all lesion scans) how many fall below it - beside the map's peak probability
(the score of a model without a head), read from the cross-validation's own OOF predictions.

    python experiments/presence_l2.py runs/cv_fp32_w8d5 --external path/to/busbra_val
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from busseg.checkpoint import checkpoint_dict
from busseg.cv import load_oof, load_pool, read_pool
from busseg.data.dataset import list_pairs, load_pairs
from busseg.metrics import auc
from busseg.presence import fit_logistic, frozen_net, pooled_features
from busseg.safety import claim
from busseg.tune import presence_threshold


def fold_net(cv_dir: Path, fold: int) -> tuple[torch.nn.Module, int]:
    ckpt = checkpoint_dict(cv_dir / f"fold_{fold}" / "unet_final.pt")
    return frozen_net(ckpt)[0], ckpt["config"]["size"]


def rule_row(name: str, oof: np.ndarray, lesion: np.ndarray, ext: np.ndarray | None) -> dict:
    thr = presence_threshold(oof[lesion])
    row = {"score": name, "oof_auc": auc(oof, lesion.astype(int)), "threshold": thr,
           "oof_missed": float((oof[lesion] < thr).mean()),
           "normal_fp": float((oof[~lesion] >= thr).mean())}
    if ext is not None:
        row["external_missed"] = int((ext < thr).sum())
        row["external_n"] = len(ext)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("cv_dir", type=Path)
    p.add_argument("--data", default="data")
    p.add_argument("--external", type=Path, help="a folder of lesion scans (images/, masks/)")
    p.add_argument("--l2", type=float, nargs="+", default=[1.0, 10.0, 100.0, 1000.0])
    p.add_argument("--json", type=Path, help="also write the rows here (refused if it exists)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    a = p.parse_args()
    if a.json:
        try:
            claim([a.json], a.overwrite)  # checked before the slow part
        except FileExistsError as exc:
            raise SystemExit(f"error: {exc}") from None
    doc = json.loads((a.cv_dir / "folds.json").read_text())
    pool = [r for r in read_pool(a.data) if r["name"] in doc["folds"]]
    fold_of = np.array([doc["folds"][r["name"]] for r in pool])
    lesion = np.array([r["class"] != "normal" for r in pool])
    oof = {l2: np.zeros(len(pool)) for l2 in a.l2}
    ext = {l2: [] for l2 in a.l2}
    images = ext_images = None
    for fold in range(doc["k"]):
        net, size = fold_net(a.cv_dir, fold)
        images = images if images is not None else load_pool(pool, size)
        feats = pooled_features(net, images.images)
        own, flip = feats[0::2], feats[1::2]
        if a.external and ext_images is None:
            ext_images = load_pairs(list_pairs(a.external), size)
        ext_feats = pooled_features(net, ext_images.images)[0::2] if a.external else None
        train = fold_of != fold
        x = torch.cat([own[train], flip[train]])
        y = torch.from_numpy(np.concatenate([lesion[train], lesion[train]])).long()
        for l2 in a.l2:
            w, b = fit_logistic(x, y, l2)
            oof[l2][~train] = torch.sigmoid(own[~train] @ w + b).numpy()
            if ext_feats is not None:
                ext[l2].append(torch.sigmoid(ext_feats @ w + b).numpy())
        print(f"fold {fold} done", flush=True)
    z = load_oof(a.cv_dir)
    order = {str(n): i for i, n in enumerate(z["names"])}
    peak = np.array([z["score"][order[r["name"]]] for r in pool])
    rows = [rule_row("peak probability", peak, lesion, None)]
    for l2 in a.l2:
        e = np.concatenate(ext[l2]) if a.external else None
        rows.append(rule_row(f"head, l2 {l2:g}", oof[l2], lesion, e))
    print("| score | OOF AUC | threshold | OOF missed | normal FP | external below it "
          "(all fold models) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        below = (f"{r['external_missed']} / {r['external_n']}"
                 if "external_missed" in r else "")
        print(f"| {r['score']} | {r['oof_auc']:.3f} | {r['threshold']:.3f} | "
              f"{r['oof_missed']:.3f} | {r['normal_fp']:.3f} | {below} |")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
