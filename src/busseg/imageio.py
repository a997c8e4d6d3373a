"""Reading scans and masks from disk: PNG/JPEG/BMP/TIFF through Pillow, DICOM through pydicom."""

from __future__ import annotations

import io
import logging
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

REDUCE_TO = 1024  # large JPEGs for segmentation are decoded with their shorter side near this
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom"}


log = logging.getLogger("busseg.imageio")


class ImageReadError(ValueError):
    """A file that cannot be read as an image; the message names the file and the reason."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = Path(path), reason


class ImageTooLarge(ImageReadError):
    """An image whose decoded size would pass the pixel or byte limit (refused undecoded)."""


@dataclass
class Scan:
    """One decoded frame: pixel array plus what the file says about it."""

    pixels: np.ndarray
    path: Path
    frame: int | None = None
    pixel_spacing_mm: tuple[float, float] | None = None
    meta: dict = field(default_factory=dict)
    original_shape: tuple[int, int] | None = None  # (H, W) when decoded at a reduced scale

    @property
    def shape(self) -> tuple[int, int]:
        """The file's own (height, width): what masks and statistics are given at."""
        return self.original_shape or self.pixels.shape[:2]

    @property
    def name(self) -> str:
        return self.path.stem if self.frame is None else f"{self.path.stem}_f{self.frame:03d}"


def is_dicom(path: Path) -> bool:
    """True when the file carries the DICOM preamble magic (or a DICOM suffix)."""
    if path.suffix.lower() in (".dcm", ".dicom"):
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def read_pil(path: Path | str, data: bytes | None = None,
             max_pixels: int | None = None) -> np.ndarray:
    """Read a raster image with Pillow as gray (2-D) or RGB/RGBA (3-D) array, dtype kept.

    `data` reads these bytes instead of the file (`path` then only names it in errors);
    `max_pixels` refuses larger images before decoding them.
    """
    return _decode_pil(Path(path), data, max_pixels, None)[0]


def read_pil_scan(path: Path | str, data: bytes | None = None, max_pixels: int | None = None,
                  reduce_to: int | None = REDUCE_TO) -> Scan:
    """Read a raster image as a Scan for segmentation. A JPEG whose shorter side is at least
    twice `reduce_to` is decoded at a reduced scale (libjpeg draft mode, 1/2 to 1/8, shorter side
    kept >= `reduce_to`), so memory follows the model input rather than the file's pixel count;
    `Scan.original_shape` then keeps the file's own size for the outputs."""
    arr, shape = _decode_pil(Path(path), data, max_pixels, reduce_to)
    return Scan(arr, Path(path), original_shape=shape if shape != arr.shape[:2] else None)


