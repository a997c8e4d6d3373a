"""Where a training step of the default model spends its time, by kind of operator.

    python benchmarks/profile_train.py [--precision bf16|fp32] [--steps 10] [--batch 8] [--compile]

Profiles `--steps` training steps of `busseg train`'s trainer (sampling, augmentation,
forward, backward, AdamW, EMA), exactly as `bench_speed.py` times them, with torch.profiler,
and prints the share of the step's CPU time spent in convolutions (forward and backward),
batch or group norm, element-wise work and everything else. Only convolution time runs near the
matmul roof; the rest is memory-bound, which bounds the fraction of the roof a whole step can reach.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch
from bench_speed import bench_trainer  # the steps bench_speed.py times
from torch.profiler import ProfilerActivity, profile

KINDS = (  # first match wins; names are ATen / oneDNN operator names
    ("convolution", ("conv",)),  # aten and oneDNN convolutions, forward and backward
    ("batch norm", ("batch_norm",)),
    ("group / instance norm", ("group_norm",)),
    ("augmentation", ("grid_sampler", "affine_grid", "normal", "uniform", "rand")),
    ("optimizer and EMA", ("_foreach", "adam", "lerp")),
    ("pool / upsample copy", ("max_pool", "cat", "copy_", "contiguous", "to_copy", "clone")),
    ("element-wise", ("relu", "threshold", "add", "mul", "sub", "div", "sigmoid", "binary_cross",
                      "sum", "mean", "pow", "sqrt", "where", "fill", "zero", "clamp")),
)


def kind_of(name: str) -> str:
    low = name.lower()
    for kind, keys in KINDS:
        if any(k in low for k in keys):
            return kind
    return "other"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--compile", action="store_true",
                    help="the training step through torch.compile (`compile: true`)")
    args = ap.parse_args()
    dtype = torch.bfloat16 if args.precision == "bf16" else None
    trainer = bench_trainer(torch.device("cpu"), args.batch, dtype,
                            overrides=("compile=true",) if args.compile else ())

    def step():  # one batch: the trainer's epoch over a split of one batch
        trainer.train_epoch(0)

    for _ in range(3):
        step()
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    wall = (time.perf_counter() - t0) / args.steps
    shares: dict[str, float] = defaultdict(float)
    for ev in prof.key_averages():
        shares[kind_of(ev.key)] += ev.self_cpu_time_total
    total = sum(shares.values())
    print(f"{args.precision}, batch {args.batch}, {torch.get_num_threads()} threads: "
          f"{wall * 1e3:.0f} ms per step under the profiler")
    print(f"{'kind':<22} {'share of CPU time':>18}")
    for kind, t in sorted(shares.items(), key=lambda kv: -kv[1]):
        print(f"{kind:<22} {t / total:17.1%}")


if __name__ == "__main__":
    main()
