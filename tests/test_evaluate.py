import json
import shutil

import numpy as np
import pytest
from PIL import Image
from synth import scan, write_png

from busseg.evaluate import evaluate


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
