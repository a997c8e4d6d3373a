"""Reading scans and masks from disk: PNG/JPEG/BMP/TIFF through Pillow, DICOM through pydicom."""

from __future__ import annotations

import io
import logging
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from busseg.errors import InvalidInput

REDUCE_TO = 1024  # large JPEGs for segmentation are decoded with their shorter side near this
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".dcm",
                  ".dicom"}  # what every reader, folder walk and upload takes as an image
DEFAULT_MAX_PIXELS = 40_000_000  # decoded pixels per file (all frames), CLI and service alike


log = logging.getLogger("busseg.imageio")


class ImageReadError(InvalidInput):
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
    """Read a raster image with Pillow as gray (2-D) or RGB (3-D) array, dtype kept
    (transparency composited onto black).

    `data` reads these bytes instead of the file (`path` then only names it in errors);
    `max_pixels` refuses larger images before decoding them.
    """
    return _decode_pil(Path(path), data, max_pixels, None)[0][0]


def read_pil_scan(path: Path | str, data: bytes | None = None, max_pixels: int | None = None,
                  reduce_to: int | None = REDUCE_TO) -> Scan:
    """Read a raster image as a Scan for segmentation (its first frame). A JPEG whose shorter
    side is at least twice `reduce_to` is decoded at a reduced scale (libjpeg draft mode, 1/2
    to 1/8, shorter side kept >= `reduce_to`), so memory follows the model input rather than
    the file's pixel count; `Scan.original_shape` then keeps the file's own size."""
    return read_pil_scans(path, "first", data, max_pixels, reduce_to)[0]


def read_pil_scans(path: Path | str, frames: str = "all", data: bytes | None = None,
                   max_pixels: int | None = None, reduce_to: int | None = REDUCE_TO) -> list[Scan]:
    """A raster image's chosen frames as Scans (multi-page TIFF, animated GIF / PNG / WebP
    follow `frames` as a multi-frame DICOM does), each turned as its EXIF orientation says."""
    path = Path(path)
    decoded = _decode_pil(path, data, max_pixels, reduce_to, frames)
    multi = len(decoded) > 1 or decoded[0][2] is not None
    return [Scan(arr, path, frame if multi else None,
                 original_shape=shape if shape != arr.shape[:2] else None)
            for arr, shape, frame in decoded]


def _pil_array(im: Image.Image, orientation: int) -> np.ndarray:
    """One loaded frame as gray (2-D) or RGB (3-D), dtype kept, turned as the EXIF
    `orientation` says (a copy only when it is not 1). Transparency is composited onto black,
    as a viewer shows the image: a transparent pixel's hidden colour never reaches the model."""
    if orientation not in (0, 1):
        im = ImageOps.exif_transpose(im)
    if im.mode in ("P", "PA"):
        im = im.convert("RGBA" if im.mode == "PA" or "transparency" in im.info else "RGB")
    elif im.mode not in ("1", "L", "LA", "RGB", "RGBA", "I;16", "I;16B", "I;16L", "I", "F"):
        im = im.convert("RGB")
    arr = np.array(im)
    if im.mode in ("LA", "RGBA"):
        arr = composite_on_black(arr)
    return arr


def composite_on_black(arr: np.ndarray) -> np.ndarray:
    """An 8-bit gray+alpha or RGBA array composited onto black (alpha removed), in row blocks
    so a large scan needs no float copy of itself."""
    out = np.empty(arr.shape[:2] + ((arr.shape[-1] - 1,) if arr.shape[-1] > 2 else ()),
                   np.uint8)
    for r in range(0, arr.shape[0], 256):
        block = arr[r:r + 256].astype(np.uint16)
        alpha = block[..., -1:]
        mixed = (block[..., :-1] * alpha + 127) // 255
        out[r:r + 256] = mixed[..., 0] if out.ndim == 2 else mixed
    return out


