"""The one preprocessing path shared by prepare, training, evaluation, prediction and export.

Images of any dtype and channel layout become float32 grayscale in [0, 1] (`to_gray01`), are
resized with an area filter (`resize_image`), and masks are resized so they stay binary
(`resize_mask`). Intensity standardisation (zero mean, unit variance per image) lives inside the
model (`busseg.models.unet.Standardize`), so an exported ONNX graph needs exactly these steps.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from busseg.errors import InvalidInput


def _rgb8_to_gray01(arr: np.ndarray, rows: int = 256) -> np.ndarray:
    """8-bit RGB(A) to gray [0, 1] in row blocks, so a large scan needs one float32 plane of
    memory, not three float64 ones (the same numbers as the one-shot formula)."""
    weights = np.array([0.299, 0.587, 0.114])
    out = np.empty(arr.shape[:2], np.float32)
    for r in range(0, arr.shape[0], rows):
        out[r:r + rows] = (arr[r:r + rows, :, :3].astype(np.float64) @ weights).astype(np.float32)
    out /= np.float32(255.0)
    return out


def to_gray01(image: np.ndarray) -> np.ndarray:
    """Return a 2-D float32 image in [0, 1] from gray, RGB, RGBA, bool, integer or float input
    (RGBA composited onto black first, as a viewer shows it)."""
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] == 4 and arr.dtype == np.uint8 and arr.size:
        from busseg.imageio import composite_on_black

        arr = composite_on_black(arr)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4) and arr.dtype == np.uint8 and arr.size:
        return _rgb8_to_gray01(arr)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        alpha = 1.0
        if arr.shape[-1] == 4:  # float or 16-bit RGBA: alpha on the array's own scale
            top = 1.0 if np.issubdtype(arr.dtype, np.floating) else np.iinfo(arr.dtype).max
            alpha = arr[..., 3:].astype(np.float64) / top
        arr = (arr[..., :3].astype(np.float64) * alpha) @ np.array([0.299, 0.587, 0.114])
        src_dtype = np.asarray(image).dtype
    elif arr.ndim == 3 and arr.shape[-1] == 1:
        arr, src_dtype = arr[..., 0], arr.dtype
    elif arr.ndim == 2:
        src_dtype = arr.dtype
    else:
        raise InvalidInput(f"expected a 2-D gray or HxWx{{1,3,4}} image, got shape {arr.shape}")
    if arr.size == 0:
        raise InvalidInput("image is empty")
    if src_dtype == np.bool_:
        out = arr.astype(np.float32)
    elif np.issubdtype(src_dtype, np.integer):
        info = np.iinfo(src_dtype)
        if info.max <= 255:
            out = arr.astype(np.float32) / 255.0
        else:  # 16/32-bit scans rarely use the full range: stretch what is there
            out = _minmax(arr.astype(np.float32))
    else:
        out = arr.astype(np.float32, copy=False)  # already gray float32: no second copy
        if not np.isfinite(out).all():
            raise InvalidInput("image holds NaN or infinite values")
        if out.min() < 0.0 or out.max() > 1.0:
            out = _minmax(out)
    return np.ascontiguousarray(out, dtype=np.float32)


NO_CONTRAST = "the image has no contrast (constant or nearly); no lesion marked"
CONTRAST_MIN = 0.02  # gray01 spread (0.5th to 99.5th percentile) below which nothing is seen


def no_contrast(gray01: np.ndarray) -> bool:
    """Whether a gray [0, 1] image is constant or nearly so (its 0.5th to 99.5th percentile
    spread is under 2% of the range), judged on at most about 65,000 of its pixels: such an
    image shows no tissue, and any lesion the model drew in it would be invented."""
    step = max(1, int(np.sqrt(gray01.size / 65536)))
    lo, hi = np.percentile(gray01[::step, ::step], [0.5, 99.5])
    return bool(hi - lo < CONTRAST_MIN)


def _minmax(arr: np.ndarray) -> np.ndarray:
    lo, hi = float(arr.min()), float(arr.max())
    return (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)


def resize_image(gray01: np.ndarray | torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a 2-D image (or an N x 1 x H x W batch) to `size` (H, W) with an area filter.

    Down-sampling uses area averaging (anti-aliased); up-sampling uses bilinear interpolation.
    """
    t = torch.as_tensor(gray01, dtype=torch.float32)
    squeeze = t.ndim == 2
    if squeeze:
        t = t[None, None]
    h, w = t.shape[-2:]
    if (h, w) != tuple(size):
        mode = "area" if size[0] <= h and size[1] <= w else "bilinear"
        kwargs = {} if mode == "area" else {"align_corners": False}
        t = F.interpolate(t, size=tuple(size), mode=mode, **kwargs)
    return t[0, 0] if squeeze else t


def resize_mask(mask: np.ndarray | torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a binary mask to `size`, keeping it binary (area-weighted vote, threshold 0.5)."""
    m = torch.as_tensor(np.asarray(mask) > 0 if not torch.is_tensor(mask) else mask > 0)
    return resize_image(m.float(), size) >= 0.5


def prepare_input(image: np.ndarray, size: int) -> torch.Tensor:
    """Turn any image array into the model's 1 x 1 x size x size float input in [0, 1]."""
    return resize_image(to_gray01(image), (size, size))[None, None]


def resize_prob(prob: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize an N x 1 x h x w probability map back to an original (H, W) with bilinear filter."""
    if tuple(prob.shape[-2:]) == tuple(size):
        return prob
    return F.interpolate(prob, size=tuple(size), mode="bilinear", align_corners=False)
