"""`busseg predict`: segment scans of any size and format, write masks and a results table."""

from __future__ import annotations

import glob
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from tqdm import tqdm

from busseg.imageio import (
    IMAGE_SUFFIXES,
    ImageReadError,
    Scan,
    is_dicom,
    mask_image,
    prob_image,
    read_scans,
)
from busseg.inference import make_forward, predict_maps
from busseg.jsonio import write_csv
from busseg.postprocess import chosen_settings, decide
from busseg.preprocess import to_gray01
from busseg.safety import claim, existing, inside

log = logging.getLogger("busseg.predict")
SAMPLES_DIR = Path(__file__).parent / "samples"
MASK_NAME = re.compile(r"_(mask|pred)(_\d+)?$")
OUTPUT_SUFFIXES = ("_mask.png", "_prob.png", "_overlay.png", "_seg.dcm")


@dataclass
class PredictReport:
    """Rows written and the files that failed (path: reason)."""

    rows: list[dict] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def previous_outputs(out: Path) -> list[Path]:
    """The files an earlier predict run wrote in `out` (from its results.json)."""
    results = out / "results.json"
    paths = [results, out / "results.csv", out / "model.onnx"]
    if results.is_file():
        try:
            names = [r["name"] for r in json.loads(results.read_text()).get("images", [])]
        except (ValueError, KeyError, TypeError, AttributeError):
            names = []
        paths += [out / f"{n}{suffix}" for n in names for suffix in OUTPUT_SUFFIXES]
    return paths


def is_mask_name(path: Path) -> bool:
    """Whether a file is named like a ground-truth or predicted mask (`<stem>_mask.png`)."""
    return bool(MASK_NAME.search(path.stem))


def expand_inputs(inputs: list[str], skipped: list[str] | None = None,
                  include_masks: bool = False) -> tuple[list[Path], list[str]]:
    """Files from a mix of files, folders (recursive) and glob patterns; (files, errors).

    In folders, files that are neither images nor DICOM, and (unless `include_masks`) files
    named like masks, are left out and listed in `skipped` with the reason."""
    files: list[Path] = []
    errors: list[str] = []
    skipped = [] if skipped is None else skipped
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = []
            for f in sorted(p.rglob("*")):
                if not f.is_file() or f.name.startswith("."):
                    continue
                if f.suffix.lower() not in IMAGE_SUFFIXES and not is_dicom(f):
                    skipped.append(f"{f}: not an image or DICOM file")
                elif is_mask_name(f) and not include_masks:
                    skipped.append(f"{f}: named like a mask (--include-masks to segment it)")
                else:
                    found.append(f)
            if not found:
                errors.append(f"{p}: folder holds no image files")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        elif any(ch in item for ch in "*?["):
            matched = sorted(Path(m) for m in glob.glob(item, recursive=True) if Path(m).is_file())
            if not matched:
                errors.append(f"{item}: pattern matches no file")
            files.extend(matched)
        else:
            errors.append(f"{p}: no such file or folder")
    seen, unique = set(), []
    for f in files:
        if f.resolve() not in seen:
            seen.add(f.resolve())
            unique.append(f)
    return unique, errors


def count_components(mask: np.ndarray) -> int:
    """Connected components of a mask, labelled in 16 bits where that suffices (a quarter of
    the memory of the default 32-bit labels on a large scan)."""
    try:
        return int(ndimage.label(mask, output=np.uint16)[1])
    except RuntimeError:  # more components than 16 bits hold
        return int(ndimage.label(mask)[1])


LESION_FIELDS = ("height", "width", "lesion_area_px", "lesion_fraction", "bbox_xyxy", "n_lesions",
                 "mean_prob", "lesion_area_mm2")  # what lesion_stats gives, in this order


def lesion_stats(mask: np.ndarray, prob: np.ndarray, spacing: tuple[float, float] | None) -> dict:
    """Area, fraction, bounding box, number of connected lesions, mean probability inside."""
    area = int(np.count_nonzero(mask))
    n_lesions = count_components(mask)
    if area:  # no per-pixel index or value copies: a lesion mask of a large scan is large
        ys, xs = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        bbox = [int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1]
        mean_prob = float(np.sum(prob, where=mask, dtype=np.float64) / area)
    else:
        bbox, mean_prob = None, None
    return {
        "height": int(mask.shape[0]), "width": int(mask.shape[1]),
        "lesion_area_px": area, "lesion_fraction": area / mask.size, "bbox_xyxy": bbox,
        "n_lesions": int(n_lesions), "mean_prob": mean_prob,
        "lesion_area_mm2": area * spacing[0] * spacing[1] if spacing else None,
    }


def gray_image(gray01: np.ndarray, shape: tuple[int, int]) -> Image.Image:
    """An 8-bit gray image of `gray01` at `shape` (H, W), enlarged bilinearly when smaller."""
    img = Image.fromarray((gray01 * 255 + 0.5).astype(np.uint8))
    return img if gray01.shape == tuple(shape) else img.resize(
        (shape[1], shape[0]), Image.Resampling.BILINEAR)


