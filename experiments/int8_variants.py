"""Batch-1 latency of int8 ONNX variants of the shipped model against fp32, on one real scan.

    python experiments/int8_variants.py --calibration data/train/images --scan SCAN.png

Prints a table (median ms over --repeats runs, interleaved so a shared host hits every variant
alike) and the largest probability difference against fp32 on the scan.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def quantize(fp32: Path, out: Path, batches: list, op_types: list[str], per_channel: bool,
             symmetric: bool) -> None:
    """A static QDQ int8 model of `fp32` quantizing `op_types`."""
    import os

    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"image": b} for b in batches])

        def get_next(self):
            return next(self.items, None)

    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as scratch:
        os.chdir(scratch)
        try:
            quantize_static(str(fp32.resolve()), str(out.resolve()), Reader(),
                            quant_format=QuantFormat.QDQ, per_channel=per_channel,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            op_types_to_quantize=op_types,
                            extra_options={"ActivationSymmetric": symmetric})
        finally:
            os.chdir(cwd)


def session(path: Path, threads: int, static_dims: bool):
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
    ap.add_argument("--repeats", type=int, default=300)
    args = ap.parse_args()

    from busseg.checkpoint import load_model
    from busseg.export import calibration_batches, export_onnx
    from busseg.imageio import read_pil
    from busseg.preprocess import prepare_input

    loaded = load_model(None)
    x = prepare_input(read_pil(args.scan), loaded.size).numpy()
    batches = calibration_batches(args.calibration, loaded.size)
    tmp = Path(tempfile.mkdtemp())
    fp32 = export_onnx(loaded, tmp / "fp32.onnx")
    variants = {"fp32": (fp32, 0, False)}
    specs = {
        "int8 Conv (shipped)": (["Conv"], True, False),
        "int8 Conv+Relu+MaxPool+Concat": (["Conv", "Relu", "MaxPool", "Concat"], True, False),
        "int8 all incl. ConvTranspose": (["Conv", "ConvTranspose", "Relu", "MaxPool", "Concat"],
                                         True, False),
        "int8 Conv per-tensor": (["Conv"], False, False),
    }
    for name, (ops, per_channel, sym) in specs.items():
        path = tmp / f"{len(variants)}.onnx"
        quantize(fp32, path, batches, ops, per_channel, sym)
        variants[name] = (path, 0, False)
    for name in list(variants):
        path = variants[name][0]
        variants[name + ", 1 thread"] = (path, 1, False)
        variants[name + ", static dims"] = (path, 0, True)
    sessions = {n: session(p, t, s) for n, (p, t, s) in variants.items()}
    ref = sessions["fp32"].run(None, {"image": x})[0]
    times: dict[str, list[float]] = {n: [] for n in sessions}
    for s in sessions.values():
        for _ in range(20):
            s.run(None, {"image": x})
    for _ in range(args.repeats):
        for n, s in sessions.items():
            t = time.perf_counter()
            s.run(None, {"image": x})
            times[n].append(time.perf_counter() - t)
    base = statistics.median(times["fp32"])
    print(f"{'variant':<52} {'ms':>6} {'vs fp32':>8} {'max |dp|':>9}")
    for n, s in sessions.items():
        med = statistics.median(times[n])
        diff = float(np.abs(s.run(None, {"image": x})[0] - ref).max())
        print(f"{n:<52} {med * 1e3:6.2f} {base / med:7.2f}x {diff:9.4f}")


if __name__ == "__main__":
    main()
