"""Choosing `torch.compile` for the training step by measurement.

On a CPU, inductor fuses BatchNorm, ReLU and the element-wise work around the convolutions,
which eager PyTorch runs as separate memory-bound passes; at the default model's small widths
those passes are a large share of a step. How much that buys depends on the CPU and the
precision, and compiling costs about a minute on 2 cores, so `compile: auto` (the default)
times compiled against eager training steps at the run's own batch shape on a CPU and keeps the
compiled step only where it is clearly faster. Short runs (fewer than `MIN_STEPS` optimiser
steps) stay eager: they cannot earn the compile time back. On a GPU the step stays eager (CUDA
graphs replay it). The choice and the probe's figures go into the run folder.
"""

from __future__ import annotations

import torch
from torch import nn

from busseg.precision import step_time

MIN_STEPS = 1000  # a run shorter than this cannot repay about a minute of compiling
MIN_SPEEDUP = 1.15


def probe_compile(net: nn.Module, compiled: nn.Module, x: torch.Tensor,
                  dtype: torch.dtype | None, rounds: int = 3, warmup: int = 2) -> dict[str, float]:
    """Time training steps of `net` eager and `compiled` (the same parameters) on `x`, taken in
    turn after `warmup` steps of each, best of `rounds`; the first compiled step (the compile)
    is timed apart. Weights and BatchNorm statistics are restored afterwards."""
    saved = {k: v.detach().clone() for k, v in net.state_dict().items()}
    try:
        compile_s = step_time(compiled, x, dtype)
        for _ in range(warmup):
            step_time(net, x, dtype)
            step_time(compiled, x, dtype)
        eager = comp = float("inf")
        for _ in range(rounds):
            eager = min(eager, step_time(net, x, dtype))
            comp = min(comp, step_time(compiled, x, dtype))
    finally:
        net.load_state_dict(saved)
    return {"compile_s": compile_s, "eager_s_per_step": eager, "compiled_s_per_step": comp,
            "speedup": eager / comp}


def choose_compile(setting: bool | str, net: nn.Module, x: torch.Tensor,
                   dtype: torch.dtype | None, steps: int) -> tuple[nn.Module, dict]:
    """The module that runs training steps for `compile: setting` (True, False or 'auto') and
    why. `x` is one training batch (its shape is the one compiled); `steps` is the run's number
    of optimiser steps. A compile that fails under 'auto' falls back to eager, reason kept."""
    info: dict = {"setting": setting}
    if setting is False:
        return net, {**info, "compiled": False, "reason": "off"}
    if setting is True:
        return torch.compile(net), {**info, "compiled": True, "reason": "forced"}
    if x.device.type != "cpu":
        return net, {**info, "compiled": False, "reason": "not a CPU (CUDA graphs instead)"}
    if steps < MIN_STEPS:
        return net, {**info, "compiled": False,
                     "reason": f"{steps} steps < {MIN_STEPS}: too short to repay compiling"}
    compiled = torch.compile(net)
    try:
        probe = probe_compile(net, compiled, x, dtype)
    except Exception as exc:  # no C++ compiler, an unsupported platform, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return net, {**info, "compiled": False,
                     "reason": f"compiling failed: {type(exc).__name__}: {first}"[:300]}
    info["probe"] = probe
    if probe["speedup"] >= MIN_SPEEDUP:
        return compiled, {**info, "compiled": True, "reason": "probe: compiled faster"}
    return net, {**info, "compiled": False, "reason": "probe: compiled not faster"}
