import subprocess
import sys

import pytest

VERBS = ["prepare", "train", "evaluate", "predict", "export", "tune", "report", "serve"]


@pytest.mark.parametrize("verb", VERBS)
def test_help_of_every_verb(verb):
    r = subprocess.run([sys.executable, "-m", "busseg", verb, "--help"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0
    assert f"busseg {verb}" in r.stdout


def test_errors_are_one_line_not_tracebacks(tmp_path):
    r = subprocess.run([sys.executable, "-m", "busseg", "prepare", "--raw", str(tmp_path / "no"),
                        "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert "raw BUSI folder not found" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "busseg", "train", "--set", "bogus=1"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "unknown config key(s): bogus" in r.stderr


def test_cli_prepare_train_evaluate_export(raw_tree, tmp_path):
    from busseg.cli import main

    data, run = tmp_path / "data", tmp_path / "run"
    assert main(["prepare", "--raw", str(raw_tree), "--out", str(data), "--size", "64"]) == 0
    assert main(["train", "--data", str(data), "--out", str(run), "--epochs", "1", "--size",
                 "64", "--set", "model.width=4", "--set", "model.depth=2", "--no-progress"]) == 0
    assert main(["evaluate", "--checkpoint", str(run / "unet_final.pt"), "--data",
                 str(data / "test"), "--out", str(tmp_path / "ev")]) == 0
    assert (tmp_path / "ev" / "metrics.json").is_file()
    assert main(["export", "--checkpoint", str(run / "unet_final.pt"), "--out",
                 str(tmp_path / "m.onnx")]) == 0
    assert (tmp_path / "m.onnx").stat().st_size > 1000
