import pytest
import torch

from busseg.config import ModelConfig
from busseg.models import count_parameters, create_model


@pytest.mark.parametrize("stem", [1, 2])
@pytest.mark.parametrize("shape", [(1, 64, 64), (2, 37, 91), (1, 256, 256), (3, 17, 17)])
def test_output_shape_matches_input(stem, shape):
    model = create_model("unet", width=4, depth=3, stem_stride=stem).eval()
    n, h, w = shape
    with torch.no_grad():
        out = model(torch.rand(n, 1, h, w))
    assert out.shape == (n, 1, h, w)
    assert torch.isfinite(out).all()


def test_default_model_is_light():
    cfg = ModelConfig()
    model = create_model(cfg.name, width=cfg.width, depth=cfg.depth, stem_stride=cfg.stem_stride)
    assert count_parameters(model) <= 2_000_000
    assert count_parameters(create_model("unet_classic")) > 30_000_000


def test_input_is_standardised_inside():
    model = create_model("unet", width=4, depth=2).eval()
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), model(x * 0.5 + 0.2), atol=1e-4)


def test_deep_supervision_outputs_only_in_training():
    model = create_model("unet", width=4, depth=3, deep_supervision=True)
    outs = model(torch.rand(2, 1, 64, 64))
    assert isinstance(outs, list) and len(outs) == 3
    assert outs[0].shape == (2, 1, 64, 64) and outs[1].shape == (2, 1, 16, 16)
    assert model.eval()(torch.rand(1, 1, 64, 64)).shape == (1, 1, 64, 64)


def test_unknown_model_and_bad_shape():
    with pytest.raises(KeyError, match="unknown model"):
        create_model("resnet")
    with pytest.raises(ValueError):
        create_model("unet", depth=0)
