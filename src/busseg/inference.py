"""Running a loaded model on images of any size: batching, flip TTA, resizing back."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from busseg.checkpoint import LoadedModel, load_model
from busseg.errors import InvalidInput
from busseg.postprocess import chosen_settings, decide, lesion_score
from busseg.preprocess import NO_CONTRAST, no_contrast, prepare_input, resize_prob, to_gray01

# N x 1 x S x S images in [0, 1] -> (probabilities N x 1 x S x S, lesion scores N or None)
Forward = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


@dataclass
class Prediction:
    """A probability map at the image's own resolution and the image-level lesion score (the
    presence head's probability, or the map's peak probability for a model without a head)."""

    prob: np.ndarray
    score: float
    warning: str | None = None  # why the map was not used (an image with no contrast)


def torch_forward(loaded: LoadedModel, device: str = "cpu") -> Forward:
    """A forward function running the PyTorch model (float32 outputs on the CPU)."""
    net = loaded.net

    @torch.inference_mode()
    def run(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = x.to(device)
        if device == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        out = net(x)
        score = None if out.presence is None else torch.sigmoid(out.presence.float()).cpu()
        return torch.sigmoid(out.logits.float()).cpu(), score

    return run


def onnx_forward(onnx_path: Path | str, threads: int = 0) -> Forward:
    """A forward function running an exported model with ONNX Runtime (CPU)."""
    import onnxruntime as ort

    check_onnx_finite(onnx_path)
    opts = ort.SessionOptions()
    if threads > 0:
        opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name

    def run(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        outs = sess.run(None, {name: x.numpy().astype(np.float32)})
        score = torch.from_numpy(outs[1]).reshape(-1) if len(outs) > 1 else None
        return torch.from_numpy(outs[0]), score

    return run


def check_onnx_finite(onnx_path: Path | str) -> None:
    """Refuse an ONNX file whose float weights hold NaN or infinity; an unreadable one is a
    ValueError naming it."""
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load(str(onnx_path))
    except Exception as exc:  # noqa: BLE001 - protobuf raises several types
        raise InvalidInput(f"{onnx_path}: not a readable ONNX file ({exc})") from None
    tensors = list(model.graph.initializer) + [
        a.t for node in model.graph.node if node.op_type == "Constant"
        for a in node.attribute if a.HasField("t")]
    for tensor in tensors:
        arr = numpy_helper.to_array(tensor)
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise InvalidInput(f"{onnx_path}: weight {tensor.name or '(constant)'} holds NaN or "
                               "infinite values; refusing to segment with it")


def average_forward(forwards: Sequence[Forward]) -> Forward:
    """An ensemble: the mean of several models' probabilities (and of their lesion scores when
    every model has one)."""
    def run(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        outs = [f(x) for f in forwards]
        prob = torch.stack([p for p, _ in outs]).mean(0)
        scores = [s for _, s in outs]
        if any(s is None for s in scores):
            return prob, None
        return prob, torch.stack(scores).mean(0)

    return run


def ensemble_forward(checkpoints: Sequence[Path | str], device: str = "cpu"):
    """(forward, input size, settings) of an ensemble of `.pt` / `.safetensors` models, which
    must share one input size; the post-processing settings are the first model's."""
    models = [load_model(c, "cuda" if device == "cuda" else "cpu") for c in checkpoints]
    sizes = {m.size for m in models}
    if len(sizes) > 1:
        raise InvalidInput(f"an ensemble needs one input size; these models have {sorted(sizes)}")
    forward = average_forward([torch_forward(m, device) for m in models])
    return forward, models[0].size, models[0].settings


Checkpoints = Path | str | None | Sequence[Path | str]


def make_forward(checkpoint: Checkpoints, backend: str = "torch",
                 onnx_path: Path | str | None = None, device: str = "cpu",
                 export_dir: Path | None = None, threads: int = 0):
    """(forward, input size, settings) for a backend. An ONNX file carries its own settings
    (None for a file without them: the caller decides); `--backend onnx` without a file exports
    the checkpoint to `export_dir`/model.onnx first. Several checkpoints make an ensemble
    (torch backend only). `threads` > 0 sets ONNX Runtime's threads per run."""
    if backend not in ("torch", "onnx"):
        raise InvalidInput(f"unknown backend {backend!r} (torch, onnx)")
    if isinstance(checkpoint, (list, tuple)):
        if len(checkpoint) > 1:
            if backend != "torch":
                raise InvalidInput("an ensemble of several checkpoints runs on the torch backend")
            return ensemble_forward(checkpoint, device)
        checkpoint = checkpoint[0] if checkpoint else None
    if backend == "onnx" and onnx_path is not None:
        from busseg.export import read_onnx_metadata
        from busseg.postprocess import PostprocessSettings

        meta = read_onnx_metadata(onnx_path)
        if meta is None:
            return onnx_forward(onnx_path, threads), 256, None
        return (onnx_forward(onnx_path, threads), int(meta["size"]),
                PostprocessSettings.from_dict(meta["postprocess"]))
    loaded = load_model(checkpoint, "cuda" if device == "cuda" else "cpu")
    if backend == "torch":
        return torch_forward(loaded, device), loaded.size, loaded.settings
    from busseg.export import export_onnx

    if export_dir is None:
        raise InvalidInput("--backend onnx needs --onnx FILE")
    export_dir.mkdir(parents=True, exist_ok=True)
    path = export_onnx(loaded, export_dir / "model.onnx")
    return onnx_forward(path, threads), loaded.size, loaded.settings


