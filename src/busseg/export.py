"""`busseg export`: ONNX with dynamic batch and image size (input in [0, 1], output probability)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from busseg.checkpoint import LoadedModel, load_model
from busseg.errors import InvalidInput, MissingFile
from busseg.jsonio import clean
from busseg.provenance import provenance
from busseg.safety import claim


class ProbabilityModel(nn.Module):
    """Wraps the network so the exported graph outputs probabilities (and lesion scores)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor):
        out = self.net(x)
        if out.presence is None:
            return torch.sigmoid(out.logits)
        return torch.sigmoid(out.logits), torch.sigmoid(out.presence)


def onnx_ready(net: nn.Module) -> nn.Module:
    """A copy of `net` for export: per-channel GroupNorm (`model.norm=instance`) becomes the
    equivalent affine InstanceNorm2d, one ONNX InstanceNormalization node instead of a reshape,
    a normalisation, a reshape back, a multiply and an add (same outputs; faster in ONNX
    Runtime). Other modules are kept."""
    import copy

    net = copy.deepcopy(net)
    for parent in list(net.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.GroupNorm) and child.num_groups == child.num_channels \
                    and child.affine:
                inst = nn.InstanceNorm2d(child.num_channels, eps=child.eps, affine=True)
                inst.load_state_dict(child.state_dict())
                setattr(parent, name, inst)
    return net


def export_onnx(model: LoadedModel | str | Path | None, out: Path | str, opset: int = 18,
                overwrite: bool = False, int8_calibration: Path | str | None = None) -> Path:
    """Export to ONNX; batch, height and width are dynamic (sizes padded inside the graph).

    With `int8_calibration` (a folder of training scans) the file is statically quantized to
    int8, calibrated on those scans."""
    claim([out], overwrite)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    if int8_calibration is not None:
        import tempfile

        batches = calibration_batches(int8_calibration, loaded.size)
        with tempfile.TemporaryDirectory() as tmp:
            fp32 = export_onnx(loaded, Path(tmp) / "fp32.onnx", opset)
            return quantize_int8(fp32, out, batches)
    net = ProbabilityModel(onnx_ready(loaded.net)).eval().to(
        "cpu", memory_format=torch.contiguous_format)
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
    entry.key, entry.value = "busseg", json.dumps(clean(onnx_metadata(loaded)), allow_nan=False)
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
        raise InvalidInput(f"{path}: not a readable ONNX file ({exc})") from None
    props = {p.key: p.value for p in model.metadata_props}
    if "busseg" not in props:
        return None
    try:
        return json.loads(props["busseg"])
    except ValueError:
        raise InvalidInput(f"{path}: its busseg metadata is not valid JSON") from None


def calibration_batches(image_dir: Path | str, size: int, n: int = 64) -> list:
    """Up to `n` scans of a folder, preprocessed as at inference (1 x 1 x S x S float32)."""
    from busseg.imageio import IMAGE_SUFFIXES, read_pil
    from busseg.preprocess import prepare_input

    if not Path(image_dir).is_dir():
        raise MissingFile(f"{image_dir}: calibration folder not found (--calibration DIR, "
                          "default data/train/images)")
    files = sorted(p for p in Path(image_dir).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise MissingFile(f"{image_dir}: no images to calibrate the int8 model on")
    step = max(1, len(files) // n)
    return [prepare_input(read_pil(f), size).numpy() for f in files[::step][:n]]


INT8_OPS = ("Conv", "Relu", "MaxPool", "Concat")


def quantize_int8(fp32_path: Path | str, out: Path | str, batches: list,
                  op_types: tuple[str, ...] = INT8_OPS) -> Path:
    """Static int8 quantization of an exported fp32 model (QDQ, per-channel weights,
    calibrated on `batches`): the 3x3 and 1x1 convolutions, and the ReLUs, pools and
    concatenations between them, so activations stay int8 from one convolution to the next;
    the transposed convolutions stay fp32 (faster in ONNX Runtime than quantized ones, or than
    rewriting them as a 1x1 convolution and a pixel shuffle). The busseg metadata is kept."""
    import onnx
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

    import os
    import tempfile

    root = logging.getLogger()
    level, cwd = root.level, os.getcwd()
    root.setLevel(logging.ERROR)  # ORT suggests a shape pre-pass that dynamic sizes defeat
    with tempfile.TemporaryDirectory() as scratch:
        os.chdir(scratch)  # ORT's calibration leaves external-data files in the working folder
        try:
            quantize_static(str(Path(fp32_path).resolve()), str(Path(cwd, out).resolve()),
                            Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            op_types_to_quantize=list(op_types))
        finally:
            os.chdir(cwd)
            root.setLevel(level)
    src, dst = onnx.load(str(fp32_path)), onnx.load(str(out))
    del dst.metadata_props[:]
    for p in src.metadata_props:
        entry = dst.metadata_props.add()
        entry.key, entry.value = p.key, p.value
    onnx.save(dst, str(out))
    return Path(out)
