import math

import numpy as np
import pytest

from busseg.metrics import batch_dice, bootstrap_ci, hd95, image_metrics, nanmean


def test_hand_computed_case():
    truth = np.zeros((10, 10), bool)
    truth[2:6, 2:6] = True  # 16 px
    pred = np.zeros((10, 10), bool)
    pred[4:8, 2:6] = True  # 16 px, 8 overlap
    m = image_metrics(pred, truth)
    assert m["dice"] == pytest.approx(2 * 8 / 32)
    assert m["iou"] == pytest.approx(8 / 24)
    assert m["accuracy"] == pytest.approx((100 - 16) / 100)
    assert m["precision"] == pytest.approx(0.5) and m["recall"] == pytest.approx(0.5)
    assert m["specificity"] == pytest.approx(76 / 84)
    assert m["hd95"] == pytest.approx(2.0)


def test_empty_mask_conventions():
    empty = np.zeros((8, 8), bool)
    some = empty.copy()
    some[2:4, 2:4] = True
    both = image_metrics(empty, empty)
    assert both["dice"] == 1 and both["iou"] == 1 and both["hd95"] == 0
    assert math.isnan(both["precision"]) and math.isnan(both["recall"])
    fp = image_metrics(some, empty)
    assert fp["dice"] == 0 and math.isnan(fp["hd95"]) and fp["precision"] == 0
    fn = image_metrics(empty, some)
    assert fn["dice"] == 0 and fn["recall"] == 0 and math.isnan(fn["precision"])


def test_hd95_of_shifted_square():
    a = np.zeros((40, 40), bool)
    a[10:20, 10:20] = True
    assert hd95(a, np.roll(a, 5, axis=1)) == pytest.approx(5.0)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shape"):
        image_metrics(np.zeros((4, 4), bool), np.zeros((4, 5), bool))


def test_batch_dice_and_reductions():
    import torch

    p = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    t = p.clone()
    t[1, 0, :2] = True
    p[1, 0, :1] = True
    assert batch_dice(p, t).tolist() == pytest.approx([1.0, 2 * 4 / 12])
    assert nanmean([1.0, math.nan, 3.0]) == 2.0
    lo, hi = bootstrap_ci([0.2, 0.4, 0.6, 0.8] * 10)
    assert lo < 0.5 < hi and hi - lo < 0.3
