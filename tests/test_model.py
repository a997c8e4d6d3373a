import pytest
import torch

from busseg.config import ModelConfig
from busseg.losses import deep_supervision_loss, presence_loss
from busseg.models import count_parameters, create_model
from busseg.models.unet import split_output


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


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("stem", [1, 2])
def test_deep_supervision_at_every_depth(depth, stem):
    model = create_model("unet", width=4, depth=depth, stem_stride=stem, deep_supervision=True)
    outs = model(torch.rand(2, 1, 64, 64))
    assert isinstance(outs, list) and len(outs) == 1 + min(depth, 2)
    assert outs[0].shape == (2, 1, 64, 64)
    coarsest = 64 // stem // 2 ** (depth - 1)  # output of the first decoder stage
    assert outs[1].shape == (2, 1, coarsest, coarsest)
    y = (torch.rand(2, 1, 64, 64) > 0.5).float()
    deep_supervision_loss(outs, y).backward()  # every auxiliary output trains
    assert all(a.weight.grad is not None for a in model.aux)
    assert model.eval()(torch.rand(1, 1, 64, 64)).shape == (1, 1, 64, 64)


def test_presence_head_gives_one_score_per_image_and_learns():
    model = create_model("unet", width=4, depth=3, presence_head=True)
    seg, presence = split_output(model(torch.rand(3, 1, 48, 64)))
    assert seg.shape == (3, 1, 48, 64) and presence.shape == (3,)
    y = torch.zeros(3, 1, 48, 64)
    y[0, 0, 10:20, 10:20] = 1
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    x = torch.rand(3, 1, 48, 64)
    x[0, 0, 10:20, 10:20] = 0.0  # a dark "lesion" only in image 0
    for _ in range(30):
        loss = presence_loss(split_output(model(x))[1], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        score = torch.sigmoid(split_output(model.eval()(x))[1])
    assert score[0] > 0.5 > max(score[1], score[2])
    assert split_output(torch.zeros(1))[1] is None


def test_unknown_model_and_bad_shape():
    with pytest.raises(KeyError, match="unknown model"):
        create_model("resnet")
    with pytest.raises(ValueError):
        create_model("unet", depth=0)
    with pytest.raises(ValueError, match="norm='layer'"):
        create_model("unet", norm="layer")


def test_instance_norm_scores_each_image_alone():
    """With `norm='instance'` no BatchNorm is left and an image's output in training mode does
    not depend on the other images of its batch (it does with BatchNorm)."""
    torch.manual_seed(0)
    x = torch.rand(3, 1, 64, 64)
    for norm, independent in (("instance", True), ("batch", False)):
        model = create_model("unet", width=4, depth=3, norm=norm).train()
        has_bn = any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
        assert has_bn is not independent
        with torch.no_grad():
            alone, batched = model(x[:1]), model(x)[:1]
        assert torch.allclose(alone, batched, atol=1e-5) is independent
    assert ModelConfig(norm="instance").norm == "instance"
    with pytest.raises(ValueError):
        ModelConfig(norm="layer")


def test_checkpoint_saved_before_norm_existed_loads_as_batchnorm(tmp_path):
    """The default is `instance`, but a checkpoint whose model config has no `norm` key holds
    BatchNorm weights and loads as such; an instance config over them is a clear error."""
    from busseg.checkpoint import load_model, save_checkpoint

    assert ModelConfig().norm == "instance"
    net = create_model("unet", width=4, depth=3, norm="batch")
    old = {"name": "unet", "width": 4, "depth": 3, "stem_stride": 2,
           "deep_supervision": False, "presence_head": False}
    save_checkpoint(tmp_path / "old.pt", {"model_state": net.state_dict(),
                                           "config": {"model": old, "size": 64}})
    loaded = load_model(tmp_path / "old.pt")
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in loaded.net.modules())
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded.net(x), net.eval()(x), atol=1e-6)
    save_checkpoint(tmp_path / "bad.pt", {"model_state": net.state_dict(), "config": {
        "model": {**old, "norm": "instance"}, "size": 64}})
    with pytest.raises(ValueError, match="bad.pt: weights do not fit"):
        load_model(tmp_path / "bad.pt")
