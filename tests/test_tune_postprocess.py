import json

import numpy as np
import torch

from busseg.checkpoint import load_model
from busseg.inference import postprocess
from busseg.tune import tune_postprocess


def test_postprocess_removes_small_components_and_keeps_largest():
    prob = np.zeros((100, 100), np.float32)
    prob[10:40, 10:40] = 0.9  # 900 px
    prob[60:64, 60:64] = 0.8  # 16 px
    prob[70:90, 10:30] = 0.7  # 400 px
    assert postprocess(prob, 0.5).sum() == 1316
    assert postprocess(prob, 0.75).sum() == 916
    assert postprocess(prob, 0.5, min_area_frac=0.01).sum() == 1300
    assert postprocess(prob, 0.5, keep_largest=True).sum() == 900
    assert postprocess(prob, 0.5, min_area_frac=0.5).sum() == 0
    assert postprocess(np.zeros((5, 5)), 0.5, 0.1, True).sum() == 0


def test_tune_uses_val_and_stores_choice(tiny_run, prepared, tmp_path):
    import shutil

    ckpt = tmp_path / "unet_final.pt"
    shutil.copy(tiny_run / "unet_final.pt", ckpt)
    report = tune_postprocess(ckpt, prepared / "val")
    best = report["best"]
    assert best["dice_all"] >= report["baseline"]["dice_all"]
    assert best["dice_all"] == max(r["dice_all"] for r in report["grid"])
    stored = torch.load(ckpt, weights_only=True)
    assert stored["threshold"] == best["threshold"]
    assert stored["postprocess"]["min_area_frac"] == best["min_area_frac"]
    loaded = load_model(ckpt)
    assert loaded.threshold == best["threshold"] and loaded.tta == best["tta"]
    assert json.loads((tmp_path / "tune.json").read_text())["n_val"] == report["n_val"]


def test_postprocess_confidence_gate():
    prob = np.zeros((50, 50), np.float32)
    prob[5:15, 5:15] = 0.95
    prob[30:45, 30:45] = 0.6
    assert postprocess(prob, 0.5).sum() == 100 + 225
    assert postprocess(prob, 0.5, min_confidence=0.8).sum() == 100
    assert postprocess(prob, 0.5, keep_largest=True, min_confidence=0.8).sum() == 100
    assert postprocess(prob, 0.5, keep_largest=True).sum() == 225
