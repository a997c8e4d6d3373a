import json
import shutil

import numpy as np
import pytest
from PIL import Image
from synth import scan, write_png

from busseg.evaluate import evaluate
from busseg.inference import ModelChoice


def test_evaluate_writes_metrics_csv_and_masks(tiny_run, prepared, tmp_path):
    out = tmp_path / "ev"
    s = evaluate(tiny_run / "unet_final.pt", prepared / "test", out, progress=False)
    doc = json.loads((out / "metrics.json").read_text())
    for key in ("dice", "iou", "accuracy", "precision", "recall", "hd95", "n_images",
                "per_class", "dice_ci95"):
        assert key in doc
    n_test = len(list((prepared / "test" / "images").iterdir()))
    assert len(list((out / "test_preds").glob("*_pred.png"))) == n_test
    assert (out / "per_image.csv").read_text().count("\n") == n_test + 1
    assert 0.0 <= s["dice"] <= 1.0
    assert s["n_images"] == sum(c["n_images"] for k, c in s["per_class"].items() if k != "normal")


def test_scores_at_original_resolution_and_survives_bad_file(tiny_run, tmp_path):
    data = tmp_path / "d"
    img, mask = scan(7, h=150, w=211)
    write_png(data / "images" / "malignant (1).png", img)
    write_png(data / "masks" / "malignant (1)_mask.png", mask.astype(np.uint8) * 255)
    write_png(data / "images" / "benign (2).png", img)
    write_png(data / "masks" / "benign (2)_mask.png", mask[:100].astype(np.uint8) * 255)
    s = evaluate(tiny_run / "unet_final.pt", data, tmp_path / "ev", progress=False)
    pred = np.array(Image.open(tmp_path / "ev" / "test_preds" / "malignant (1)_pred.png"))
    assert pred.shape == (150, 211)
    assert s["n_images"] == 1
    assert any("benign (2)_mask.png" in e and "differs" in e for e in s["errors"])


def test_missing_mask_is_a_clear_error(tiny_run, tmp_path):
    write_png(tmp_path / "images" / "x.png", scan(1)[0])
    (tmp_path / "masks").mkdir()
    with pytest.raises(FileNotFoundError, match="lack a mask"):
        evaluate(tiny_run / "unet_final.pt", tmp_path, tmp_path / "ev", progress=False)
    shutil.rmtree(tmp_path / "masks")
    with pytest.raises(FileNotFoundError, match="masks"):
        evaluate(tiny_run / "unet_final.pt", tmp_path, tmp_path / "ev", progress=False)


def _shifted_copy(run, tmp_path, shift: float):
    """A second model: the tiny run's checkpoint with its output bias shifted by `shift`."""
    import torch

    ckpt = torch.load(run / "unet_final.pt", weights_only=True)
    last_bias = [k for k in ckpt["model_state"] if k.endswith("bias")][-1]
    ckpt["model_state"][last_bias] = ckpt["model_state"][last_bias] + shift
    path = tmp_path / "shifted.pt"
    torch.save(ckpt, path)
    return path


def test_ensemble_averages_the_models_probabilities(tiny_run, prepared, tmp_path):
    from busseg.checkpoint import load_model
    from busseg.inference import make_forward, predict_maps, torch_forward

    a, b = tiny_run / "unet_final.pt", _shifted_copy(tiny_run, tmp_path, 2.0)
    image = scan(3, h=80, w=90)[0]
    forward, size, settings = make_forward([a, b])
    ens = predict_maps(forward, [image], size)[0].prob
    singles = [predict_maps(torch_forward(load_model(p)), [image], size)[0].prob for p in (a, b)]
    assert not np.allclose(singles[0], singles[1], atol=1e-3)
    np.testing.assert_allclose(ens, (singles[0] + singles[1]) / 2, atol=1e-5)
    assert settings == load_model(a).settings
    s = evaluate(ModelChoice([a, b], plain=True), prepared / "test", tmp_path / "ev",
                 progress=False)
    assert s["checkpoint"] == f"{a} + {b}"
    with pytest.raises(ValueError, match="torch backend"):
        make_forward([a, b], backend="onnx")


def test_ensemble_refuses_models_of_different_sizes(tiny_run):
    from busseg.inference import make_forward

    with pytest.raises(ValueError, match="one input size"):
        make_forward([tiny_run / "unet_final.pt", None])
