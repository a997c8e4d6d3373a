import hashlib

import numpy as np

from busseg.checkpoint import load_model
from busseg.postprocess import PostprocessSettings
from busseg.tune import best_setting, choose, presence_threshold, tune_postprocess


def test_presence_threshold_misses_at_most_the_allowed_share():
    scores = np.linspace(0.01, 1.0, 100)
    t = presence_threshold(scores, 0.02)
    assert (scores < t).sum() == 2
    assert presence_threshold(scores, 0.0) == scores.min()
    assert presence_threshold(np.array([np.nan]), 0.02) is None


def _grid_with_known_best():
    """Lesion scans whose lesion has probability 0.65 inside a 0.55 ring: only threshold 0.6
    gives Dice 1. The TTA maps have a 0.7 ring, so no threshold separates them. Normal scans
    have a confident false-positive blob and a low lesion score."""
    truths, plain, tta = [], [], []
    for i in range(6):
        t = np.zeros((40, 40), bool)
        t[10:20, 10 + i:20 + i] = True
        ring = np.zeros_like(t)
        ring[7:23, 7 + i:23 + i] = True
        for probs, ring_p in ((plain, 0.55), (tta, 0.7)):
            p = np.where(ring, ring_p, 0.05).astype(np.float32)
            p[t] = 0.65
            probs.append(p)
        truths.append(t)
    scores = [0.9, 0.8, 0.85, 0.95, 0.7, 0.9]
    for _ in range(3):
        p = np.zeros((40, 40), np.float32)
        p[5:15, 5:15] = 0.9
        truths.append(np.zeros((40, 40), bool))
        plain.append(p)
        tta.append(p)
        scores.append(0.1)
    return {False: (plain, scores), True: (tta, scores)}, truths


def test_choose_finds_the_known_best_setting():
    preds, truths = _grid_with_known_best()
    report = choose(preds, truths, progress=False)
    best = report["best"]
    assert best["settings"]["threshold"] == 0.6 and best["settings"]["tta"] is False
    assert best["settings"]["presence_threshold"] == 0.7
    assert best["dice_all"] == 1.0
    assert best["missed_lesion_rate"] == 0.0 and best["normal_fp_rate"] == 0.0
    # every other threshold is strictly worse
    others = [r for r in report["grid"] if r["settings"]["threshold"] != 0.6]
    assert max(r["dice_all"] for r in others) < 1.0


def test_choose_never_trades_emptied_lesion_scans_for_dice():
    """No presence head: one small lesion among 9 large ones and 3 normal scans with a small
    false blob. Dropping components under 1% of the image would clear the normal scans but
    empty the small lesion; the presence rule reads the maps' peak probability, which says
    "lesion" on every lesion scan, so no setting of the grid empties one."""
    truths, probs = [], []
    for i in range(10):
        t = np.zeros((40, 40), bool)
        if i:
            t[5:25, 5 + i:25 + i] = True
        else:
            t[18:21, 18:21] = True  # 9 pixels: 0.56% of the image
        truths.append(t)
        probs.append(np.where(t, 0.9, 0.05).astype(np.float32))
    for _ in range(3):
        p = np.full((40, 40), 0.05, np.float32)
        p[2:5, 2:5] = 0.9
        truths.append(np.zeros((40, 40), bool))
        probs.append(p)
    preds = {False: (probs, [None] * len(probs))}
    report = choose(preds, truths, max_missed=0.02, progress=False)
    assert report["best"]["settings"]["presence_threshold"] == np.float32(0.9)
    assert all(r["missed_lesion_rate"] == 0.0 for r in report["grid"])
    assert report["best"]["dice_all"] == max(r["dice_all"] for r in report["grid"])
    # the rule between rows: within the limit the best Dice, with none met the fewest emptied
    rows = [{"dice_all": 0.9, "missed_lesion_rate": 0.2}, {"dice_all": 0.5,
                                                          "missed_lesion_rate": 0.1}]
    assert best_setting(rows, 0.02) == rows[1]


def test_tune_writes_settings_beside_and_keeps_weights(tiny_run, prepared, tmp_path):
    import shutil

    ckpt = tmp_path / "unet_final.pt"
    shutil.copy(tiny_run / "unet_final.pt", ckpt)
    before = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    report = tune_postprocess(ckpt, val_dir=prepared / "val", progress=False)
    assert hashlib.sha256(ckpt.read_bytes()).hexdigest() == before
    chosen = PostprocessSettings(**report["best"]["settings"])
    assert load_model(ckpt).settings == chosen
    assert (tmp_path / "tune.json").is_file()
