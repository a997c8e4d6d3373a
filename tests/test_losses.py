import pytest
import torch

from busseg.config import resolve_config
from busseg.losses import LOSSES, bce_dice, get_loss, soft_dice_loss
from busseg.models import SegOutput


def _target():
    y = torch.zeros(2, 1, 16, 16)
    y[:, :, 4:12, 4:12] = 1
    return y


def test_better_prediction_has_lower_loss():
    y = _target()
    perfect = (y * 2 - 1) * 8
    shifted = torch.roll(perfect, shifts=3, dims=-1)
    blank = torch.full_like(y, -8.0)
    losses = [float(bce_dice(p, y)) for p in (perfect, shifted, blank)]
    assert losses[0] < losses[1] < losses[2]
    assert losses[0] < 0.01


def test_soft_dice_bounds():
    y = _target()
    assert float(soft_dice_loss((y * 2 - 1) * 20, y)) < 1e-3
    assert float(soft_dice_loss(-(y * 2 - 1) * 20, y)) > 0.95


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_registered_loss_ranks_predictions_and_trains(name):
    y = _target()
    perfect = (y * 2 - 1) * 8
    shifted = torch.roll(perfect, shifts=3, dims=-1)
    blank = torch.full_like(y, -8.0)
    fn = get_loss(name)
    losses = [float(fn(SegOutput(p), y)) for p in (perfect, shifted, blank)]
    assert losses[0] < losses[1] < losses[2] and losses[0] < 0.01
    logits = torch.zeros_like(y, requires_grad=True)
    fn(SegOutput(logits), y).backward()
    assert (logits.grad[y > 0] < 0).all() and (logits.grad[y == 0] > 0).all()


def test_unknown_loss_name_is_an_error():
    with pytest.raises(ValueError, match="unknown loss 'dice'"):
        get_loss("dice")
    with pytest.raises(ValueError, match="unknown loss 'dice'; known: bce_dice"):
        resolve_config(None, ["loss=dice"])
