import torch

from busseg.losses import bce_dice_loss, deep_supervision_loss, soft_dice_loss


def _target():
    y = torch.zeros(2, 1, 16, 16)
    y[:, :, 4:12, 4:12] = 1
    return y


def test_better_prediction_has_lower_loss():
    y = _target()
    perfect = (y * 2 - 1) * 8
    shifted = torch.roll(perfect, shifts=3, dims=-1)
    blank = torch.full_like(y, -8.0)
    losses = [float(bce_dice_loss(p, y)) for p in (perfect, shifted, blank)]
    assert losses[0] < losses[1] < losses[2]
    assert losses[0] < 0.01


def test_soft_dice_bounds():
    y = _target()
    assert float(soft_dice_loss((y * 2 - 1) * 20, y)) < 1e-3
    assert float(soft_dice_loss(-(y * 2 - 1) * 20, y)) > 0.95


def test_deep_supervision_loss_adds_aux_terms():
    y = _target()
    main = (y * 2 - 1) * 8
    good_aux = torch.nn.functional.avg_pool2d(main, 4)
    bad_aux = -good_aux
    assert float(deep_supervision_loss([main, good_aux], y)) < float(
        deep_supervision_loss([main, bad_aux], y))
    assert torch.isclose(deep_supervision_loss(main, y), bce_dice_loss(main, y))
