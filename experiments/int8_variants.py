"""Batch-1 latency of int8 ONNX variants of the shipped model against fp32, on one real scan.

    python experiments/int8_variants.py --calibration data/train/images --scan SCAN.png

Prints a table (median ms over --rounds blocks of --repeats runs per variant, the blocks taken
in turn so a shared host hits every variant alike) and the largest probability difference
against fp32 on the scan.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def session(path: Path, threads: int, static_dims: bool):
    """An ONNX Runtime CPU session (threads 0: its default; static_dims: batch 1, 256x256)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    if static_dims:
        for dim in ("batch", "height", "width"):
            opts.add_free_dimension_override_by_name(dim, 1 if dim == "batch" else 256)
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--calibration", required=True)
    ap.add_argument("--scan", required=True)
    ap.add_argument("--repeats", type=int, default=50, help="timed runs per block")
    ap.add_argument("--rounds", type=int, default=4, help="blocks per variant")
    args = ap.parse_args()

    from busseg.checkpoint import load_model
    from busseg.export import INT8_OPS, calibration_batches, export_onnx, quantize_int8
    from busseg.imageio import read_pil
    from busseg.preprocess import prepare_input

    loaded = load_model(None)
    x = prepare_input(read_pil(args.scan), loaded.size).numpy()
    batches = calibration_batches(args.calibration, loaded.size)
    tmp = Path(tempfile.mkdtemp())
    fp32 = export_onnx(loaded, tmp / "fp32.onnx")
    variants = {"fp32": (fp32, 0, False)}
    specs = {  # name: quantized op types
        "int8 Conv": ("Conv",),
        "int8 Conv+Relu+MaxPool+Concat (busseg export --int8)": INT8_OPS,
        "int8 all, ConvTranspose included": (*INT8_OPS, "ConvTranspose"),
    }
    for name, op_types in specs.items():
        path = tmp / f"{len(variants)}.onnx"
        quantize_int8(fp32, path, batches, op_types)
        variants[name] = (path, 0, False)
    for name in ("fp32", "int8 Conv+Relu+MaxPool+Concat (busseg export --int8)"):
        variants[name + ", 1 thread"] = (variants[name][0], 1, False)
        variants[name + ", static dims"] = (variants[name][0], 0, True)
    sessions = {n: session(p, t, s) for n, (p, t, s) in variants.items()}
    ref = sessions["fp32"].run(None, {"image": x})[0]
    times: dict[str, list[float]] = {n: [] for n in sessions}
    for _ in range(args.rounds):  # blocks per variant (an idle session's threads spin a while)
        for n, s in sessions.items():
            for _ in range(10):
                s.run(None, {"image": x})
            for _ in range(args.repeats):
                t = time.perf_counter()
                s.run(None, {"image": x})
                times[n].append(time.perf_counter() - t)
    base = statistics.median(times["fp32"])
    print(f"{'variant':<66} {'ms':>6} {'vs fp32':>8} {'max |dp|':>9}")
    for n, s in sessions.items():
        med = statistics.median(times[n])
        diff = float(np.abs(s.run(None, {"image": x})[0] - ref).max())
        print(f"{n:<66} {med * 1e3:6.2f} {base / med:7.2f}x {diff:9.4f}")


if __name__ == "__main__":
    main()
