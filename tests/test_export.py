import numpy as np
import onnxruntime as ort
import pytest
import torch

from busseg.checkpoint import load_model
from busseg.export import export_onnx
from busseg.imageio import read_pil
from busseg.predict import predict
from busseg.preprocess import prepare_input


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    loaded = load_model(tiny_run / "unet_final.pt")
    export_onnx(loaded, path)
    return loaded, ort.InferenceSession(str(path)), path


@pytest.mark.parametrize("shape", [(1, 1, 64, 64), (3, 1, 50, 77), (2, 1, 128, 96)])
def test_onnx_matches_torch_on_random_input(exported, shape):
    loaded, sess, _ = exported
    x = torch.rand(*shape)
    with torch.no_grad():
        ref = torch.sigmoid(loaded.net(x)).numpy()
    got = sess.run(None, {"image": x.numpy()})[0]
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() < 1e-4


def test_onnx_matches_torch_on_real_scan(exported, real_busi):
    loaded, sess, _ = exported
    x = prepare_input(read_pil(real_busi / "malignant" / "malignant (1).png"), loaded.size)
    with torch.no_grad():
        ref = torch.sigmoid(loaded.net(x)).numpy()
    assert np.abs(sess.run(None, {"image": x.numpy()})[0] - ref).max() < 1e-4


def test_predict_with_onnx_backend_agrees(tiny_run, exported, tmp_path):
    from synth import scan, write_png

    img = write_png(tmp_path / "in" / "a.png", scan(2, h=90, w=130)[0])
    t = predict([str(img)], tmp_path / "t", tiny_run / "unet_final.pt", progress=False)
    o = predict([str(img)], tmp_path / "o", tiny_run / "unet_final.pt", backend="onnx",
                onnx_path=exported[2], progress=False)
    assert o.errors == [] and o.rows[0]["height"] == 90
    assert abs(t.rows[0]["lesion_area_px"] - o.rows[0]["lesion_area_px"]) <= 2


def test_safetensors_export_loads_identically(tiny_run, tmp_path):
    from busseg.checkpoint import export_safetensors, run_dir_of

    out = export_safetensors(tiny_run / "unet_final.pt", tmp_path / "m.safetensors")
    a, b = load_model(tiny_run / "unet_final.pt"), load_model(out)
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(a.net(x), b.net(x))
    assert (a.size, a.threshold) == (b.size, b.threshold) and b.name == "m"
    assert (run_dir_of(out) / "val_dice.npy").is_file()
    assert (run_dir_of(out) / "config.yaml").is_file()
