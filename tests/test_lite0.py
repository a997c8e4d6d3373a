"""The EfficientNet-Lite0 U-Net: ImageNet weights loaded by name, one gray input channel, two
input sizes forward and backward, training through the config, ONNX export matching PyTorch."""

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from busseg.models import count_parameters, create_model
from busseg.models.lite0 import Lite0Encoder, imagenet_key, imagenet_state, load_imagenet


def test_every_encoder_tensor_comes_from_the_imagenet_weights():
    source = imagenet_state()
    enc = Lite0Encoder()
    names = load_imagenet(enc)
    state = enc.state_dict()
    assert names == sorted(state)  # every tensor, buffers (BatchNorm statistics) included
    assert len(names) == 296 - 1 - 5 - 2  # all but the head conv, its BatchNorm, the classifier
    for name in names:
        want = source[imagenet_key(name)]
        if name == "stem.weight":
            want = want.sum(dim=1, keepdim=True)
        assert torch.equal(state[name], want), name
    unused = set(source) - {imagenet_key(n) for n in names}
    assert {k.split(".")[0] for k in unused} == {"_conv_head", "_bn1", "_fc"}


def test_the_gray_stem_is_the_rgb_stem_on_a_replicated_gray_image():
    rgb = imagenet_state()["_conv_stem.weight"]
    enc = Lite0Encoder()
    load_imagenet(enc)
    gray = torch.rand(1, 1, 32, 32)
    assert torch.allclose(enc.stem(gray), F.conv2d(gray.expand(-1, 3, -1, -1), rgb, stride=2,
                                                   padding=1), atol=1e-5)


def test_a_missing_or_misshapen_weight_is_named(monkeypatch):
    from busseg.models import lite0

    good = imagenet_state()
    monkeypatch.setattr(lite0, "imagenet_state",
                        lambda: {k: v for k, v in good.items() if k != "_blocks.7._bn1.bias"})
    with pytest.raises(ValueError, match=r"_blocks\.7\._bn1\.bias.*blocks\.7\.depthwise_bn"):
        load_imagenet(Lite0Encoder())
    bad = dict(good, **{"_blocks.3._project_conv.weight": torch.zeros(1, 1, 1, 1)})
    monkeypatch.setattr(lite0, "imagenet_state", lambda: bad)
    with pytest.raises(ValueError, match=r"_blocks\.3\._project_conv\.weight.*is \(1, 1, 1, 1\)"):
        load_imagenet(Lite0Encoder())


@pytest.mark.parametrize("shape", [(2, 1, 64, 64), (2, 1, 96, 80)])
def test_forward_and_backward_at_two_sizes(shape):
    torch.manual_seed(0)
    model = create_model("lite0_unet")
    out = model(torch.rand(*shape))
    assert out.logits.shape == shape and out.presence is None
    out.logits.mean().backward()
    for name in ("encoder.stem.weight", "encoder.blocks.15.project.weight", "head.2.weight",
                 "decoder.0.conv.0.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    assert count_parameters(model) < 5_000_000


def test_random_weights_differ_from_imagenet_and_the_decoder_width_counts():
    torch.manual_seed(0)
    random = create_model("lite0_unet", encoder_weights="random")
    pretrained = create_model("lite0_unet")
    key = "encoder.blocks.15.project.weight"
    assert not torch.equal(random.state_dict()[key], pretrained.state_dict()[key])
    wide = create_model("lite0_unet", decoder_width=16, presence_head=True)
    assert count_parameters(wide) > count_parameters(pretrained)
    assert wide(torch.rand(1, 1, 64, 64)).presence.shape == (1,)
    assert wide.features(torch.rand(3, 1, 64, 64)).shape == (3, 640)
    with pytest.raises(ValueError, match="decoder_width"):
        create_model("lite0_unet", decoder_width=1)


@pytest.fixture(scope="module")
def lite0_run(prepared, tmp_path_factory):
    from busseg.config import resolve_config
    from busseg.train import train

    out = tmp_path_factory.mktemp("lite0_run")
    train(resolve_config(None, [f"data={prepared}", f"out={out}", "size=64", "epochs=1",
                                "epoch_steps=3", "batch_size=4", "warmup_epochs=0", "amp=fp32",
                                "compile=false", "model={name: lite0_unet}"]))
    return out


def test_lite0_trains_and_exports_to_onnx_matching_pytorch(lite0_run, tmp_path):
    from busseg.checkpoint import load_model
    from busseg.export import export_onnx

    loaded = load_model(lite0_run / "unet_final.pt")
    assert loaded.net.__class__.__name__ == "Lite0UNet"
    path = tmp_path / "lite0.onnx"
    export_onnx(loaded, path)
    sess = ort.InferenceSession(str(path))
    for shape in [(1, 1, 64, 64), (2, 1, 70, 90)]:
        x = torch.rand(*shape)
        with torch.no_grad():
            ref = torch.sigmoid(loaded.net(x).logits).numpy()
        got = sess.run(None, {"image": x.numpy()})[0]
        assert got.shape == ref.shape
        assert np.abs(got - ref).max() < 1e-4


def test_training_starts_from_imagenet_and_loading_a_checkpoint_never_reads_it(monkeypatch):
    from busseg.checkpoint import build_from_config
    from busseg.models import lite0

    cfg = {"name": "lite0_unet", "encoder_weights": "imagenet", "decoder_width": 8}
    fresh = build_from_config(cfg, fresh=True)
    want = imagenet_state()["_blocks.9._depthwise_conv.weight"]
    assert torch.equal(fresh.state_dict()["encoder.blocks.9.depthwise.weight"], want)

    def unavailable():
        raise AssertionError("read the ImageNet weights")

    monkeypatch.setattr(lite0, "imagenet_state", unavailable)
    assert build_from_config(cfg).__class__.__name__ == "Lite0UNet"
