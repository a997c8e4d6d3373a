"""`busseg predict`: segment scans of any size and format, write masks and a results table."""

from __future__ import annotations

import glob
import json
import logging
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from tqdm import tqdm

from busseg.errors import InvalidInput
from busseg.imageio import (
    DEFAULT_MAX_PIXELS,
    IMAGE_SUFFIXES,
    Scan,
    image_kind,
    is_dicom,
    mask_image,
    prob_image,
    read_scans,
)
from busseg.inference import Checkpoints, ModelChoice, predict_maps
from busseg.jsonio import write_csv, write_json
from busseg.postprocess import PostprocessSettings, decide
from busseg.preprocess import to_gray01
from busseg.runlog import (
    JOURNAL,
    FolderLock,
    Journal,
    JournalWriter,
    interrupt_between,
    own_file,
    read_journal,
    remove_own,
)
from busseg.safety import OutputExistsError, claim, existing, inside

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
    return [p for p in paths if own_file(out, p.name) is not None and p.parent == out]


def is_mask_name(path: Path) -> bool:
    """Whether a file is named like a ground-truth or predicted mask (`<stem>_mask.png`)."""
    return bool(MASK_NAME.search(path.stem))


def expand_inputs(inputs: list[str], skipped: list[str] | None = None,
                  include_masks: bool = False) -> tuple[list[Path], list[str]]:
    """Files from a mix of files, folders (recursive) and glob patterns; (files, errors).

    Which files are scans follows one rule (`imageio.image_kind`) everywhere: in folders and
    glob matches, other files and (unless `include_masks`) files named like masks are left out
    and listed in `skipped` with the reason; a file given by name that is not a scan is an
    error. A file reached twice is segmented once."""
    files: list[Path] = []
    errors: list[str] = []
    skipped = [] if skipped is None else skipped
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = _scan_files(sorted(f for f in p.rglob("*") if f.is_file()
                                       and not f.name.startswith(".")), skipped, include_masks)
            if not found:
                errors.append(f"{p}: folder holds no image files")
            files.extend(found)
        elif p.is_file():
            if image_kind(p) is None:
                errors.append(f"{p}: not a supported image type ({p.suffix or 'no suffix'}); "
                              "busseg reads " + ", ".join(sorted(IMAGE_SUFFIXES)))
            else:
                files.append(p)
        elif any(ch in item for ch in "*?["):
            matched = sorted(Path(m) for m in glob.glob(item, recursive=True) if Path(m).is_file())
            if not matched:
                errors.append(f"{item}: pattern matches no file")
            files.extend(_scan_files(matched, skipped, include_masks))
        else:
            errors.append(f"{p}: no such file or folder")
    seen, unique = set(), []
    for f in files:
        if f.resolve() not in seen:
            seen.add(f.resolve())
            unique.append(f)
    # a file segmented because it was named is not also "skipped" because a folder held it
    skipped[:] = [s for s in dict.fromkeys(skipped) if Path(s.split(": ")[0]).resolve() not in seen]
    return unique, errors


def _scan_files(candidates: list[Path], skipped: list[str], include_masks: bool) -> list[Path]:
    """The scans among files found in a folder or by a pattern; the rest go to `skipped`."""
    found = []
    for f in candidates:
        if image_kind(f) is None:
            skipped.append(f"{f}: not an image or DICOM file")
        elif is_mask_name(f) and not include_masks:
            skipped.append(f"{f}: named like a mask (--include-masks to segment it)")
        else:
            found.append(f)
    return found


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


def unique_name(scan: Scan, used: set[str], reserved: set[str]) -> str:
    """The scan's own name, or `<name>_<k>` for the smallest k that is neither used in this
    run nor any input's own name (so a generated name never pairs with another scan)."""
    name, k = scan.name, 1
    while name in used:
        k += 1
        name = f"{scan.name}_{k}"
        if name in reserved:
            name = scan.name  # taken by an input of this run: try the next k
    used.add(name)
    return name


def _model_id(model: ModelChoice) -> tuple[str, str]:
    """(name, SHA-256) of the weights file that segments (an ensemble: of its files)."""
    import hashlib

    from busseg.checkpoint import DEFAULT_WEIGHTS
    from busseg.dicomseg import file_sha256

    weights = model.weights_file()
    if isinstance(weights, (list, tuple)):
        digest = hashlib.sha256("".join(file_sha256(w) for w in weights).encode()).hexdigest()
        return "ensemble", digest
    path = Path(weights or DEFAULT_WEIGHTS)
    return path.stem, file_sha256(path)


