"""The worked example of docs/explanation/architecture.md: adding a model and a loss is a
class or function and one registry line; the config checks both, training and prediction use
them. Copy this file as the template for a new model's or loss's test."""

import pytest
import torch
from torch import nn

from busseg.config import resolve_config
from busseg.losses import LOSSES, bce_dice
from busseg.models import MODELS, SegOutput


class TinySegNet(nn.Module):
    """Two 3x3 convolutions: the smallest network busseg can train.

    Args:
        width: channels between the two convolutions.
        dilation: dilation of the first convolution.
    """

    def __init__(self, width: int = 4, dilation: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=dilation, dilation=dilation), nn.ReLU(),
            nn.Conv2d(width, 1, 3, padding=1))

    def forward(self, x: torch.Tensor) -> SegOutput:
        return SegOutput(self.body(x))


def bce_only(out: SegOutput, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy alone (an example loss)."""
    return nn.functional.binary_cross_entropy_with_logits(out.logits.float(), target)


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(MODELS, "tiny", TinySegNet)  # in the package: a line in MODELS
    monkeypatch.setitem(LOSSES, "bce_only", bce_only)  # in the package: a line in LOSSES


def test_the_config_checks_a_new_models_arguments(registered):
    cfg = resolve_config(None, ["model.name=tiny", "model.width=2"])
    assert cfg.model.arguments == {"width": 2, "dilation": 1}
    with pytest.raises(ValueError, match="model 'tiny' takes no argument 'depth'"):
        resolve_config(None, ["model.name=tiny", "model.depth=3"])
    with pytest.raises(ValueError, match="'model.width'"):
        resolve_config(None, ["model.name=tiny", "model.width=two"])
    assert resolve_config(None, ["loss=bce_only"]).loss == "bce_only"


def test_a_new_model_and_loss_train_and_segment(registered, prepared, tmp_path):
    from busseg.checkpoint import load_model
    from busseg.inference import segment
    from busseg.train import train

    cfg = resolve_config(None, [
        f"data={prepared}", f"out={tmp_path}", "size=64", "epochs=1", "batch_size=4",
        "model.name=tiny", "model.width=3", "loss=bce_only", "amp=fp32",
        "compile=false"])
    summary = train(cfg)
    assert summary["epochs_run"] == 1 and 0 <= summary["best_val_dice"] <= 1
    loaded = load_model(tmp_path / "unet_final.pt")
    assert isinstance(loaded.net, TinySegNet) and loaded.net.body[0].out_channels == 3
    mask = segment(loaded, torch.rand(50, 70).numpy())
    assert mask.shape == (50, 70) and mask.dtype == bool
    y = torch.zeros(1, 1, 8, 8)
    out = SegOutput(torch.zeros(1, 1, 8, 8))
    assert bce_only(out, y) < bce_dice(out.logits, y)  # no Dice term
