"""Speed benchmark: default vs classic U-Net, training and inference, eager vs ONNX Runtime.

    python benchmarks/bench_speed.py [--device cpu|cuda] [--json out.json] [--repeats 5]

Prints a table; quote the ratios (the host may be shared). Training is timed through the
trainer of `busseg train` itself (`Trainer.train_epoch` on synthetic uint8 in-memory scans:
sampling, batched augmentation, forward, loss, backward, AdamW, scheduler, EMA); on CUDA the
default model is timed eager and with its training forward / backward as CUDA graphs (what
`busseg train` does on one GPU); on a CPU, eager and with its training step through
`torch.compile` (what `compile: auto` weighs there). On CUDA the fp32 roof is measured with TF32
matmuls when cuDNN may use TF32 for convolutions (PyTorch's default), since the models' fp32
convolutions then run in TF32.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from busseg.checkpoint import build_from_config
from busseg.config import config_to_dict, resolve_config
from busseg.data.dataset import TensorSplit
from busseg.distributed import DistInfo
from busseg.models import count_parameters
from busseg.precision import choose_precision, native_bf16
from busseg.safety import OutputExistsError, claim
from busseg.trainer import Trainer

SIZE, EPOCH_IMAGES = 256, 470
CONFIG = Path(__file__).parents[1] / "configs" / "busi.yaml"
# the classic U-Net (`busseg.models` "unet_classic") as overrides of the recipe's model keys
CLASSIC = ("model.width=64", "model.depth=4", "model.stem_stride=1")


def default_model() -> torch.nn.Module:
    """The shipped architecture as `configs/busi.yaml` describes it."""
    return build_from_config(config_to_dict(resolve_config(CONFIG).model))


def timed(fn, repeats: int, warmup: int = 1, sync=lambda: None) -> float:
    """Median seconds of `fn()` over `repeats` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def matmul_roof(device: torch.device, sync, dtype: torch.dtype,
                sizes=(512, 1024, 2048, 3072), repeats: int = 5) -> dict:
    """Best measured matmul GFLOP/s over several sizes in `dtype` (the roof of that precision;
    for fp32 on CUDA with TF32 matmuls where cuDNN convolutions may use TF32)."""
    tf32 = device.type == "cuda" and dtype == torch.float32 and torch.backends.cudnn.allow_tf32
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    best, best_n = 0.0, 0
    try:
        for n in sizes:
            a = torch.rand(n, n, device=device).to(dtype)
            b = torch.rand(n, n, device=device).to(dtype)
            gflops = 2 * n**3 / timed(lambda a=a, b=b: a @ b, repeats, 2, sync) / 1e9
            if gflops > best:
                best, best_n = gflops, n
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
    return {"gflops": best, "n": best_n, "tf32": tf32}


def host_facts() -> dict:
    """CPU model, capability, bf16 flags and threads (what the figures depend on)."""
    from busseg.precision import BF16_FLAGS, cpu_flags

    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or platform.machine()
                 ) if Path("/proc/cpuinfo").is_file() else platform.machine()
    flags = cpu_flags()
    return {"cpu_model": model, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "bf16_flags": sorted(f for f in BF16_FLAGS if f in flags),
            "avx512": "avx512f" in flags, "threads": torch.get_num_threads()}


