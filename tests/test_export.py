import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from busseg.checkpoint import load_model
from busseg.export import export_onnx
from busseg.imageio import read_pil
from busseg.inference import ModelChoice
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
        ref = torch.sigmoid(loaded.net(x).logits).numpy()
    got = sess.run(None, {"image": x.numpy()})[0]
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() < 1e-4


def test_onnx_matches_torch_on_real_scan(exported, real_busi):
    loaded, sess, _ = exported
    x = prepare_input(read_pil(real_busi / "malignant" / "malignant (1).png"), loaded.size)
    with torch.no_grad():
        ref = torch.sigmoid(loaded.net(x).logits).numpy()
    assert np.abs(sess.run(None, {"image": x.numpy()})[0] - ref).max() < 1e-4


def test_predict_with_onnx_backend_agrees(tiny_run, exported, tmp_path):
    from synth import scan, write_png

    img = write_png(tmp_path / "in" / "a.png", scan(2, h=90, w=130)[0])
    t = predict([str(img)], tmp_path / "t", tiny_run / "unet_final.pt", progress=False)
    o = predict([str(img)], tmp_path / "o",
                ModelChoice(tiny_run / "unet_final.pt", backend="onnx", onnx_path=exported[2]),
                progress=False)
    assert o.errors == [] and o.rows[0]["height"] == 90
    assert abs(t.rows[0]["lesion_area_px"] - o.rows[0]["lesion_area_px"]) <= 2


def test_safetensors_export_loads_identically(tiny_run, tmp_path):
    from busseg.checkpoint import export_safetensors, run_dir_of

    out = export_safetensors(tiny_run / "unet_final.pt", tmp_path / "m.safetensors")
    a, b = load_model(tiny_run / "unet_final.pt"), load_model(out)
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(a.net(x).logits, b.net(x).logits)
    assert (a.size, a.threshold) == (b.size, b.threshold) and b.name == "m"
    assert (run_dir_of(out) / "val_dice.npy").is_file()
    assert (run_dir_of(out) / "config.yaml").is_file()


@pytest.fixture(scope="module")
def presence_model(prepared, tmp_path_factory):
    """A tiny model with a presence head and tuned settings beside it."""
    from busseg.config import resolve_config
    from busseg.postprocess import PostprocessSettings, save_settings
    from busseg.train import train

    out = tmp_path_factory.mktemp("presence")
    train(resolve_config(None, [
        f"data={prepared}", f"out={out}", "size=64", "epochs=1", "batch_size=4",
        "model.width=4", "model.depth=2", "model.presence_head=true", "amp=fp32"]))
    settings = PostprocessSettings(threshold=0.35, tta=True, presence_threshold=0.2,
                                   min_area_frac=0.001)
    save_settings(settings, out / "postprocess.json")
    return out / "unet_final.pt", settings


def test_onnx_carries_its_settings_and_lesion_score(presence_model, tmp_path):
    from busseg.export import read_onnx_metadata
    from busseg.inference import onnx_forward, torch_forward

    ckpt, settings = presence_model
    path = export_onnx(ckpt, tmp_path / "m.onnx")
    meta = read_onnx_metadata(path)
    assert meta["postprocess"] == settings.to_dict() and meta["size"] == 64
    assert meta["busseg_version"] and "export" in meta
    x = torch.rand(2, 1, 64, 64)
    (p_t, s_t), (p_o, s_o) = torch_forward(load_model(ckpt))(x), onnx_forward(path)(x)
    assert s_o.shape == (2,) and torch.allclose(s_t, s_o, atol=1e-4)
    assert torch.allclose(p_t, p_o, atol=1e-4)
    with pytest.raises(FileExistsError):
        export_onnx(ckpt, path)


def test_predict_onnx_uses_the_files_settings(presence_model, tmp_path):
    from synth import scan, write_png

    ckpt, settings = presence_model
    img = write_png(tmp_path / "in" / "a.png", scan(3, h=70, w=90)[0])
    path = export_onnx(ckpt, tmp_path / "m.onnx")
    # the shipped model's settings must not leak into a file that carries its own
    r = predict([str(img)], tmp_path / "o", ModelChoice(backend="onnx", onnx_path=path),
                progress=False)
    assert r.errors == []
    doc = (tmp_path / "o" / "results.json").read_text()
    assert f'"threshold": {settings.threshold}' in doc


