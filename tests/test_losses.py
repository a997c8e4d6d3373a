import pytest
import torch

from busseg.losses import (
    SEG_LOSSES,
    bce_dice_loss,
    deep_supervision_loss,
    seg_loss,
    soft_dice_loss,
    soft_tversky_loss,
)


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


def test_tversky_at_half_half_is_the_soft_dice():
    y = _target()
    logits = torch.randn(2, 1, 16, 16)
    assert torch.isclose(soft_tversky_loss(logits, y, 0.5, 0.5, smooth=0.5),
                         soft_dice_loss(logits, y, smooth=1.0))


def test_tversky_charges_missed_pixels_more_than_extra_ones():
    y = _target()  # an 8x8 lesion
    missed = torch.full_like(y, -8.0)
    missed[:, :, 4:12, 4:8] = 8.0  # half the lesion missed (32 pixels)
    extra = (y * 2 - 1) * 8
    extra[:, :, 12:16, 4:12] = 8.0  # the whole lesion plus 32 pixels beyond it
    tversky = float(soft_tversky_loss(missed, y) / soft_tversky_loss(extra, y))
    dice = float(soft_dice_loss(missed, y) / soft_dice_loss(extra, y))
    assert tversky > 1.5 * dice > 1.5  # the miss costs more under Tversky than under Dice


@pytest.mark.parametrize("name", sorted(SEG_LOSSES))
def test_every_loss_ranks_predictions_and_trains(name):
    y = _target()
    perfect = (y * 2 - 1) * 8
    shifted = torch.roll(perfect, shifts=3, dims=-1)
    blank = torch.full_like(y, -8.0)
    fn = seg_loss(name)
    losses = [float(fn(p, y)) for p in (perfect, shifted, blank)]
    assert losses[0] < losses[1] < losses[2] and losses[0] < 0.01
    logits = torch.zeros_like(y, requires_grad=True)
    fn(logits, y).backward()
    assert (logits.grad[y > 0] < 0).all() and (logits.grad[y == 0] > 0).all()


def test_unknown_loss_name_is_an_error():
    with pytest.raises(ValueError, match="unknown loss 'dice'"):
        seg_loss("dice")