def forward_flops(model: torch.nn.Module, device: torch.device) -> float:
    """FLOPs of one forward pass of one 256x256 image (multiply-add = 2 FLOPs)."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.eval()(torch.rand(1, 1, SIZE, SIZE, device=device))
    return float(counter.get_total_flops())


def bench_trainer(device: torch.device, batch: int, dtype, graph: bool = False,
                  steps: int = 1, overrides: tuple[str, ...] = ()) -> Trainer:
    """The `Trainer` of `configs/busi.yaml`'s recipe (`overrides`: `key=value` changes, such as
    the model's shape or `compile=true`; eager by default) on `steps` batches of synthetic uint8
    scans: one `train_epoch` is `steps` of the very steps `busseg train` runs (sampling, batched
    augmentation, forward in `dtype`, replayed as CUDA graphs when `graph`, loss, backward,
    AdamW, scheduler, EMA). Its (empty) output folder is a temporary one, removed with the
    trainer."""
    amp = "fp32" if dtype is None else "bf16"
    tmp = tempfile.TemporaryDirectory(prefix="busseg_bench_")
    out = tmp.name
    cfg = resolve_config(CONFIG, [f"out={out}", f"batch_size={batch}", f"amp={amp}",
                                  f"device={device}", "compile=false",
                                  *overrides])
    n = batch * steps
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, cfg.size, cfg.size), dtype=torch.uint8, generator=gen)
    masks = (torch.rand(n, 1, cfg.size, cfg.size, generator=gen) > 0.8).to(torch.uint8)
    labels = [("benign", "malignant", "normal")[i % 3] for i in range(n)]
    data = TensorSplit(images, masks, [f"synthetic_{i}" for i in range(n)], labels).to(device)
    trainer = Trainer(cfg, DistInfo(), device, data, data, provenance={})
    trainer.graph_pending = trainer.graph_pending and graph  # eager unless `graph`
    trainer.bench_tmp = tmp  # the folder lives as long as the trainer
    return trainer


def train_speed(trainer: Trainer, repeats: int, sync) -> float:
    """Training images/s: `train_epoch` timed (one or more steps per timing: one step alone
    would time the GPU's idle gaps between Python launches and syncs)."""
    images = trainer.steps_per_epoch * trainer.cfg.batch_size
    return images / timed(lambda: trainer.train_epoch(0), repeats, 1, sync)


def infer_eager(model, device, batch: int, repeats: int, dtype, sync) -> float:
    """Seconds per eager forward pass of a batch."""
    model.eval()
    x = torch.rand(batch, 1, SIZE, SIZE, device=device).contiguous(
        memory_format=torch.channels_last)

    def run():
        with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16,
                                                    enabled=dtype is not None):
            model(x)

    return timed(run, repeats, 3, sync)


def infer_onnx(batch: int, repeats: int, int8_calibration: Path | None = None) -> float:
    """Seconds per ONNX Runtime forward pass of the shipped model on a real sample scan (fp32,
    or int8 calibrated on training scans): int8 speed depends on the data, so no random input."""
    import onnxruntime as ort

    from busseg.checkpoint import load_model
    from busseg.export import export_onnx
    from busseg.imageio import read_pil
    from busseg.predict import sample_files
    from busseg.preprocess import prepare_input

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.onnx"
        loaded = load_model(None)
        export_onnx(loaded, path, int8_calibration=int8_calibration)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        scan = prepare_input(read_pil(sample_files()[0]), loaded.size).numpy()
        x = np.repeat(scan, batch, axis=0)
        return timed(lambda: sess.run(None, {"image": x}), repeats, 3)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(name: str, shape: tuple[str, ...], dtype, device, args, sync, roofs: dict,
            variant: str = "") -> dict:
    """Every figure of one model in one precision (`variant` "graph": training as CUDA
    graphs, "compiled": its step through `torch.compile`; inference stays eager)."""
    graph, compiled = variant == "graph", variant == "compiled"
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    overrides = shape + (("compile=true",) if compiled else ())
    trainer = bench_trainer(device, args.batch, dtype, graph, 10 if cuda else 1, overrides)
    model = trainer.model
    fwd = forward_flops(model, device)
    reps = args.classic_repeats if name == "classic" else args.repeats
    img_s = train_speed(trainer, reps, sync)
    precision = "bf16" if dtype is not None else "fp32"
    row = {"model": name, "precision": precision, "graph": graph, "compiled": compiled,
           "params": count_parameters(model),
           "gflop_fwd": fwd / 1e9, "train_img_s": img_s,
           "train_gflops": 3 * fwd * img_s / 1e9,
           "infer_ms_b1": infer_eager(model, device, 1, args.repeats, dtype, sync) * 1e3,
           "infer_img_s_b16": 16 / infer_eager(model, device, 16, max(2, args.repeats // 2),
                                               dtype, sync),
           "peak_mem_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else peak_rss_mb()}
    row["infer_gflops_b16"] = fwd * row["infer_img_s_b16"] / 1e9
    roof = roofs[precision]["gflops"]
    row["train_roof_fraction"] = row["train_gflops"] / roof
    row["infer_roof_fraction"] = row["infer_gflops_b16"] / roof
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", help="write the results here (refused if it exists, unless "
                    "--overwrite)")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--classic-repeats", type=int, default=2,
                    help="training repeats of the slow classic model")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--calibration", default="data/train/images",
                    help="scans for the int8 ONNX model (skipped when missing)")
    args = ap.parse_args()
    try:  # refuse before minutes of measuring, not after
        claim([args.json] if args.json else [], args.overwrite)
    except OutputExistsError as exc:
        ap.error(str(exc))
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    probe_model = default_model().to(device).to(memory_format=torch.channels_last)
    chosen, why = choose_precision("auto", device, probe_model)
    res: dict = {"host": torch.cuda.get_device_name() if cuda else host_facts(),
                 "torch": torch.__version__, "auto_precision": why}
    roofs = {"fp32": matmul_roof(device, sync, torch.float32)}
    # both precisions wherever bf16 is native (on CUDA too), whichever the probe chose, so a
    # host where the probe keeps fp32 shows the bf16 figures it was weighed against
    bf16 = chosen is not None or cuda or native_bf16()
    if bf16:
        roofs["bf16"] = matmul_roof(device, sync, torch.bfloat16)
    res["roofs"] = roofs
    rows = [measure("default", (), None, device, args, sync, roofs)]
    if bf16:
        rows.append(measure("default", (), torch.bfloat16, device, args, sync, roofs))
    if cuda:
        rows.append(measure("default", (), chosen, device, args, sync, roofs, "graph"))
    else:  # what `compile: auto` weighs on a CPU: the training step through torch.compile
        rows.append(measure("default", (), chosen, device, args, sync, roofs, "compiled"))
    rows.append(measure("classic", CLASSIC, None, device, args, sync, roofs))
    res["rows"] = rows
    if not cuda:
        res["onnx_fp32_ms_b1"] = infer_onnx(1, args.repeats) * 1e3
        calib = Path(args.calibration)
        res["onnx_int8_ms_b1"] = (infer_onnx(1, args.repeats, calib) * 1e3
                                  if calib.is_dir() else None)
    print_table(res)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))