@dataclass
class _Run:
    """What one predict run writes with: its folder, decision settings and output options."""

    out: Path
    settings: PostprocessSettings
    opts: PredictOptions
    model_id: tuple[str, str]
    journal: JournalWriter
    used: set[str] = field(default_factory=set)
    reserved: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class PredictOptions:
    """What `predict` reads and writes besides the masks: the probability map and overlay
    PNGs, DICOM SEG for DICOM inputs, which frames, the pixel limit, images per forward pass,
    and whether files named like masks are segmented too."""

    save_prob: bool = False
    overlay: bool = False
    dicom_seg: bool = False
    frames: str = "all"
    max_pixels: int = DEFAULT_MAX_PIXELS
    batch_size: int = 4
    include_masks: bool = False


def predict(inputs: list[str], out: Path | str, model: ModelChoice | Checkpoints = None,
            options: PredictOptions | None = None, overwrite: bool = False,
            progress: bool = True) -> PredictReport:
    """Segment every readable input; one bad file is reported and never stops the others.
    `model` is a `ModelChoice` or just the weights (None: the shipped model, its settings).

    `out` never lies inside an input folder and an input is never written over. Each scan's
    files and row are recorded as it finishes (results.jsonl, results.csv), so running the
    same command again resumes an interrupted run; `overwrite` first removes exactly what an
    earlier run wrote there. A second run into the same folder at once is refused."""
    model, opts = ModelChoice.of(model), options or PredictOptions()
    skipped: list[str] = []
    files, errors = expand_inputs(inputs, skipped, opts.include_masks)
    out = Path(out)
    for item in inputs:
        if Path(item).is_dir() and inside(out, item):
            raise InvalidInput(f"{out}: output folder lies inside the input folder {item}; "
                               "choose another --out")
    if any(inside(f, out) for f in files):
        raise InvalidInput(f"{out}: output folder holds input files; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    with FolderLock(out):
        report = PredictReport(errors=list(errors), skipped=skipped)
        return _predict_locked(files, out, model, opts, overwrite, report, progress)


def _predict_locked(files: list[Path], out: Path, model: ModelChoice, opts: PredictOptions,
                    overwrite: bool, report: PredictReport, progress: bool) -> PredictReport:
    prior = _clear_or_resume(out, overwrite)
    if model.backend == "onnx" and model.onnx_path is None and prior is not None \
            and (out / "model.onnx").is_file():
        model = replace(model, onnx_path=out / "model.onnx")  # this run's own earlier export
    forward, size, settings = model.load(export_dir=out)
    model_id = _model_id(model)
    identity = {"model_sha256": model_id[1], "postprocess": settings.to_dict(),
                **{k: getattr(opts, k) for k in ("save_prob", "overlay", "dicom_seg", "frames")}}
    done = _resumable(out, prior, identity)
    run = _Run(out, settings, opts, model_id, JournalWriter(out, identity, fresh=prior is None),
               reserved={f.stem for f in files})
    for s in report.skipped:
        log.info("skipped %s", s)
    try:
        with interrupt_between() as stop_if_interrupted:
            for path in tqdm(files, desc="predict", unit="file", disable=not progress):
                if str(path) in done:
                    report.rows.extend(done[str(path)]["rows"])
                    run.used.update(r["name"] for r in done[str(path)]["rows"])
                    continue
                _segment_file(run, path, forward, size, report)
                stop_if_interrupted()
    finally:
        run.journal.close()
        _write_results(out, report, settings.threshold)
    return report


def _clear_or_resume(out: Path, overwrite: bool) -> Journal | None:
    """The earlier run's journal to resume from, or None for a fresh start: with `overwrite`
    the earlier run's files are removed first; results without a journal are refused."""
    try:
        prior = read_journal(out)
    except ValueError:
        if not overwrite:
            raise
        prior = Journal()
    if overwrite:
        names = [p.name for p in previous_outputs(out)] + (prior.outputs() if prior else [])
        remove_own(out, [*names, JOURNAL])
        return None
    if prior is None:
        claim(previous_outputs(out), overwrite=False)  # results of a run without a journal
    return prior


def _resumable(out: Path, prior: Journal | None, identity: dict) -> dict[str, dict]:
    """The earlier run's finished files whose outputs are all there (the rest are removed and
    segmented again); an earlier run with other settings is refused."""
    if prior is None:
        return {}
    if prior.settings != identity:
        raise OutputExistsError(
            f"{out}: holds results of a run with another model or other settings; pass "
            "--overwrite to replace them, or choose another --out")
    remove_own(out, [n for names in prior.started.values() for n in names])
    done = {}
    for file, entry in prior.done.items():
        if all((own_file(out, n) or out / "\0").is_file() for n in entry["outputs"]):
            done[file] = entry
        else:
            remove_own(out, entry["outputs"])
    return done


def _segment_file(run: _Run, path: Path, forward, size: int, report: PredictReport) -> None:
    """One input file: read, segment, write its scans' files; any failure is this file's."""
    try:
        scans = read_scans(path, run.opts.frames, run.opts.max_pixels)
        grays = [to_gray01(s.pixels) for s in scans]
        preds = predict_maps(forward, grays, size, run.settings.tta, run.opts.batch_size,
                             [s.shape for s in scans])
    except Exception as exc:  # noqa: BLE001 - whatever fails, it is this file's failure
        msg = str(exc) if str(path) in str(exc) else f"{path}: {exc or type(exc).__name__}"
        log.debug("%s", msg, exc_info=True)
        report.errors.append(msg)
        log.error(msg)
        run.journal.write({"kind": "error", "file": str(path), "error": msg})
        return
    names = [unique_name(scan, run.used, run.reserved) for scan in scans]
    seg = run.opts.dicom_seg and is_dicom(path)
    planned = [f"{n}{sfx}" for n in names for sfx in _suffixes(run.opts, seg)]
    clash = existing(run.out / n for n in planned)
    if clash:
        report.errors.append(f"{path}: {clash[0]} already exists and was not written by "
                             "busseg predict into this folder; not replaced (choose another "
                             "--out)")
        return
    run.journal.write({"kind": "start", "file": str(path), "outputs": planned})
    rows, written = [], []
    for scan, gray, pred, name in zip(scans, grays, preds, names):
        row, files = _write_scan(run, path, scan, gray, pred, name, seg, report)
        rows.append(row)
        written += files
    # rows first: an interrupt between the two lines leaves results.json holding every scan the
    # journal calls done (a scan in results.json but not yet journaled is redone on resume)
    report.rows.extend(rows)
    run.journal.write({"kind": "done", "file": str(path), "rows": rows, "outputs": written})


def _suffixes(opts: PredictOptions, seg: bool) -> list[str]:
    return ["_mask.png", *(["_prob.png"] if opts.save_prob else []),
            *(["_overlay.png"] if opts.overlay else []), *(["_seg.dcm"] if seg else [])]


def _write_scan(run: _Run, path: Path, scan: Scan, gray: np.ndarray, pred, name: str,
                seg: bool, report: PredictReport) -> tuple[dict, list[str]]:
    """One scan's mask (and probability map, overlay, DICOM SEG as asked): (row, files)."""
    out, written = run.out, [f"{name}_mask.png"]
    prob, mask = pred.prob, decide(pred.prob, pred.score, run.settings)
    mask_image(mask).save(out / f"{name}_mask.png")
    if run.opts.save_prob:
        prob_image(prob).save(out / f"{name}_prob.png")
        written.append(f"{name}_prob.png")
    if run.opts.overlay:
        overlay_image(gray, mask).save(out / f"{name}_overlay.png")
        written.append(f"{name}_overlay.png")
    if seg:
        try:
            from busseg.dicomseg import write_dicom_seg

            write_dicom_seg(path, mask, out / f"{name}_seg.dcm", *run.model_id)
            written.append(f"{name}_seg.dcm")
        except Exception as exc:  # noqa: BLE001 - the mask stands; the SEG is this file's error
            report.errors.append(f"{path}: no DICOM SEG written ({exc})")
    if pred.warning:
        log.warning("%s: %s", path, pred.warning)
    row = {"name": name, "file": str(path), "frame": scan.frame,
           **lesion_stats(mask, prob, scan.pixel_spacing_mm),
           "lesion_score": round(pred.score, 4), "warning": pred.warning or ""}
    return row, written


def _write_results(out: Path, report: PredictReport, threshold: float) -> None:
    """results.json and results.csv in full, each replaced atomically."""
    tmp = out / ".results.json.tmp"
    write_json(tmp, {"threshold": threshold, "images": report.rows, "errors": report.errors,
                     "skipped": report.skipped})
    tmp.replace(out / "results.json")
    fields = ["name", "file", "frame", *LESION_FIELDS, "lesion_score", "warning"]
    write_csv(out / ".results.csv.tmp", [
        {**r, "bbox_xyxy": " ".join(map(str, r["bbox_xyxy"])) if r["bbox_xyxy"] else ""}
        for r in report.rows], fields)
    (out / ".results.csv.tmp").replace(out / "results.csv")


def sample_files() -> list[str]:
    """The sample scans shipped with the package (not their masks)."""
    return [str(p) for p in sorted(SAMPLES_DIR.glob("*.png")) if "_mask" not in p.stem]
