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