def row_label(row: dict) -> str:
    """'default bf16', 'default fp32 graph', 'default fp32 compiled', ...: a row's model,
    precision, CUDA graphs and compiled step."""
    return (f"{row['model']} {row['precision']}{' graph' if row.get('graph') else ''}"
            f"{' compiled' if row.get('compiled') else ''}")


# (result key, printed header, format) of the table's columns
COLUMNS = [("params", "params", "{:,.0f}"), ("gflop_fwd", "GFLOP fwd", "{:.2f}"),
           ("train_img_s", "train img/s", "{:.1f}"), ("train_gflops", "train GFLOP/s", "{:.0f}"),
           ("train_roof_fraction", "of roof", "{:.0%}"), ("infer_ms_b1", "infer b1 ms", "{:.1f}"),
           ("infer_img_s_b16", "infer b16 img/s", "{:.1f}"),
           ("infer_roof_fraction", "of roof", "{:.0%}"), ("peak_mem_mb", "peak MB", "{:.0f}")]


def print_table(r: dict) -> None:
    host = r["host"]
    if isinstance(host, dict):
        print(f"host: {host['cpu_model']}  capability {host['cpu_capability']}  bf16 flags "
              f"{host['bf16_flags'] or 'none'}  threads {host['threads']}  torch {r['torch']}")
    else:
        print(f"device: {host}  torch {r['torch']}")
    print("roofs (best matmul): " + ", ".join(
        f"{p}{' (TF32)' if v.get('tf32') else ''} {v['gflops']:.0f} GFLOP/s (n={v['n']})"
        for p, v in r["roofs"].items()))
    print(f"auto precision: {r['auto_precision']['precision']} "
          f"({r['auto_precision']['reason']})")
    widths = [max(len(label), 10) + 2 for _, label, _ in COLUMNS]
    print(f"{'model':<22}" + "".join(f"{c[1]:>{w}}" for c, w in zip(COLUMNS, widths)))
    for row in r["rows"]:
        print(f"{row_label(row):<22}" + "".join(
            f"{fmt.format(row[key]):>{w}}" for (key, _, fmt), w in zip(COLUMNS, widths)))
    base = r["rows"][0]
    for row in r["rows"][1:]:
        print(f"{row_label(row)} / default fp32: train "
              f"{row['train_img_s'] / base['train_img_s']:.2f}x, inference b16 "
              f"{row['infer_img_s_b16'] / base['infer_img_s_b16']:.2f}x")
    if "onnx_fp32_ms_b1" in r:
        int8 = r["onnx_int8_ms_b1"]
        print(f"ONNX Runtime batch 1: fp32 {r['onnx_fp32_ms_b1']:.1f} ms"
              + (f", int8 {int8:.1f} ms ({r['onnx_fp32_ms_b1'] / int8:.2f}x)" if int8 else ""))


if __name__ == "__main__":
    main()