def test_onnx_without_settings_is_refused_unless_threshold(exported, tmp_path):
    import onnx

    bare = tmp_path / "bare.onnx"
    model = onnx.load(str(exported[2]))
    del model.metadata_props[:]
    onnx.save(model, str(bare))
    from synth import scan, write_png

    img = write_png(tmp_path / "in" / "a.png", scan(4)[0])
    with pytest.raises(ValueError, match="carries no busseg settings"):
        predict([str(img)], tmp_path / "o", ModelChoice(backend="onnx", onnx_path=bare),
                progress=False)
    r = predict([str(img)], tmp_path / "o2",
                ModelChoice(threshold=0.5, backend="onnx", onnx_path=bare), progress=False)
    assert r.errors == [] and len(r.rows) == 1


def test_int8_export_runs_and_stays_close(presence_model, prepared, tmp_path):
    from busseg.export import read_onnx_metadata
    from busseg.inference import onnx_forward

    ckpt, settings = presence_model
    fp32 = export_onnx(ckpt, tmp_path / "fp32.onnx")
    int8 = export_onnx(ckpt, tmp_path / "int8.onnx", int8_calibration=prepared / "train" / "images")
    assert read_onnx_metadata(int8)["postprocess"] == settings.to_dict()
    import onnx

    graph = onnx.load(str(int8)).graph
    ops = {n.op_type for n in graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    int8_weights = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
    n_conv = sum(n.op_type in ("Conv", "ConvTranspose") for n in graph.node)
    assert len(int8_weights) >= n_conv - 1  # every convolution's weights stored as int8
    consumers = {i: n.op_type for n in graph.node for i in n.input}
    for op in ("MaxPool", "Concat"):  # activations stay int8 between convolutions
        outs = [n.output[0] for n in graph.node if n.op_type == op
                and (op == "MaxPool" or "/ups." in n.output[0])]  # not the shape arithmetic
        assert outs and all(consumers.get(o) == "QuantizeLinear" for o in outs), op
    floats = {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    assert all(n.input[1] in floats  # transposed convolutions keep fp32 weights
               for n in graph.node if n.op_type == "ConvTranspose")
    x = torch.rand(2, 1, 64, 64)
    p32, s32 = onnx_forward(fp32)(x)
    p8, s8 = onnx_forward(int8)(x)
    assert p8.shape == p32.shape and s8.shape == (2,)
    assert (p8 - p32).abs().mean() < 0.05


def test_evaluate_with_onnx_backend_matches_torch(presence_model, prepared, tmp_path):
    from busseg.evaluate import evaluate

    ckpt, _ = presence_model
    path = export_onnx(ckpt, tmp_path / "m.onnx")
    t = evaluate(ckpt, prepared / "test", tmp_path / "t", progress=False)
    o = evaluate(ModelChoice(backend="onnx", onnx_path=path), prepared / "test", tmp_path / "o",
                 progress=False)
    assert abs(t["dice"] - o["dice"]) < 0.01 and o["backend"] == "onnx"


def test_instance_norm_model_exports_and_matches_torch(prepared, tmp_path):
    """A model trained with `model.norm=instance` loads from its checkpoint and exports to an
    ONNX graph that gives torch's probabilities at sizes the network must pad."""
    from busseg.config import resolve_config
    from busseg.train import train

    train(resolve_config(None, [
        f"data={prepared}", f"out={tmp_path / 'run'}", "size=64", "epochs=1", "batch_size=4",
        "model.width=4", "model.depth=2", "model.norm=instance", "amp=fp32"]))
    loaded = load_model(tmp_path / "run" / "unet_final.pt")
    norms = sum(isinstance(m, torch.nn.GroupNorm) for m in loaded.net.modules())
    assert norms > 0
    path = export_onnx(loaded, tmp_path / "inst.onnx")
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    # one InstanceNormalization per norm layer, without a reshape, multiply and add around it
    assert ops.count("InstanceNormalization") == norms and ops.count("Mul") < norms
    assert sum(isinstance(m, torch.nn.GroupNorm) for m in loaded.net.modules()) == norms
    sess = ort.InferenceSession(str(path))
    x = torch.rand(2, 1, 50, 77)
    with torch.no_grad():
        ref = torch.sigmoid(loaded.net(x).logits).numpy()
    got = sess.run(None, {"image": x.numpy()})[0]
    assert got.shape == ref.shape and np.abs(got - ref).max() < 1e-4


def test_int8_export_without_a_calibration_folder_is_one_line(tiny_run, tmp_path, capsys):
    from busseg.cli import main

    assert main(["export", "--checkpoint", str(tiny_run / "unet_final.pt"), "--int8",
                 "--calibration", str(tmp_path / "missing"), "--out",
                 str(tmp_path / "m.onnx")]) == 1
    err = capsys.readouterr().err
    assert "missing: calibration folder not found" in err and "Traceback" not in err
