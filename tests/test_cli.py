import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from busseg.cli import build_parser, main

VERBS = ["prepare", "train", "cv", "evaluate", "predict", "export", "tune", "fit-presence",
         "report", "serve"]
RECIPE = str(Path(__file__).parents[1] / "configs" / "busi.yaml")


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
    assert r.returncode == 1 and "unknown config key 'bogus'" in r.stderr


def test_cli_prepare_train_evaluate_export(raw_tree, tmp_path):
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


def test_print_config_shows_every_key_resolved(capsys):
    import yaml

    from busseg.config import TrainConfig, config_to_dict

    assert main(["train", "--config", RECIPE, "--epochs", "7",
                 "--set", "model.width=8", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["epochs"] == 7 and printed["model"]["width"] == 8
    assert printed["optimizer"] == "adamw" and printed["schedule"] == "cosine"
    assert set(printed) == set(config_to_dict(TrainConfig()))
    assert main(["train", "--set", "schedule=cosin", "--print-config"]) == 1
    assert "schedule" in capsys.readouterr().err


def test_every_option_has_help():
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert sorted(sub.choices) == sorted(VERBS)
    for verb, parser in sub.choices.items():
        for action in parser._actions:
            if action.dest != "help":
                assert action.help, f"busseg {verb} {action.option_strings} has no help"


def test_core_verbs_run_without_the_optional_extras(tmp_path):
    """prepare/train/evaluate/predict import nothing from the serve, onnx or report stacks; a
    verb that needs one says which extra to install."""
    script = f"""
import sys
for m in ("fastapi", "uvicorn", "starlette", "multipart", "onnx", "onnxruntime", "onnxscript",
          "matplotlib", "nbclient", "nbformat"):
    sys.modules[m] = None  # importing them now fails, as when the extra is not installed
from busseg.cli import main
assert main(["predict", "--samples", "--out", {str(tmp_path / "p")!r}]) == 0
sys.exit(main(["serve"]))
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 1, r.stderr[-2000:]
    assert (tmp_path / "p" / "results.csv").is_file()
    assert "pip install 'busseg[serve]'" in r.stderr and "Traceback" not in r.stderr