def _decode_pil(path: Path, data: bytes | None, max_pixels: int | None,
                reduce_to: int | None) -> tuple[np.ndarray, tuple[int, int]]:
    """(pixels, the file's own (height, width))."""
    try:
        with Image.open(io.BytesIO(data) if data is not None else path) as im:
            shape = (im.height, im.width)
            if max_pixels is not None and im.width * im.height > max_pixels:
                raise ImageTooLarge(
                    path, f"image has {im.width}x{im.height} pixels, over the {max_pixels} limit")
            if reduce_to and im.format == "JPEG" and min(shape) >= 2 * reduce_to:
                k = min(shape) / reduce_to
                im.draft(im.mode, (math.ceil(im.width / k), math.ceil(im.height / k)))
            im.load()
            if im.mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif im.mode in ("1", "L", "LA", "RGB", "RGBA", "I;16", "I;16B", "I;16L", "I", "F"):
                im = im.convert("L") if im.mode == "LA" else im
            else:
                im = im.convert("RGB")
            arr = np.array(im)
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(path, f"image too large ({exc})") from None
    except UnidentifiedImageError:
        raise ImageReadError(path, "not a readable image (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(path, f"corrupt or truncated image ({exc})") from None
    if arr.size == 0:
        raise ImageReadError(path, "image has no pixels")
    return arr, shape


def read_mask(path: Path | str) -> np.ndarray:
    """Read a mask file (1-bit, gray, RGB or RGBA): any non-zero pixel is lesion."""
    arr = read_pil(path)
    if arr.ndim == 3:
        arr = arr[..., :3].max(axis=-1) if arr.shape[-1] == 4 else arr.max(axis=-1)
    return arr > 0


def mask_image(mask: np.ndarray) -> Image.Image:
    """A boolean mask as an 8-bit image: lesion 255, background 0 (what `read_mask` reads)."""
    return Image.fromarray(np.asarray(mask, dtype=bool).astype(np.uint8) * 255)


def prob_image(prob: np.ndarray) -> Image.Image:
    """A probability map in [0, 1] as an 8-bit gray image (rounded)."""
    return Image.fromarray((np.asarray(prob) * 255 + 0.5).astype(np.uint8))


def read_dicom(path: Path | str, frames: str = "all", data: bytes | None = None,
               max_pixels: int | None = None) -> list[Scan]:
    """Read a DICOM file into one Scan per chosen frame (`all`, `first`, `middle` or an index)."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, convert_color_space

    path = Path(path)
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)  # its reasons reach our error line
    limit = max_pixels if max_pixels is not None else DEFAULT_MAX_PIXELS
    try:
        raw = data if data is not None else path.read_bytes()
        check_deflated_size(path, raw, limit)
        with warnings.catch_warnings(record=True) as caught:  # kept per file, never printed
            warnings.simplefilter("always")
            ds = pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=False)
            rows, cols = int(getattr(ds, "Rows", 0)), int(getattr(ds, "Columns", 0))
            n = int(getattr(ds, "NumberOfFrames", 1) or 1)
            if rows * cols * n > limit:
                raise ImageTooLarge(path, f"DICOM has {n} frame(s) of {cols}x{rows} pixels, "
                                           f"over the {limit} limit")
            arr = ds.pixel_array
        for w in caught:
            log.debug("%s: %s", path, w.message)
    except ImageReadError:
        raise
    except OSError as exc:
        raise ImageReadError(path, f"cannot read file ({exc.strerror or exc})") from None
    except InvalidDicomError as exc:
        raise ImageReadError(path, f"not a valid DICOM file ({exc})") from None
    except (AttributeError, KeyError):
        raise ImageReadError(path, "DICOM file holds no pixel data") from None
    except Exception as exc:  # pydicom raises many types for broken pixel data
        raise ImageReadError(path, f"cannot decode DICOM pixel data ({exc})") from None
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2"))
    samples = int(getattr(ds, "SamplesPerPixel", 1))
    n_frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if n_frames == 1:
        arr = arr[None]
    if samples == 1:
        arr = np.asarray(apply_modality_lut(arr, ds), dtype=np.float32)
        if photometric == "MONOCHROME1":
            arr = arr.max() - arr
    elif photometric.startswith("YBR") and photometric not in ("YBR_RCT", "YBR_ICT"):
        try:  # pydicom already converts decoded JPEG colour; others are converted here
            arr = convert_color_space(arr, photometric, "RGB")
        except (NotImplementedError, ValueError) as exc:
            raise ImageReadError(path, f"colour space {photometric}: {exc}") from None
    spacing = _pixel_spacing(ds)
    chosen = _choose_frames(path, n_frames, frames)
    multi = n_frames > 1
    return [
        Scan(arr[i], path, i if multi else None, spacing, {"photometric": photometric})
        for i in chosen
    ]


def _pixel_spacing(ds) -> tuple[float, float] | None:
    """Pixel spacing in mm (row, column); None when the file does not give a usable one."""
    try:
        for key in ("PixelSpacing", "ImagerPixelSpacing"):
            value = getattr(ds, key, None)
            if value is not None and len(value) == 2:
                spacing = float(value[0]), float(value[1])
                return spacing if all(0 < v < 1e3 for v in spacing) else None
        regions = getattr(ds, "SequenceOfUltrasoundRegions", None)
        if regions:
            r = regions[0]
            # units code 3 = cm; PhysicalDelta is cm per pixel
            if getattr(r, "PhysicalUnitsXDirection", None) == 3:
                spacing = float(r.PhysicalDeltaY) * 10.0, float(r.PhysicalDeltaX) * 10.0
                return spacing if all(0 < v < 1e3 for v in spacing) else None
    except (AttributeError, TypeError, ValueError, IndexError):
        return None  # odd metadata means "no mm² figure", never an error
    return None


DEFLATED = "1.2.840.10008.1.2.1.99"
DEFAULT_MAX_PIXELS = 200_000_000


def check_deflated_size(path: Path, raw: bytes, max_pixels: int) -> None:
    """Refuse a deflated DICOM whose inflated data set would exceed what `max_pixels` frames of
    8-bit RGB need, by inflating in bounded chunks before pydicom inflates it whole."""
    import zlib

    if len(raw) < 144 or raw[128:132] != b"DICM" or DEFLATED.encode() not in raw[132:1024]:
        return
    group_len = int.from_bytes(raw[140:144], "little")  # (0002,0000) UL value
    body = raw[144 + group_len:]
    budget = max_pixels * 3 + (1 << 20)  # 8-bit RGB or 16-bit gray frames, plus metadata
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total, pos, chunk = 0, 0, 1 << 16
    try:
        while pos < len(body) or inflater.unconsumed_tail:
            data = inflater.unconsumed_tail or body[pos:pos + chunk]
            if not inflater.unconsumed_tail:
                pos += chunk
            total += len(inflater.decompress(data, 1 << 20))
            if total > budget:
                raise ImageTooLarge(path, f"deflated DICOM inflates to over {budget} bytes, "
                                           "more than the pixel limit allows")
            if inflater.eof:
                break
    except zlib.error as exc:
        raise ImageReadError(path, f"broken deflated DICOM data ({exc})") from None


def _choose_frames(path: Path, n: int, frames: str) -> list[int]:
    if frames == "all":
        return list(range(n))
    if frames == "first":
        return [0]
    if frames == "middle":
        return [n // 2]
    try:
        idx = [int(x) for x in str(frames).split(",")]
    except ValueError:
        raise ImageReadError(path, f"bad --frames value {frames!r}") from None
    bad = [i for i in idx if not 0 <= i < n]
    if bad:
        raise ImageReadError(path, f"frame(s) {bad} out of range: file has {n} frame(s)")
    return idx


def sniff(data: bytes) -> str | None:
    """The image format the bytes start with (png, jpeg, bmp, tiff, gif, webp, dicom) or None."""
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
    for magic, kind in ((b"\x89PNG\r\n\x1a\n", "png"), (b"\xff\xd8\xff", "jpeg"), (b"BM", "bmp"),
                        (b"II*\x00", "tiff"), (b"MM\x00*", "tiff"), (b"GIF8", "gif")):
        if data.startswith(magic):
            return kind
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def header_pixels(data: bytes) -> int:
    """A raster upload's pixel count from its header, without decoding (0 when unknown: DICOM,
    or bytes Pillow cannot identify)."""
    if sniff(data) in (None, "dicom"):
        return 0
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.width * im.height
    except (OSError, ValueError, Image.DecompressionBombError):
        return 0


def read_upload(data: bytes, name: str, frames: str = "first",
                max_pixels: int | None = None) -> list[Scan]:
    """Decode uploaded bytes by their content (never the file name)."""
    kind = sniff(data)
    if kind is None:
        raise ImageReadError(name, "not an image: content is not PNG, JPEG, BMP, TIFF or DICOM")
    if kind == "dicom":
        return read_dicom(name, frames, data=data, max_pixels=max_pixels)
    return [read_pil_scan(name, data=data, max_pixels=max_pixels)]


def read_scans(path: Path | str, frames: str = "all") -> list[Scan]:
    """Read any supported file into a list of Scans (several for multi-frame DICOM)."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "file not found" if not path.exists() else "not a file")
    if is_dicom(path):
        return read_dicom(path, frames)
    return [read_pil_scan(path)]