def _decode_pil(path: Path, data: bytes | None, max_pixels: int | None,
                reduce_to: int | None, frames: str = "first"):
    """[(pixels, the frame's own (height, width) as displayed, frame index or None)]."""
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    try:
        with Image.open(io.BytesIO(data) if data is not None else path) as im:
            n = int(getattr(im, "n_frames", 1) or 1)
            chosen = _choose_frames(path, n, frames)
            if im.width * im.height * len(chosen) > limit:
                raise ImageTooLarge(path, f"image has {len(chosen)} frame(s) of "
                                          f"{im.width}x{im.height} pixels, over the {limit} "
                                          "limit (--max-pixels to raise it)")
            orientation = int(im.getexif().get(0x0112, 1) or 1)  # EXIF Orientation
            turned = orientation in (5, 6, 7, 8)
            shape = (im.width, im.height) if turned else (im.height, im.width)
            if reduce_to and im.format == "JPEG" and min(shape) >= 2 * reduce_to:
                k = min(shape) / reduce_to
                im.draft(im.mode, (math.ceil(im.width / k), math.ceil(im.height / k)))
            out = []
            for i in chosen:
                im.seek(i)
                im.load()
                out.append((_pil_array(im, orientation), shape, i if n > 1 else None))
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(path, f"image too large ({exc})") from None
    except UnidentifiedImageError:
        raise ImageReadError(path, "not a readable image (unknown or corrupt format)") from None
    except MemoryError:
        raise ImageTooLarge(path, "not enough memory to decode this image") from None
    except Exception as exc:  # Pillow's plug-ins raise many types for broken files
        raise ImageReadError(path, f"corrupt or truncated image ({_reason(exc)})") from None
    if any(arr.size == 0 for arr, _, _ in out):
        raise ImageReadError(path, "image has no pixels")
    return out


def read_mask(path: Path | str) -> np.ndarray:
    """Read a mask file (1-bit, gray, RGB or RGBA, transparency composited onto black): any
    non-zero pixel is lesion."""
    arr = read_pil(path)
    if arr.ndim == 3:
        arr = arr.max(axis=-1)
    return arr > 0


def mask_image(mask: np.ndarray) -> Image.Image:
    """A boolean mask as an 8-bit image: lesion 255, background 0 (what `read_mask` reads)."""
    return Image.fromarray(np.asarray(mask, dtype=bool).astype(np.uint8) * 255)


def prob_image(prob: np.ndarray) -> Image.Image:
    """A probability map in [0, 1] as an 8-bit gray image (rounded)."""
    return Image.fromarray((np.asarray(prob) * 255 + 0.5).astype(np.uint8))


def read_dicom(path: Path | str, frames: str = "all", data: bytes | None = None,
               max_pixels: int | None = None) -> list[Scan]:
    """Read a DICOM file into one Scan per chosen frame (`all`, `first`, `middle` or an index).

    Every step from bytes to pixels (parsing, decoding, the check that each compressed frame
    is whole, the modality LUT or rescale, the palette, the colour space) runs inside one
    guard: any failure is an ImageReadError naming the file and the reason."""
    path = Path(path)
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)  # its reasons reach our error line
    limit = max_pixels if max_pixels is not None else DEFAULT_MAX_PIXELS
    stage = "cannot decode DICOM pixel data"
    try:
        ds, arr, n_frames = _decode_dicom(path, data, limit)
        stage = "cannot turn stored values into pixels (modality LUT, rescale or palette)"
        arr = _dicom_display_pixels(path, ds, arr)
        stage = "cannot read the DICOM frame layout"
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
        chosen = _choose_frames(path, n_frames, frames)
        spacing = _pixel_spacing(ds)
    except ImageReadError:
        raise
    except MemoryError:
        raise ImageTooLarge(path, "not enough memory to decode this DICOM") from None
    except Exception as exc:  # pydicom raises many types for broken data sets and pixel data
        raise ImageReadError(path, f"{stage}: {_reason(exc)}") from None
    multi = n_frames > 1
    return [Scan(arr[i], path, i if multi else None, spacing, {"photometric": photometric})
            for i in chosen]


def _reason(exc: BaseException) -> str:
    """An exception as one short line (its type when it says nothing; a missing DICOM
    attribute by tag and keyword)."""
    if isinstance(exc, KeyError) and exc.args and isinstance(exc.args[0], int):
        from pydicom.datadict import keyword_for_tag
        from pydicom.tag import Tag

        tag = Tag(exc.args[0])
        return f"attribute {tag} {keyword_for_tag(tag) or ''} is missing".replace("  ", " ")
    if isinstance(exc, AttributeError) and "has no attribute" in str(exc):
        return f"attribute {str(exc).rsplit(' ', 1)[-1]} is missing"
    text = " ".join(str(exc).split())
    return (text[:300] + "...") if len(text) > 300 else (text or type(exc).__name__)


# what `read_dicom` turns into pixels; the others (HSV, ARGB, CMYK: retired) are refused by name
PHOTOMETRIC = {"MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR", "YBR_FULL",
               "YBR_FULL_422", "YBR_PARTIAL_420", "YBR_PARTIAL_422", "YBR_ICT", "YBR_RCT"}


