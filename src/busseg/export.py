"""`busseg export`: ONNX with dynamic batch and image size (input in [0, 1], output probability)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from busseg.checkpoint import LoadedModel, load_model
from busseg.models.unet import split_output
from busseg.provenance import provenance
from busseg.safety import claim


class ProbabilityModel(nn.Module):
    """Wraps the network so the exported graph outputs probabilities (and lesion scores)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor):
        seg, presence = split_output(self.net(x))
        if presence is None:
            return torch.sigmoid(seg)
        return torch.sigmoid(seg), torch.sigmoid(presence)


def export_onnx(model: LoadedModel | str | Path | None, out: Path | str, opset: int = 18,
                overwrite: bool = False) -> Path:
    """Export to ONNX; batch, height and width are dynamic (sizes padded inside the graph)."""
    claim([out], overwrite)
    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    net = ProbabilityModel(loaded.net).eval().to("cpu", memory_format=torch.contiguous_format)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    x = torch.rand(2, 1, loaded.size, loaded.size)
    names = ["probability"] + (["lesion_score"] if loaded.has_presence else [])
    axes = {"image": {0: "batch", 2: "height", 3: "width"},
            "probability": {0: "batch", 2: "height", 3: "width"}, "lesion_score": {0: "batch"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        torch.onnx.export(
            net, (x,), str(out), input_names=["image"], output_names=names,
            dynamic_axes={k: v for k, v in axes.items() if k in ["image", *names]},
            opset_version=opset, dynamo=False, verbose=False,
        )
    import json

    import onnx

    graph = onnx.load(str(out))
    entry = graph.metadata_props.add()
    entry.key, entry.value = "busseg", json.dumps(onnx_metadata(loaded))
    onnx.save(graph, str(out))
    return out


def onnx_metadata(loaded: LoadedModel) -> dict:
    """What an exported file carries: settings, input size, model, versions."""
    from busseg import __version__

    return {"postprocess": loaded.settings.to_dict(), "size": loaded.size,
            "model": loaded.meta.get("model", {}), "name": loaded.name,
            "busseg_version": __version__, "training": loaded.meta.get("provenance"),
            "export": provenance()}


def read_onnx_metadata(path: Path | str) -> dict | None:
    """The busseg metadata of an exported ONNX file (None when it has none)."""
    import json

    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ValueError(f"{path}: not a readable ONNX file ({exc})") from None
    props = {p.key: p.value for p in model.metadata_props}
    if "busseg" not in props:
        return None
    try:
        return json.loads(props["busseg"])
    except ValueError:
        raise ValueError(f"{path}: its busseg metadata is not valid JSON") from None
