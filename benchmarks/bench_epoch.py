"""Whole training epochs of the default recipe, eager against the compiled step, taken in turn.

    python benchmarks/bench_epoch.py [--data data] [--rounds 3] [--set key=value ...]

Builds two trainers of `configs/busi.yaml` on the prepared train / val split (`busseg prepare`),
one with `compile: false` and one with `compile: true`, and times whole epochs of each in turn
(the sampled, augmented training batches and the validation of raw and EMA weights, as `busseg
train` runs them), so a busy host slows both alike. Prints the seconds per epoch of each and the
ratio; the compile itself (the first epoch of the compiled trainer) is timed apart.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from busseg.config import resolve_config
from busseg.data.dataset import load_split
from busseg.distributed import DistInfo
from busseg.trainer import Trainer

CONFIG = Path(__file__).parents[1] / "configs" / "busi.yaml"


def epoch_time(trainer: Trainer, epoch: int) -> float:
    """Seconds of one training epoch and its validation."""
    t = time.perf_counter()
    trainer.train_epoch(epoch)
    trainer.validate_epoch()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default="data")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    help="config override key=value (repeatable)")
    args = ap.parse_args()
    device = torch.device("cpu")
    trainers, firsts = {}, {}
    train_set = val_set = None
    with tempfile.TemporaryDirectory(prefix="busseg_bench_epoch_") as tmp:
        for compiled in (False, True):
            cfg = resolve_config(CONFIG, [f"data={args.data}", f"out={tmp}/{compiled}",
                                          f"compile={str(compiled).lower()}",
                                          *args.overrides])
            if train_set is None:
                train_set = load_split(Path(cfg.data) / "train", cfg.size)
                val_set = load_split(Path(cfg.data) / "val", cfg.size)
            trainers[compiled] = Trainer(cfg, DistInfo(), device, train_set, val_set, {})
            firsts[compiled] = epoch_time(trainers[compiled], 0)  # compiles when compiled
        times: dict[bool, list[float]] = {False: [], True: []}
        for r in range(args.rounds):
            for compiled in (False, True):
                times[compiled].append(epoch_time(trainers[compiled], 1 + r))
    t = trainers[False]
    print(f"{len(t.train_set)} train / {len(t.val_set)} val scans, {t.steps_per_epoch} steps of "
          f"{t.cfg.batch_size}, {torch.get_num_threads()} threads, precision "
          f"{t.precision['precision']}, torch {torch.__version__}")
    print(f"{'step':<10}{'first epoch s':>15}{'epoch s (median)':>18}{'epochs s':>28}")
    for compiled, name in ((False, "eager"), (True, "compiled")):
        row = " ".join(f"{x:.1f}" for x in times[compiled])
        print(f"{name:<10}{firsts[compiled]:>15.1f}{statistics.median(times[compiled]):>18.1f}"
              f"{row:>28}")
    ratio = statistics.median(times[False]) / statistics.median(times[True])
    print(f"compiled / eager: {ratio:.2f}x faster per epoch")


if __name__ == "__main__":
    main()
