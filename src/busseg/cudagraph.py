"""The training forward and backward as one CUDA graph each, on a single GPU.

The default U-Net is small: on a GPU each training step is a few hundred short kernels and the
time goes to launching them from Python, not to computing. `torch.cuda.make_graphed_callables`
records the model's training forward and backward once and replays each with one launch.
The model keeps its parameters and buffers (the graph reads and writes them in place), so the
optimiser, EMA, checkpoints and an eval-mode forward (validation, which stays eager) see the
same tensors as before.
"""

from __future__ import annotations

import logging
import os
import warnings

import torch
from torch import nn

log = logging.getLogger("busseg.train")


NO_GRAPH_ENV = "BUSSEG_NO_CUDA_GRAPH"  # "1" (`busseg train --no-cuda-graph`): stay eager


def can_graph(device: torch.device, distributed: bool) -> bool:
    """Whether `graph_training_forward` applies: one CUDA device, no DistributedDataParallel,
    and not switched off (`--no-cuda-graph` sets BUSSEG_NO_CUDA_GRAPH=1)."""
    return (device.type == "cuda" and not distributed
            and os.environ.get(NO_GRAPH_ENV) != "1")


def graph_training_forward(model: nn.Module, sample: torch.Tensor,
                           dtype: torch.dtype | None) -> bool:
    """Replace `model`'s training-mode forward (and its backward) by CUDA graph replays for
    inputs shaped, typed and laid out like `sample`; True on success. Capture runs a few warm-up
    steps on `sample`, so BatchNorm statistics are restored afterwards; on failure the model is
    left eager and the reason is logged."""
    model.train()
    buffers = [b.detach().clone() for b in model.buffers()]
    try:
        with warnings.catch_warnings(), torch.autocast(
                "cuda", dtype=dtype or torch.float32, enabled=dtype is not None,
                cache_enabled=False):
            # capture warms up on a side stream; autograd's note that the next steps run on
            # another stream is expected here
            warnings.filterwarnings("ignore", message="The AccumulateGrad node's stream")
            torch.cuda.make_graphed_callables(model, (sample,))
        ok = True
        log.info("training forward and backward replayed as CUDA graphs")
    except (RuntimeError, TypeError) as exc:
        log.warning("CUDA graph capture failed, training eagerly: %s", exc)
        ok = False
    with torch.no_grad():
        for b, saved in zip(model.buffers(), buffers):
            b.copy_(saved)
    return ok