def _decode_dicom(path: Path, data: bytes | None, limit: int):
    """(data set, frames x rows x cols [x samples] array, number of frames), undecoded
    checks first: file kind, size limit, photometric interpretation, whole compressed frames."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        raw = data if data is not None else path.read_bytes()
    except OSError as exc:
        raise ImageReadError(path, f"cannot read file ({exc.strerror or exc})") from None
    check_deflated_size(path, raw, limit)
    with warnings.catch_warnings(record=True) as caught:  # kept per file, never printed
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=False)
        except InvalidDicomError as exc:
            raise ImageReadError(path, f"not a valid DICOM file ({_reason(exc)})") from None
        if "PixelData" not in ds:
            raise ImageReadError(path, "DICOM file holds no pixel data")
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        n = int(ds.get("NumberOfFrames", 1) or 1)
        if rows * cols * n > limit:
            raise ImageTooLarge(path, f"DICOM has {n} frame(s) of {cols}x{rows} pixels, "
                                       f"over the {limit} limit (--max-pixels to raise it)")
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
        if photometric not in PHOTOMETRIC:
            raise ImageReadError(path, f"photometric interpretation {photometric} is not "
                                       "supported (supported: " + ", ".join(sorted(PHOTOMETRIC))
                                 + ")")
        _check_whole_frames(path, ds, n)
        arr = ds.pixel_array
    for w in caught:
        log.debug("%s: %s", path, w.message)
    return ds, (arr[None] if n == 1 else arr), n


# compressed transfer syntaxes whose every frame ends with an end-of-image marker (FFD9)
MARKER_ENDED = ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
                "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81",
                "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91")


def _check_whole_frames(path: Path, ds, n_frames: int) -> None:
    """Refuse a JPEG / JPEG-LS / JPEG 2000 frame cut short (no end-of-image marker): decoders
    return such a frame padded, as if whole."""
    from pydicom.encaps import generate_frames

    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", ""))
    if syntax not in MARKER_ENDED:
        return
    for i, frame in enumerate(generate_frames(ds.PixelData, number_of_frames=n_frames)):
        if not bytes(frame).rstrip(b"\x00").endswith(b"\xff\xd9"):
            raise ImageReadError(path, f"compressed frame {i} is truncated (its data stops "
                                       "before the end-of-image marker)")


def _dicom_display_pixels(path: Path, ds, arr: np.ndarray) -> np.ndarray:
    """Stored values -> what a viewer shows: the modality LUT or rescale for gray (inverted for
    MONOCHROME1), the palette for PALETTE COLOR, YBR converted to RGB."""
    from pydicom.pixels import apply_color_lut, apply_modality_lut, convert_color_space

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
    elif samples == 1:
        for key in ("RescaleSlope", "RescaleIntercept"):
            if key in ds and "ModalityLUTSequence" not in ds:
                try:
                    float(ds[key].value)
                except (TypeError, ValueError):
                    raise ImageReadError(path, f"{key} {ds[key].value!r} is not a number"
                                         ) from None
        arr = np.asarray(apply_modality_lut(arr, ds), dtype=np.float32)
        if not np.isfinite(arr).all():
            raise ImageReadError(path, "pixel values are not finite after the modality LUT "
                                       "(check RescaleSlope / RescaleIntercept)")
        if photometric == "MONOCHROME1":
            arr = arr.max() - arr
    elif photometric.startswith("YBR") and photometric not in ("YBR_RCT", "YBR_ICT"):
        try:  # pydicom already converts decoded JPEG colour; others are converted here
            arr = convert_color_space(arr, photometric, "RGB")
        except (NotImplementedError, ValueError) as exc:
            raise ImageReadError(path, f"colour space {photometric}: {exc}") from None
    if arr.ndim not in (3, 4) or arr.size == 0:
        raise ImageReadError(path, f"DICOM pixel data has an unexpected shape {arr.shape}")
    return arr


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
        raise ImageReadError(name, "not an image: content is not PNG, JPEG, BMP, TIFF, GIF, "
                                   "WebP or DICOM")
    if kind == "dicom":
        return read_dicom(name, frames, data=data, max_pixels=max_pixels)
    return read_pil_scans(name, frames, data=data, max_pixels=max_pixels)


def image_kind(path: Path) -> str | None:
    """The one rule for which files are scans: 'dicom' (magic or suffix), 'raster' (a known
    image suffix) or None; folders and files given by name follow it alike."""
    if is_dicom(path):
        return "dicom"
    return "raster" if path.suffix.lower() in IMAGE_SUFFIXES else None


def read_scans(path: Path | str, frames: str = "all",
               max_pixels: int | None = None) -> list[Scan]:
    """Read any supported file into a list of Scans (several for a multi-frame file)."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "file not found" if not path.exists() else "not a file")
    kind = image_kind(path)
    if kind is None:
        raise ImageReadError(path, f"not a supported image type ({path.suffix or 'no suffix'}; "
                                   "supported: " + ", ".join(sorted(IMAGE_SUFFIXES)) + ")")
    if kind == "dicom":
        return read_dicom(path, frames, max_pixels=max_pixels)
    return read_pil_scans(path, frames, max_pixels=max_pixels)
