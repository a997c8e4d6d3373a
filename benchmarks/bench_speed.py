"""Speed benchmark: default vs classic U-Net, training and inference, eager vs ONNX Runtime.

    python benchmarks/bench_speed.py [--device cpu|cuda] [--json out.json] [--repeats 5]

Prints a table; quote the ratios (the host may be shared). Training steps include the batched
augmentation of uint8 in-memory data, exactly as `busseg train` runs them.
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

import torch
from torch.utils.flop_counter import FlopCounterMode

from busseg.config import AugmentConfig, ModelConfig
from busseg.data.augment import augment_batch
from busseg.losses import bce_dice_loss
from busseg.models import count_parameters, create_model

SIZE, EPOCH_IMAGES = 256, 470


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


def matmul_peak(device: torch.device, sync, n: int = 2048, repeats: int = 5) -> float:
    """Measured fp32 matmul GFLOP/s (the roof the convolutions are compared to)."""
    a, b = torch.rand(n, n, device=device), torch.rand(n, n, device=device)
    return 2 * n**3 / timed(lambda: a @ b, repeats, 2, sync) / 1e9


def forward_flops(model: torch.nn.Module, device: torch.device) -> float:
    """FLOPs of one forward pass of one 256x256 image (multiply-add = 2 FLOPs)."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.eval()(torch.rand(1, 1, SIZE, SIZE, device=device))
    return float(counter.get_total_flops())


def train_speed(model, device, batch: int, repeats: int, amp: bool, sync) -> float:
    """Training images/s: augment + forward + backward + Adam step on a batch."""
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    images = torch.randint(0, 256, (64, 1, SIZE, SIZE), dtype=torch.uint8, device=device)
    masks = (torch.rand(64, 1, SIZE, SIZE, device=device) > 0.8).to(torch.uint8)
    gen = torch.Generator(device=device).manual_seed(0)
    cfg = AugmentConfig()

    def step():
        idx = torch.randint(0, 64, (batch,), device=device)
        x, y = images[idx].float() / 255, masks[idx].float()
        x, y = augment_batch(x, y, idx % 3 == 0, cfg, gen)
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = model(x)
        loss = bce_dice_loss(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return batch / timed(step, repeats, 2, sync)


def infer_eager(model, device, batch: int, repeats: int, amp: bool, sync) -> float:
    model.eval()
    x = torch.rand(batch, 1, SIZE, SIZE, device=device).contiguous(
        memory_format=torch.channels_last)

    def run():
        with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=amp):
            model(x)

    return timed(run, repeats, 3, sync)


def infer_onnx(model, batch: int, repeats: int) -> float:
    import onnxruntime as ort

    from busseg.checkpoint import LoadedModel
    from busseg.export import export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.onnx"
        net = model.cpu().eval()
        export_onnx(LoadedModel(net, SIZE, 0.5, "bench", {}), path)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        x = torch.rand(batch, 1, SIZE, SIZE).numpy()
        return timed(lambda: sess.run(None, {"image": x}), repeats, 3)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--classic-repeats", type=int, default=2,
                    help="training repeats of the slow classic model")
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    amp = cuda  # bf16 autocast on GPU; on this CPU bf16 is 13-150x slower
    mc = ModelConfig()
    models = {
        "default": lambda: create_model(mc.name, width=mc.width, depth=mc.depth,
                                        stem_stride=mc.stem_stride),
        "classic": lambda: create_model("unet_classic"),
    }
    res: dict = {"device": torch.cuda.get_device_name() if cuda else platform.processor()
                 or platform.machine(), "threads": torch.get_num_threads(),
                 "torch": torch.__version__}
    res["peak_gflops"] = matmul_peak(device, sync)
    for name, make in models.items():
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        model = make().to(device).to(memory_format=torch.channels_last)
        fwd = forward_flops(model, device)
        reps = args.repeats if name == "default" else args.classic_repeats
        rss0 = peak_rss_mb()
        img_s = train_speed(model, device, args.batch, reps, amp, sync)
        mem = (torch.cuda.max_memory_allocated() / 2**20 if cuda else peak_rss_mb())
        lat = infer_eager(model, device, 1, args.repeats, amp, sync)
        thr = 16 / infer_eager(model, device, 16, max(2, args.repeats // 2), amp, sync)
        onnx_lat = infer_onnx(make().eval(), 1, args.repeats) if not cuda else float("nan")
        prefix = "" if name == "default" else "classic_"
        res.update({
            f"{prefix}params": count_parameters(model),
            f"{prefix}gflop_fwd": fwd / 1e9,
            f"{prefix}train_img_s": img_s,
            f"{prefix}train_gflops": 3 * fwd * img_s / 1e9,
            f"{prefix}infer_ms_b1_eager": lat * 1e3,
            f"{prefix}infer_ms_b1_onnx": onnx_lat * 1e3,
            f"{prefix}infer_img_s_b16": thr,
            f"{prefix}peak_mem_mb": mem,
            f"{prefix}peak_mem_grew_mb": mem - (0 if cuda else rss0),
        })
        del model
    res["epoch_s"] = EPOCH_IMAGES / res["train_img_s"]
    res["infer_ms_b1"] = min(res["infer_ms_b1_eager"], res["infer_ms_b1_onnx"]
                             if res["infer_ms_b1_onnx"] == res["infer_ms_b1_onnx"] else 1e9)
    res["train_speedup_vs_classic"] = res["train_img_s"] / res["classic_train_img_s"]
    res["train_peak_fraction"] = res["train_gflops"] / res["peak_gflops"]
    res["classic_train_peak_fraction"] = res["classic_train_gflops"] / res["peak_gflops"]
    print_table(res)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))


def print_table(r: dict) -> None:
    print(f"device: {r['device']}  threads: {r['threads']}  torch {r['torch']}  "
          f"fp32 matmul peak: {r['peak_gflops']:.1f} GFLOP/s")
    rows = [("parameters", "params", "{:,.0f}"), ("GFLOP / image (fwd)", "gflop_fwd", "{:.2f}"),
            ("train images/s (b8)", "train_img_s", "{:.2f}"),
            ("train GFLOP/s", "train_gflops", "{:.1f}"),
            ("train / matmul peak", "train_peak_fraction", "{:.0%}"),
            ("infer b1 eager ms", "infer_ms_b1_eager", "{:.1f}"),
            ("infer b1 ONNX RT ms", "infer_ms_b1_onnx", "{:.1f}"),
            ("infer b16 images/s", "infer_img_s_b16", "{:.1f}"),
            ("peak memory MB", "peak_mem_mb", "{:.0f}")]
    print(f"{'metric':<24}{'default':>14}{'classic':>14}{'ratio':>10}")
    for label, key, fmt in rows:
        if key == "train_peak_fraction":
            a, b = r[key], r["classic_train_peak_fraction"]
        else:
            a, b = r[key], r[f"classic_{key}"]
        ratio = a / b if b else float("nan")
        print(f"{label:<24}{fmt.format(a):>14}{fmt.format(b):>14}{ratio:>9.2f}x")
    print(f"epoch of {EPOCH_IMAGES} images at {SIZE}px: {r['epoch_s']:.1f} s;  "
          f"batch-1 latency (faster backend): {r['infer_ms_b1']:.1f} ms;  "
          f"train speed-up vs classic: {r['train_speedup_vs_classic']:.1f}x")


if __name__ == "__main__":
    main()
