"""Running a loaded model on images of any size: batching, flip TTA, resizing back."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from busseg.checkpoint import LoadedModel, load_model
from busseg.preprocess import prepare_input, resize_prob, to_gray01

Forward = Callable[[torch.Tensor], torch.Tensor]  # N x 1 x S x S in [0, 1] -> probabilities


def torch_forward(loaded: LoadedModel, device: str = "cpu") -> Forward:
    """A forward function running the PyTorch model (probabilities, float32)."""
    net = loaded.net

    @torch.inference_mode()
    def run(x: torch.Tensor) -> torch.Tensor:
        x = x.to(device)
        if device == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        return torch.sigmoid(net(x).float()).cpu()

    return run


def onnx_forward(onnx_path: Path | str, threads: int = 0) -> Forward:
    """A forward function running an exported model with ONNX Runtime (CPU)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads > 0:
        opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(sess.run(None, {name: x.numpy().astype(np.float32)})[0])

    return run


def predict_probs(
    forward: Forward,
    images: Sequence[np.ndarray],
    size: int,
    tta: bool = False,
    batch_size: int = 8,
) -> list[np.ndarray]:
    """Probability maps at each image's own resolution (float32, H x W)."""
    out: list[np.ndarray] = []
    for start in range(0, len(images), batch_size):
        chunk = [to_gray01(im) for im in images[start:start + batch_size]]
        x = torch.cat([prepare_input(g, size) for g in chunk])
        prob = forward(x)
        if tta:
            prob = (prob + forward(x.flip(-1)).flip(-1)) / 2
        for g, p in zip(chunk, prob):
            out.append(resize_prob(p[None].float(), g.shape)[0, 0].numpy())
    return out


def postprocess(prob: np.ndarray, threshold: float, min_area_frac: float = 0.0,
                keep_largest: bool = False, min_confidence: float = 0.0) -> np.ndarray:
    """Threshold a probability map, then drop connected components smaller than
    `min_area_frac` of the image or whose mean probability is below `min_confidence`, and, with
    `keep_largest`, all but the largest one left."""
    mask = prob >= threshold
    if not mask.any() or (min_area_frac <= 0 and not keep_largest and min_confidence <= 0):
        return mask
    labels, n = ndimage.label(mask)
    index = np.arange(1, n + 1)
    areas = ndimage.sum_labels(mask, labels, index)
    keep = areas >= min_area_frac * mask.size
    if min_confidence > 0:
        keep &= ndimage.mean(prob, labels, index) >= min_confidence
    if keep_largest and keep.any():
        largest = int(np.argmax(np.where(keep, areas, -1)))
        keep = np.zeros_like(keep)
        keep[largest] = True
    return np.isin(labels, index[keep])


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
    tta = loaded.tta if tta is None else tta
    prob = predict_probs(torch_forward(loaded), [np.asarray(image)], loaded.size, tta)[0]
    return loaded.postprocess(prob, threshold)
