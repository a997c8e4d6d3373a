"""`busseg predict`: segment scans of any size and format, write masks and a results table."""

from __future__ import annotations

import csv
import glob
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from tqdm import tqdm

from busseg.checkpoint import load_model
from busseg.imageio import IMAGE_SUFFIXES, ImageReadError, Scan, is_dicom, read_scans
from busseg.inference import onnx_forward, predict_maps, torch_forward
from busseg.postprocess import decide
from busseg.preprocess import to_gray01

log = logging.getLogger("busseg.predict")
SAMPLES_DIR = Path(__file__).parent / "samples"


@dataclass
class PredictReport:
    """Rows written and the files that failed (path: reason)."""

    rows: list[dict] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def expand_inputs(inputs: list[str]) -> tuple[list[Path], list[str]]:
    """Files from a mix of files, folders (recursive) and glob patterns; (files, errors)."""
    files: list[Path] = []
    errors: list[str] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith(".")
                           and (f.suffix.lower() in IMAGE_SUFFIXES or is_dicom(f)))
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


def lesion_stats(mask: np.ndarray, prob: np.ndarray, spacing: tuple[float, float] | None) -> dict:
    """Area, fraction, bounding box, number of connected lesions, mean probability inside."""
    area = int(mask.sum())
    _, n_lesions = ndimage.label(mask)
    if area:
        ys, xs = np.nonzero(mask)
        bbox = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
        mean_prob = float(prob[mask].mean())
    else:
        bbox, mean_prob = None, None
    return {
        "height": int(mask.shape[0]), "width": int(mask.shape[1]),
        "lesion_area_px": area, "lesion_fraction": area / mask.size, "bbox_xyxy": bbox,
        "n_lesions": int(n_lesions), "mean_prob": mean_prob,
        "lesion_area_mm2": area * spacing[0] * spacing[1] if spacing else None,
    }


def overlay_image(gray01: np.ndarray, mask: np.ndarray) -> Image.Image:
    """The scan in gray with the lesion filled lightly and outlined in colour."""
    base = np.repeat((gray01 * 255).astype(np.uint8)[..., None], 3, axis=-1)
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
) -> PredictReport:
    """Segment every readable input; one bad file is reported and never stops the others."""
    loaded = load_model(checkpoint, "cuda" if device == "cuda" else "cpu")
    settings = loaded.settings.replace(threshold=threshold, tta=tta)
    thr, tta = settings.threshold, settings.tta
    if backend == "onnx":
        if onnx_path is None:
            from busseg.export import export_onnx

            onnx_path = Path(out) / "model.onnx"
            Path(out).mkdir(parents=True, exist_ok=True)
            export_onnx(loaded, onnx_path)
        forward = onnx_forward(onnx_path)
    elif backend == "torch":
        forward = torch_forward(loaded, device)
    else:
        raise ValueError(f"unknown backend {backend!r} (torch, onnx)")
    files, errors = expand_inputs(inputs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = PredictReport(errors=list(errors))
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
        preds = predict_maps(forward, grays, loaded.size, tta, batch_size)
        for scan, gray, pred in zip(scans, grays, preds):
            name = _unique_name(scan, used)
            prob, mask = pred.prob, decide(pred.prob, pred.score, settings)
            Image.fromarray(mask.astype(np.uint8) * 255).save(out / f"{name}_mask.png")
            if save_prob:
                Image.fromarray((prob * 255 + 0.5).astype(np.uint8)).save(out / f"{name}_prob.png")
            if overlay:
                overlay_image(gray, mask).save(out / f"{name}_overlay.png")
            row = {"name": name, "file": str(path), "frame": scan.frame,
                   **lesion_stats(mask, prob, scan.pixel_spacing_mm),
                   "lesion_score": None if pred.score is None else round(pred.score, 4)}
            report.rows.append(row)
    _write_results(out, report, thr)
    return report


def _write_results(out: Path, report: PredictReport, threshold: float) -> None:
    (out / "results.json").write_text(json.dumps(
        {"threshold": threshold, "images": report.rows, "errors": report.errors}, indent=1))
    fields = ["name", "file", "frame", "height", "width", "lesion_area_px", "lesion_fraction",
              "bbox_xyxy", "n_lesions", "mean_prob", "lesion_area_mm2", "lesion_score"]
    with open(out / "results.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for r in report.rows:
            bbox = r["bbox_xyxy"]
            writer.writerow({**r, "bbox_xyxy": " ".join(map(str, bbox)) if bbox else ""})


def sample_files() -> list[str]:
    """The sample scans shipped with the package (not their masks)."""
    return [str(p) for p in sorted(SAMPLES_DIR.glob("*.png")) if "_mask" not in p.stem]
