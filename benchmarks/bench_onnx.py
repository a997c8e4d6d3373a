"""Batch-1 latency of exported ONNX files, timed in alternating rounds in one process.

    python benchmarks/bench_onnx.py A.onnx B.onnx [...] [--rounds 7] [--calls 40] [--threads 0]

Each round times `--calls` runs of every file on the same 256x256 input (after 5 warm-up runs),
file after file, so a busy host slows all files alike. Prints, per file, the median and best
round in ms, the ratio of its median to the first file's, the rounds it beat the first file in,
and the largest output difference from the first file (useful when two exports should agree).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from busseg.inference import onnx_forward


def time_rounds(runs: list, x, rounds: int, calls: int) -> np.ndarray:
    """(rounds, files) milliseconds per call; files alternate inside every round."""
    out = np.zeros((rounds, len(runs)))
    for r in range(rounds):
        for i, run in enumerate(runs):
            for _ in range(5):
                run(x)
            start = time.perf_counter()
            for _ in range(calls):
                run(x)
            out[r, i] = (time.perf_counter() - start) / calls * 1e3
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", help="exported .onnx files (busseg export [--int8])")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=40, help="timed calls per file and round")
    ap.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0: default)")
    args = ap.parse_args()
    runs = [onnx_forward(f, args.threads) for f in args.files]  # what busseg itself runs
    x = torch.from_numpy(np.random.default_rng(0).random((1, 1, 256, 256), dtype=np.float32))
    outputs = [run(x)[0].numpy() for run in runs]
    ms = time_rounds(runs, x, args.rounds, args.calls)
    med = np.median(ms, axis=0)
    print(f"{'file':40s} {'median ms':>9s} {'best ms':>8s} {'vs first':>8s} "
          f"{'rounds faster':>13s} {'max |diff|':>10s}")
    for i, f in enumerate(args.files):
        faster = int((ms[:, i] < ms[:, 0]).sum())
        diff = float(np.abs(outputs[i] - outputs[0]).max())
        print(f"{f[-40:]:40s} {med[i]:9.2f} {ms[:, i].min():8.2f} {med[i] / med[0]:7.2f}x "
              f"{faster:>7d} of {args.rounds} {diff:10.2e}")


if __name__ == "__main__":
    main()
