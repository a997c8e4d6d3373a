"""The shipped default model and sample scans work straight after installation."""

import json

import numpy as np
from PIL import Image

from busseg.checkpoint import DEFAULT_WEIGHTS, load_model
from busseg.cli import main
from busseg.metrics import image_metrics
from busseg.models import count_parameters
from busseg.predict import SAMPLES_DIR, sample_files


def test_shipped_weights_are_small_and_load():
    assert DEFAULT_WEIGHTS.is_file()
    assert DEFAULT_WEIGHTS.stat().st_size < 16 * 2**20
    model = load_model()
    assert count_parameters(model.net) <= 5_000_000  # the shipped model's parameter budget
    assert model.size == 256 and 0 < model.threshold < 1


def test_predict_samples_out_of_the_box(tmp_path):
    assert main(["predict", "--samples", "--out", str(tmp_path), "--overlay"]) == 0
    doc = json.loads((tmp_path / "results.json").read_text())
    assert len(doc["images"]) == len(sample_files()) == 4
    for row in doc["images"]:
        pred = np.array(Image.open(tmp_path / f"{row['name']}_mask.png")) > 0
        truth = np.array(Image.open(SAMPLES_DIR / f"{row['name']}_mask.png").convert("L")) > 0
        assert pred.shape == truth.shape
        # the samples come from the test split, unseen in training
        assert image_metrics(pred, truth, with_hd95=False)["dice"] > 0.5, row["name"]


def test_report_of_the_shipped_model_uses_its_logs(prepared, tmp_path):
    from busseg.report import SHIPPED_RUN, build_report

    assert (SHIPPED_RUN / "val_dice.npy").is_file()
    page = build_report(None, prepared / "test", tmp_path / "r.html", progress=False).read_text()
    assert page.count("data:image/png;base64,") == 6
    assert "3,297,149 parameters" in page
