import pytest
import torch

from busseg.config import ModelConfig, resolve_config
from busseg.models import SegOutput, count_parameters, create_model


@pytest.mark.parametrize("stem", [1, 2])
@pytest.mark.parametrize("shape", [(1, 64, 64), (2, 37, 91), (1, 256, 256), (3, 17, 17)])
def test_output_shape_matches_input(stem, shape):
    model = create_model("unet", width=4, depth=3, stem_stride=stem).eval()
    n, h, w = shape
    with torch.no_grad():
        out = model(torch.rand(n, 1, h, w))
    assert isinstance(out, SegOutput) and out.presence is None and out.aux == ()
    assert out.logits.shape == (n, 1, h, w)
    assert torch.isfinite(out.logits).all()


def test_default_model_is_the_shipped_shape_and_light():
    cfg = ModelConfig()
    assert cfg.arguments == {"width": 8, "depth": 5, "in_channels": 1, "stem_stride": 2,
                             "presence_head": False, "norm": "instance"}
    model = create_model(cfg.name, **cfg.arguments)
    assert count_parameters(model) <= 2_000_000
    assert count_parameters(create_model("unet_classic")) > 30_000_000


def test_input_is_standardised_inside():
    model = create_model("unet", width=4, depth=2).eval()
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x).logits, model(x * 0.5 + 0.2).logits, atol=1e-4)


def test_presence_head_reads_the_features_method():
    model = create_model("unet", width=4, depth=3, presence_head=True).eval()
    x = torch.rand(3, 1, 48, 64)
    with torch.no_grad():
        out, feats = model(x), model.features(x)
    assert out.logits.shape == (3, 1, 48, 64) and out.presence.shape == (3,)
    assert feats.shape == (3, 2 * 4 * 2**3)
    assert torch.allclose(out.presence, model.presence(feats)[:, 0], atol=1e-6)


def test_model_arguments_are_checked_against_the_constructor():
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        create_model("resnet")
    with pytest.raises(ValueError, match="takes no argument 'deep_supervision'"):
        create_model("unet", deep_supervision=True)
    with pytest.raises(ValueError, match="'model.norm'"):
        create_model("unet", norm="layer")
    with pytest.raises(ValueError, match="'model.width'"):
        resolve_config(None, ["model.width=wide"])
    with pytest.raises(ValueError, match="takes no argument 'colour'"):
        resolve_config(None, ["model.colour=1"])
    with pytest.raises(ValueError, match="refuses these arguments.*depth=0"):
        create_model("unet", depth=0)
    with pytest.raises(ValueError, match="refuses these arguments.*width=0"):
        resolve_config(None, ["model.width=0"])  # the constructor's own checks, at load
    cfg = resolve_config(None, ["model.name=unet_classic", "model.width=4"])
    assert cfg.model.arguments["width"] == 4 and cfg.model.arguments["norm"] == "batch"


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
            alone, batched = model(x[:1]).logits, model(x).logits[:1]
        assert torch.allclose(alone, batched, atol=1e-5) is independent


def test_checkpoint_saved_before_norm_existed_loads_as_batchnorm(tmp_path):
    """A checkpoint whose model config has no `norm` key (and the `deep_supervision: false` of
    its time) holds BatchNorm weights and loads as such; an instance config over them is a
    clear error."""
    from busseg.checkpoint import load_model, save_checkpoint

    net = create_model("unet", width=4, depth=3, norm="batch")
    old = {"name": "unet", "width": 4, "depth": 3, "stem_stride": 2,
           "deep_supervision": False, "presence_head": False}
    save_checkpoint(tmp_path / "old.pt", {"model_state": net.state_dict(),
                                           "config": {"model": old, "size": 64}})
    loaded = load_model(tmp_path / "old.pt")
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in loaded.net.modules())
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded.net(x).logits, net.eval()(x).logits, atol=1e-6)
    save_checkpoint(tmp_path / "bad.pt", {"model_state": net.state_dict(), "config": {
        "model": {**old, "norm": "instance"}, "size": 64}})
    with pytest.raises(ValueError, match="bad.pt: weights do not fit"):
        load_model(tmp_path / "bad.pt")
