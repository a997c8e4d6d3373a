"""`busseg export`: ONNX with dynamic batch and image size (input in [0, 1], output probability)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from busseg.checkpoint import LoadedModel, load_model


class ProbabilityModel(nn.Module):
    """Wraps the network so the exported graph outputs probabilities."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(x))


def export_onnx(model: LoadedModel | str | Path | None, out: Path | str, opset: int = 18) -> Path:
    """Export to ONNX; batch, height and width are dynamic (sizes padded inside the graph)."""
    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    net = ProbabilityModel(loaded.net).eval().to("cpu", memory_format=torch.contiguous_format)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    x = torch.rand(2, 1, loaded.size, loaded.size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        torch.onnx.export(
            net, (x,), str(out), input_names=["image"], output_names=["probability"],
            dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"},
                          "probability": {0: "batch", 2: "height", 3: "width"}},
            opset_version=opset, dynamo=False, verbose=False,
        )
    return out