def overlay_image(gray01: np.ndarray, mask: np.ndarray) -> Image.Image:
    """The scan in gray with the lesion filled lightly and outlined in colour, at the mask's
    size (a scan decoded at a reduced scale is enlarged to it)."""
    base = np.repeat(np.asarray(gray_image(gray01, mask.shape))[..., None], 3, axis=-1)
    edge = mask & ~ndimage.binary_erosion(mask, iterations=max(1, min(mask.shape) // 200))
    out = base.astype(np.float32)
    out[mask] = out[mask] * 0.7 + np.array([255, 60, 60]) * 0.3
    out[edge] = [255, 220, 0]
    img = Image.fromarray(out.astype(np.uint8))
    return img


def _unique_name(scan: Scan, used: set[str]) -> str:
    name, k = scan.name, 1
    while name in used:
        k += 1
        name = f"{scan.name}_{k}"
    used.add(name)
    return name


def _model_id(checkpoint, onnx_path) -> tuple[str, str]:
    """(name, SHA-256) of the weights file that segments."""
    from busseg.checkpoint import DEFAULT_WEIGHTS
    from busseg.dicomseg import file_sha256

    path = Path(onnx_path or checkpoint or DEFAULT_WEIGHTS)
    return path.stem, file_sha256(path)


def predict(
    inputs: list[str],
    out: Path | str,
    checkpoint: Path | str | None = None,
    threshold: float | None = None,
    tta: bool | None = None,
    save_prob: bool = False,
    overlay: bool = False,
    device: str = "cpu",
    batch_size: int = 4,
    backend: str = "torch",
    onnx_path: Path | str | None = None,
    frames: str = "all",
    progress: bool = True,
    overwrite: bool = False,
    include_masks: bool = False,
    dicom_seg: bool = False,
    plain: bool = False,
) -> PredictReport:
    """Segment every readable input; one bad file is reported and never stops the others.
    `plain` gives the plain output (threshold 0.5, no TTA, no presence rule or filter) instead
    of the model's settings; `threshold` and `tta` override either.

    `out` never lies inside an input folder and an input is never written over; an `out`
    holding an earlier run's results is refused unless `overwrite` (which removes that run's
    outputs first)."""
    skipped: list[str] = []
    files, errors = expand_inputs(inputs, skipped, include_masks)
    out = Path(out)
    for item in inputs:
        if Path(item).is_dir() and inside(out, item):
            raise ValueError(f"{out}: output folder lies inside the input folder {item}; "
                             "choose another --out")
    if any(inside(f, out) for f in files):
        raise ValueError(f"{out}: output folder holds input files; choose another --out")
    claim(previous_outputs(out), overwrite)
    forward, size, settings = make_forward(checkpoint, backend, onnx_path, device, out)
    model_id = _model_id(checkpoint, onnx_path if backend == "onnx" else None) if dicom_seg \
        else None
    settings = chosen_settings(settings, plain, threshold, tta, onnx_path)
    thr, tta = settings.threshold, settings.tta
    out.mkdir(parents=True, exist_ok=True)
    report = PredictReport(errors=list(errors), skipped=skipped)
    for s in skipped:
        log.info("skipped %s", s)
    used: set[str] = set()
    for path in tqdm(files, desc="predict", unit="file", disable=not progress):
        try:
            scans = read_scans(path, frames)
            grays = [to_gray01(s.pixels) for s in scans]
        except (ImageReadError, ValueError) as exc:
            msg = str(exc) if str(path) in str(exc) else f"{path}: {exc}"
            report.errors.append(msg)
            log.error(msg)
            continue
        preds = predict_maps(forward, grays, size, tta, batch_size, [s.shape for s in scans])
        for scan, gray, pred in zip(scans, grays, preds):
            opts = {"save_prob": save_prob, "overlay": overlay,
                    "model_id": model_id if dicom_seg and is_dicom(path) else None}
            _write_scan(out, path, scan, gray, pred, settings, used, report, opts)
    _write_results(out, report, thr)
    return report


def _write_scan(out: Path, path: Path, scan: Scan, gray: np.ndarray, pred, settings,
                used: set[str], report: PredictReport, opts: dict) -> None:
    """One scan's mask (and probability map, overlay, DICOM SEG as asked) and its results row;
    a name already taken by a file this run did not write is an error line, never replaced."""
    name = _unique_name(scan, used)
    clash = existing(out / f"{name}{suffix}" for suffix in OUTPUT_SUFFIXES)
    if clash:
        report.errors.append(f"{path}: {clash[0]} already exists and was not written by "
                             "this run; not replaced (choose another --out)")
        return
    prob, mask = pred.prob, decide(pred.prob, pred.score, settings)
    mask_image(mask).save(out / f"{name}_mask.png")
    if opts["save_prob"]:
        prob_image(prob).save(out / f"{name}_prob.png")
    if opts["overlay"]:
        overlay_image(gray, mask).save(out / f"{name}_overlay.png")
    if opts["model_id"] is not None:
        try:
            from busseg.dicomseg import write_dicom_seg

            write_dicom_seg(path, mask, out / f"{name}_seg.dcm", *opts["model_id"])
        except (ValueError, ImportError, AttributeError, TypeError) as exc:
            report.errors.append(f"{path}: no DICOM SEG written ({exc})")
    report.rows.append({"name": name, "file": str(path), "frame": scan.frame,
                        **lesion_stats(mask, prob, scan.pixel_spacing_mm),
                        "lesion_score": round(pred.score, 4)})


def _write_results(out: Path, report: PredictReport, threshold: float) -> None:
    (out / "results.json").write_text(json.dumps(
        {"threshold": threshold, "images": report.rows, "errors": report.errors,
         "skipped": report.skipped}, indent=1))
    fields = ["name", "file", "frame", *LESION_FIELDS, "lesion_score"]
    write_csv(out / "results.csv", [
        {**r, "bbox_xyxy": " ".join(map(str, r["bbox_xyxy"])) if r["bbox_xyxy"] else ""}
        for r in report.rows], fields)


def sample_files() -> list[str]:
    """The sample scans shipped with the package (not their masks)."""
    return [str(p) for p in sorted(SAMPLES_DIR.glob("*.png")) if "_mask" not in p.stem]
