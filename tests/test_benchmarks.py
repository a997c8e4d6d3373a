"""The speed benchmark times the trainer of `busseg train` itself: keep it runnable."""

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))


def test_bench_trainer_runs_the_recipe_trainer_on_synthetic_scans():
    from bench_speed import bench_trainer, train_speed

    trainer = bench_trainer(torch.device("cpu"), batch=2, dtype=None, steps=2,
                            overrides=("model.width=4", "model.depth=2", "size=64"))
    assert trainer.cfg.optimizer == "adamw" and trainer.cfg.ema > 0  # the recipe's, not a copy
    assert trainer.steps_per_epoch == 2 and trainer.dtype is None
    before = [p.detach().clone() for p in trainer.ema.parameters()]
    row = trainer.train_epoch(0)
    assert np.isfinite(row["train_loss"]) and row["train_size"] == 64
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.ema.parameters()))
    assert train_speed(trainer, repeats=1, sync=lambda: None) > 0


def test_bench_onnx_times_every_file_in_every_round(tiny_run, tmp_path):
    from bench_onnx import time_rounds

    from busseg.export import export_onnx
    from busseg.inference import onnx_forward

    forward = onnx_forward(export_onnx(tiny_run / "unet_final.pt", tmp_path / "tiny.onnx"), 1)
    calls = []

    def run(x):
        calls.append(x.shape)
        return forward(x)

    ms = time_rounds([run, run], torch.zeros(1, 1, 64, 64), rounds=2, calls=3)
    assert ms.shape == (2, 2) and (ms > 0).all()
    assert len(calls) == 2 * 2 * (5 + 3)  # warm-up and timed calls of each file in each round


def test_bench_speed_table_prints_readable_headers_and_ratios(capsys):
    import json

    from bench_speed import print_table

    lab = Path(__file__).parents[1] / "docs" / "lab"
    result = json.loads((lab / "bench_cpu_zen.json").read_text())
    print_table(result)
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.startswith("model "))
    assert "train img/s" in header and "infer b1 ms" in header and "train_img_s" not in header
    fp32 = next(line for line in lines if line.startswith("default fp32 "))
    assert f"{result['rows'][0]['train_img_s']:.1f}" in fp32.split()
    base, second = result["rows"][0], result["rows"][1]  # every row is compared with the first
    ratio = second["train_img_s"] / base["train_img_s"]
    assert sum(" / default fp32: train " in line for line in lines) == len(result["rows"]) - 1
    assert any(f"/ default fp32: train {ratio:.2f}x" in line for line in lines)