@dataclass(frozen=True)
class ModelChoice:
    """Which model segments and how its decision rule is overridden, for every verb that runs
    one: weights (None: the shipped model; several: their ensemble), backend (`torch` or
    `onnx` with `onnx_path`), device, and `plain` (threshold 0.5 alone), `threshold`, `tta`."""

    checkpoint: Checkpoints = None
    backend: str = "torch"
    onnx_path: Path | str | None = None
    device: str = "cpu"
    plain: bool = False
    threshold: float | None = None
    tta: bool | None = None

    @classmethod
    def of(cls, model: ModelChoice | Checkpoints) -> ModelChoice:
        """`model` itself, or a choice of the given weights with the model's own settings."""
        return model if isinstance(model, ModelChoice) else cls(checkpoint=model)

    def load(self, export_dir: Path | None = None, threads: int = 0):
        """(forward, input size, the settings to apply) of this choice."""
        forward, size, settings = make_forward(self.checkpoint, self.backend, self.onnx_path,
                                               self.device, export_dir, threads)
        return forward, size, chosen_settings(settings, self.plain, self.threshold, self.tta,
                                              self.onnx_path)

    def weights_file(self) -> Path | str | None:
        """The file that segments: the ONNX file on that backend, else the (first) weights."""
        if self.backend == "onnx" and self.onnx_path is not None:
            return self.onnx_path
        ckpt = self.checkpoint
        return ckpt[0] if isinstance(ckpt, (list, tuple)) and len(ckpt) == 1 else ckpt


def predict_maps(
    forward: Forward,
    images: Sequence[np.ndarray],
    size: int,
    tta: bool = False,
    batch_size: int = 8,
    shapes: Sequence[tuple[int, int]] | None = None,
) -> list[Prediction]:
    """Probability maps at each image's own resolution (float32, H x W; `shapes` gives other
    output sizes, e.g. a file's own size when it was decoded reduced) and lesion scores; with
    `tta` both are averaged with the horizontally flipped image's."""
    out: list[Prediction] = []
    for start in range(0, len(images), batch_size):
        chunk = [to_gray01(im) for im in images[start:start + batch_size]]
        x = torch.cat([prepare_input(g, size) for g in chunk])
        if tta:  # the image and its flip in one forward pass
            n = len(x)
            both, both_score = forward(torch.cat([x, x.flip(-1)]))
            prob = (both[:n] + both[n:].flip(-1)) / 2
            score = None if both_score is None else (both_score[:n] + both_score[n:]) / 2
        else:
            prob, score = forward(x)
        if not torch.isfinite(prob).all() or (score is not None and
                                               not torch.isfinite(score).all()):
            raise NonFiniteOutput("the model's output is not finite (NaN or infinite); "
                                  "is the checkpoint from a run that diverged?")
        for i, (g, p) in enumerate(zip(chunk, prob)):
            shape = g.shape if shapes is None else shapes[start + i]
            if no_contrast(g):  # nothing to segment: an empty answer, said so
                out.append(Prediction(np.zeros(shape, np.float32), 0.0, NO_CONTRAST))
                continue
            full = resize_prob(p[None].float(), shape)[0, 0].numpy()
            out.append(Prediction(full, lesion_score(full, None if score is None
                                                     else float(score[i]))))
    return out


class NonFiniteOutput(ValueError):
    """A model answered NaN or infinity."""


def segment(
    model: LoadedModel | str | Path | None,
    image: np.ndarray,
    threshold: float | None = None,
    tta: bool | None = None,
) -> np.ndarray:
    """Segment one image array (any size, dtype, gray/RGB/RGBA): a boolean mask of its size.

    `model` is a `load_model()` result, a checkpoint path, or None for the shipped model.
    """
    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    settings = loaded.settings.replace(threshold=threshold, tta=tta)
    pred = predict_maps(torch_forward(loaded), [np.asarray(image)], loaded.size, settings.tta)[0]
    return decide(pred.prob, pred.score, settings)
