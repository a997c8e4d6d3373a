"""Hostile and unlucky scans made by the tests: each is a file a careless user or an attacker
could hand to `busseg predict` or the service (docs/reliability.md lists them)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from synth import scan

US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"


def mr_small() -> Path:
    """pydicom's own MR_small.dcm (16-bit MONOCHROME2 with a rescale)."""
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file("MR_small.dcm"))


def broken_modality_luts(folder: Path) -> list[Path]:
    """MR_small.dcm three times with one change each: a Modality LUT Sequence item without
    LUTData, one without LUTDescriptor, and RescaleSlope 'abcdef'."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for kind in ("no_lutdata", "no_lutdescriptor", "bad_slope"):
        ds = pydicom.dcmread(mr_small())
        if kind == "bad_slope":  # written valid, then its six bytes replaced
            ds.RescaleSlope, ds.RescaleIntercept = "1.2345", "0"
        else:
            item = Dataset()
            if kind != "no_lutdescriptor":
                item.add_new(0x00283002, "US", [256, 0, 16])  # LUTDescriptor
            if kind != "no_lutdata":
                item.add_new(0x00283006, "US", list(range(256)))  # LUTData
            item.ModalityLUTType = "US"
            ds.ModalityLUTSequence = [item]
            for key in ("RescaleSlope", "RescaleIntercept"):
                if key in ds:
                    del ds[key]
        path = folder / f"{kind}.dcm"
        ds.save_as(path)
        if kind == "bad_slope":
            raw = path.read_bytes()
            assert raw.count(b"1.2345") == 1
            path.write_bytes(raw.replace(b"1.2345", b"abcdef"))
        out.append(path)
    return out


def base_dataset(sop_class: str = US_IMAGE, rows: int = 90, cols: int = 120) -> Dataset:
    """An 8-bit single-frame data set with the attributes every source needs (no pixels)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName = "anon", "Anon^Patient"
    ds.Modality = "US" if sop_class == US_IMAGE else "OT"
    if sop_class == SECONDARY_CAPTURE:
        ds.ConversionType = "WSD"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    return ds


def gray_dicom(path: Path, pixels: np.ndarray, sop_class: str = US_IMAGE) -> Path:
    ds = base_dataset(sop_class, *pixels.shape)
    ds.PixelData = pixels.astype(np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def jpeg_dicom(path: Path, pixels: np.ndarray, keep: float = 1.0) -> Path:
    """A JPEG-baseline DICOM of a gray scan; `keep` < 1 cuts its one fragment to that share."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    data = buf.getvalue()
    data = data[: int(len(data) * keep)] if keep < 1 else data
    ds = base_dataset(US_IMAGE, *pixels.shape)
    ds.file_meta.TransferSyntaxUID = JPEG_BASELINE
    ds.PixelData = encapsulate([data])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


PALETTE = np.stack([np.arange(256), 255 - np.arange(256), np.full(256, 128)], 1)  # 8-bit RGB


def palette_dicom(path: Path, indices: np.ndarray) -> Path:
    """PALETTE COLOR: index i shows as PALETTE[i] (16-bit LUT entries)."""
    ds = base_dataset(US_IMAGE, *indices.shape)
    ds.PhotometricInterpretation = "PALETTE COLOR"
    for i, colour in enumerate(("Red", "Green", "Blue")):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
        lut = (PALETTE[:, i].astype(np.uint16) * 257).astype("<u2").tobytes()
        setattr(ds, f"{colour}PaletteColorLookupTableData", lut)
    ds.PixelData = indices.astype(np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def hsv_dicom(path: Path) -> Path:
    """A three-sample HSV scan (a retired photometric interpretation)."""
    ds = base_dataset(US_IMAGE, 40, 50)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "HSV", 0
    ds.PixelData = np.random.default_rng(0).integers(0, 255, (40, 50, 3), np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def exif_rotated_jpeg(path: Path, stored: np.ndarray, orientation: int = 6) -> Path:
    """A JPEG whose pixels are stored as `stored` with an EXIF Orientation tag."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(path, format="JPEG", quality=95, exif=exif.tobytes())
    return path


def multi_frame(path: Path, frames: list[np.ndarray], fmt: str) -> Path:
    """A multi-page TIFF or an animated GIF / PNG of the given gray frames."""
    first, *rest = [Image.fromarray(f) for f in frames]
    first.save(path, format=fmt, save_all=True, append_images=rest,
               **({"duration": 100, "loop": 0} if fmt in ("GIF", "PNG") else {}))
    return path


def build(folder: Path) -> dict[str, Path]:
    """One file for each kind of bad or odd input that fits in a folder, and good scans
    between them (so a run must carry on past each bad one)."""
    folder.mkdir(parents=True, exist_ok=True)
    img, _ = scan(5, h=90, w=120)
    files = {f"good_{i}": gray_dicom(folder / f"good_{i}.dcm", scan(20 + i, h=90, w=120)[0])
             for i in range(2)}
    for p in broken_modality_luts(folder):
        files[p.stem] = p
    files["truncated_jpeg"] = jpeg_dicom(folder / "truncated_jpeg.dcm", img, keep=1 / 3)
    files["whole_jpeg"] = jpeg_dicom(folder / "whole_jpeg.dcm", img)
    files["palette"] = palette_dicom(folder / "palette.dcm", img)
    files["hsv"] = hsv_dicom(folder / "hsv.dcm")
    files["exif6"] = exif_rotated_jpeg(folder / "exif6.jpg", scan(7, h=120, w=90)[0])
    for name, value in (("black", 0), ("white", 255)):
        files[name] = folder / f"{name}.png"
        Image.fromarray(np.full((400, 500), value, np.uint8)).save(files[name])
    files["tiff3"] = multi_frame(folder / "tiff3.tif", [img, img[::-1], img[:, ::-1]], "TIFF")
    files["gif2"] = multi_frame(folder / "gif2.gif", [img, img[::-1]], "GIF")
    files["webp"] = folder / "still.webp"
    Image.fromarray(img).save(files["webp"], format="WEBP", lossless=True)
    files["junk_png"] = folder / "junk.png"
    files["junk_png"].write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    return files
