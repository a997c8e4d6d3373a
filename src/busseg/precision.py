"""Choosing the training precision by measurement: bf16 autocast only where it is faster.

CPUs with native bf16 (AVX-512 BF16 or AMX) run bf16 convolutions about twice as fast as fp32;
CPUs without it emulate bf16 and run it many times slower. On a GPU a small model's step is
bound by kernel launches, and autocast's extra casts make bf16 slower there too. `amp: auto`
therefore uses bf16 only where a short probe of a few training steps shows it faster than fp32
(on a CPU, only where the flags also say native bf16). The choice and the probe's figures go
into the run folder.
"""

from __future__ import annotations

import contextlib
import copy
import time
from pathlib import Path

import torch
from torch import nn

BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: Path | str = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo is not readable)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags") and ":" in line:
            return set(line.split(":", 1)[1].split())
    return set()


def native_bf16(flags: set[str] | None = None) -> bool:
    """Whether the CPU computes bf16 natively (AVX-512 BF16 or AMX)."""
    flags = cpu_flags() if flags is None else flags
    return any(f in flags for f in BF16_FLAGS)


def autocast(dtype: torch.dtype | None, device: torch.device):
    """An autocast context for `dtype` (None: plain fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def step_time(model: nn.Module, x: torch.Tensor, dtype: torch.dtype | None) -> float:
    """Seconds of one forward + backward step."""
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    sync()
    t = time.perf_counter()
    with autocast(dtype, x.device):
        out = model(x)
    seg = out[0] if isinstance(out, tuple) else out
    seg = seg[0] if isinstance(seg, list) else seg
    seg.float().mean().backward()
    model.zero_grad(set_to_none=True)
    sync()
    return time.perf_counter() - t


def probe_bf16(model: nn.Module, size: int, batch: int = 4, rounds: int = 4,
               warmup: int = 2) -> dict[str, float]:
    """Time training steps of a copy of `model` in fp32 and in bf16 autocast on its device,
    taken in turn (so a busy host slows both alike) after `warmup` steps of each, best of `rounds`
    (the model itself, its BatchNorm statistics and the global RNG stay untouched); return
    seconds per step and the speed-up."""
    gen = torch.Generator().manual_seed(0)
    device = next(model.parameters()).device
    x = torch.rand(batch, 1, size, size, generator=gen).to(device).contiguous(
        memory_format=torch.channels_last)
    model = copy.deepcopy(model).train()
    kinds = (None, torch.bfloat16)
    for dtype in kinds:
        for _ in range(warmup):
            step_time(model, x, dtype)
    best = {dtype: float("inf") for dtype in kinds}
    for _ in range(rounds):
        for dtype in kinds:
            best[dtype] = min(best[dtype], step_time(model, x, dtype))
    fp32, bf16 = best[None], best[torch.bfloat16]
    return {"fp32_s_per_step": fp32, "bf16_s_per_step": bf16, "bf16_speedup": fp32 / bf16}


def choose_precision(amp: str, device: torch.device, model: nn.Module | None = None,
                     size: int = 256, min_speedup: float = 1.15) -> tuple[torch.dtype | None, dict]:
    """The autocast dtype for `amp` ('auto', 'fp32', 'bf16') on `device`, and why.

    'auto' runs `probe_bf16` (on a CPU only when the flags say native bf16) when a model is
    given and takes bf16 when it is at least `min_speedup` times faster; on CUDA without a model
    it takes bf16.
    """
    info: dict = {"amp": amp, "device": str(device)}
    if amp == "fp32":
        return None, {**info, "precision": "fp32", "reason": "forced"}
    if amp == "bf16":
        return torch.bfloat16, {**info, "precision": "bf16", "reason": "forced"}
    if device.type == "cuda":
        if model is None:
            return torch.bfloat16, {**info, "precision": "bf16", "reason": "cuda"}
    else:
        flags = cpu_flags()
        info["cpu_bf16_flags"] = sorted(f for f in BF16_FLAGS if f in flags)
        info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        if not native_bf16(flags) or model is None:
            return None, {**info, "precision": "fp32", "reason": "no native bf16 on this CPU"}
    probe = probe_bf16(model, size)
    info["probe"] = probe
    if probe["bf16_speedup"] >= min_speedup:
        return torch.bfloat16, {**info, "precision": "bf16", "reason": "probe: bf16 faster"}
    return None, {**info, "precision": "fp32", "reason": "probe: bf16 not faster"}
