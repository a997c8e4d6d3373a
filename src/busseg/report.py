"""`busseg report`: one self-contained HTML page (images embedded) about a run and its test set."""

from __future__ import annotations

import html
import json
import math
import string
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from busseg.checkpoint import DEFAULT_WEIGHTS, LoadedModel, load_model, run_dir_of
from busseg.data.dataset import list_pairs, load_pair
from busseg.errors import InvalidInput, MissingFile
from busseg.evaluate import EVAL_OUTPUTS, EvalOptions, evaluate, read_rows
from busseg.figures import (
    cases_figure,
    curves_figure,
    data_overview_figure,
    dice_distribution_figure,
    groups_figure,
    load_history,
    pick_cases,
    reliability_figure,
    to_data_uri,
)
from busseg.imageio import read_mask
from busseg.metrics import Reliability
from busseg.models import count_parameters
from busseg.preprocess import resize_image

SHIPPED_RUN = run_dir_of(DEFAULT_WEIGHTS)
REPORT_TEMPLATE = string.Template(
    (Path(__file__).parent / "templates" / "report.html").read_text(encoding="utf-8"))


def model_summary(loaded: LoadedModel) -> dict:
    """Parameters, forward GFLOPs at the model's size, and the stage layout."""
    from torch.utils.flop_counter import FlopCounterMode

    net = loaded.net
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net(torch.rand(1, 1, loaded.size, loaded.size))
    cfg = loaded.meta.get("model", {})
    width, depth = int(cfg.get("width", 16)), int(cfg.get("depth", 4))
    stem = int(cfg.get("stem_stride", 2))
    stages = [(f"encoder {k}" if k < depth else "bottleneck",
               loaded.size // (stem * 2**k), width * 2**k) for k in range(depth + 1)]
    return {"params": count_parameters(net), "gflops": counter.get_total_flops() / 1e9,
            "stages": stages, "config": cfg, "size": loaded.size}


def _small(arr: np.ndarray, side: int = 256) -> np.ndarray:
    h, w = arr.shape
    scale = min(1.0, side / max(h, w))
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    return resize_image(arr.astype(np.float32), size).numpy()


@dataclass
class RunResults:
    """Everything the report and the notebook show about one run on one data folder."""

    run: Path
    data: Path
    summary: dict
    rows: list[dict]
    history: dict[str, np.ndarray]
    arch: dict
    reliability: Reliability
    thumbs: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]

    def cases(self) -> list[tuple[str, dict, np.ndarray, np.ndarray, np.ndarray]]:
        """Best, median and worst cases per class with their scan, truth and prediction."""
        return [(title, row, *self.thumbs[row["name"]]) for title, row in pick_cases(self.rows)]


def collect_results(run_dir: Path | str | None, data: Path | str,
                    progress: bool = True, groups: Path | str | None = None,
                    group_by: list[str] | None = None,
                    from_eval: Path | str | None = None) -> RunResults:
    """Evaluate a run's best model (None: the shipped model) on `data`, keep what figures need.

    `from_eval`: the folder of an earlier `busseg evaluate` of the same model on the same data;
    its metrics, per-image rows, calibration bins and masks are reused (nothing is predicted).
    """
    run = Path(run_dir) if run_dir is not None else SHIPPED_RUN
    ckpt = run / "unet_final.pt" if run_dir is not None else None
    loaded = load_model(ckpt)
    history = load_history(run)
    if from_eval is not None:
        if groups or group_by:
            raise InvalidInput("--groups applies to a new evaluation; evaluate with --groups and "
                               "pass its folder to --from-eval instead")
        summary, rows, reliability, thumbs = _reuse_evaluation(Path(from_eval), ckpt, data)
        return RunResults(run, Path(data), summary, rows, history, model_summary(loaded),
                          reliability, thumbs)
    thumbs: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    rows: list[dict] = []

    def on_image(row: dict, gray: np.ndarray, truth: np.ndarray, prob: np.ndarray,
                 pred: np.ndarray) -> None:
        rows.append(row)
        thumbs[row["name"]] = _thumbs(gray, truth, pred)

    with tempfile.TemporaryDirectory() as tmp:
        summary = evaluate(ckpt, data, tmp, EvalOptions(groups=groups, group_by=group_by),
                           progress=progress, on_image=on_image)
        reliability = _read_reliability(Path(tmp))  # evaluate's own calibration bins
    return RunResults(run, Path(data), summary, rows, history, model_summary(loaded),
                      reliability, thumbs)


def _thumbs(gray: np.ndarray, truth: np.ndarray, pred: np.ndarray):
    """Small copies of a scan, its truth and its mask for the case figure."""
    return _small(gray), _small(truth) >= 0.5, _small(pred) >= 0.5


def _read_reliability(folder: Path) -> Reliability:
    return Reliability.from_dict(json.loads((folder / "reliability.json").read_text()))


def _same_path(a: str | Path, b: str | Path) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def _reuse_evaluation(folder: Path, ckpt: Path | None, data: Path | str):
    """(summary, rows, reliability, thumbs of the picked cases) from an evaluate folder, after
    checking it scored this model on this data."""
    files = {f: folder / f for f in EVAL_OUTPUTS}
    missing = [str(p) for p in files.values() if not p.exists()]
    if missing:
        raise MissingFile(f"{folder}: not a complete busseg evaluate folder "
                          f"(missing {', '.join(missing)}); run busseg evaluate again")
    summary = json.loads(files["metrics.json"].read_text())
    wanted = "shipped" if ckpt is None else str(ckpt)
    scored = summary.get("checkpoint", "")
    if summary.get("backend", "torch") != "torch" or not (
            scored == wanted or (ckpt is not None and _same_path(scored, ckpt))):
        raise InvalidInput(f"{folder}: it evaluated {scored!r} ({summary.get('backend')}), "
                           f"not this report's model {wanted!r}")
    if not _same_path(summary.get("data", ""), data):
        raise InvalidInput(f"{folder}: it evaluated {summary.get('data')!r}, not {str(data)!r}")
    rows = read_rows(files["per_image.csv"])
    reliability = _read_reliability(folder)
    pairs = {img.stem: (img, mask) for img, mask in list_pairs(data)}
    thumbs = {}
    for _, row in pick_cases(rows):
        gray, truth = load_pair(*pairs[row["name"]])
        pred = read_mask(files["test_preds"] / f"{row['name']}_pred.png")
        thumbs[row["name"]] = _thumbs(gray, truth, pred)
    return summary, rows, reliability, thumbs


def original_sizes(data: Path | str) -> dict[str, tuple[int, int]]:
    """(height, width) before resizing, from the manifest `busseg prepare` wrote beside the
    split folder (empty when there is none)."""
    import csv

    manifest = Path(data).parent / "manifest.csv"
    if not manifest.is_file():
        return {}
    with open(manifest, newline="") as fh:
        return {r["name"]: (int(r["orig_height"]), int(r["orig_width"]))
                for r in csv.DictReader(fh) if r.get("orig_height") and r.get("orig_width")}


def build_report(run_dir: Path | str | None, data: Path | str, out: Path | str,
                 progress: bool = True, overwrite: bool = False,
                 groups: Path | str | None = None, group_by: list[str] | None = None,
                 from_eval: Path | str | None = None) -> Path:
    """Evaluate the run's model on `data` (or reuse the evaluate folder `from_eval`) and write
    the self-contained HTML report to `out`."""
    from busseg.safety import claim

    claim([out], overwrite)
    r = collect_results(run_dir, data, progress, groups, group_by, from_eval)
    figs = {
        "curves": to_data_uri(curves_figure(r.history)),
        "overview": to_data_uri(data_overview_figure(r.rows, original_sizes(data))),
        "cases": to_data_uri(cases_figure(r.cases())),
        "dice": to_data_uri(dice_distribution_figure(r.rows)),
        "reliability": to_data_uri(reliability_figure(r.reliability)),
        "groups": to_data_uri(groups_figure(r.summary["per_group"])),
    }
    page = _html(r.run, r.data, r.summary, r.rows, r.arch, figs, r.reliability.ece())
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out


def _fmt(v) -> str:
    if isinstance(v, float):
        return "–" if math.isnan(v) else f"{v:.4f}"
    return html.escape(str(v))


def _html(run, data, s, rows, arch, figs, ece) -> str:
    lo, hi = s["dice_ci95"]
    perf = "".join(
        f"<tr><td>{html.escape(c)}</td><td>{m['n_images']}</td><td>{_fmt(m['dice'])}</td>"
        f"<td>{_fmt(m['iou'])}</td><td>{_fmt(m['hd95'])}</td>"
        f"<td>{_fmt(m.get('false_positive_rate', math.nan))}</td></tr>"
        for c, m in s["per_class"].items())
    stages = "".join(f"<tr><td>{n}</td><td>{r}×{r}</td><td>{c}</td></tr>"
                     for n, r, c in arch["stages"])
    cols = ["name", "class", "dice", "iou", "accuracy", "precision", "recall", "hd95",
            "true_area", "pred_area"]
    table = "".join("<tr>" + "".join(f"<td>{_fmt(r[c])}</td>" for c in cols) + "</tr>"
                    for r in sorted(rows, key=lambda r: r["dice"]))
    head = "".join(f'<th data-col="{i}">{c}</th>' for i, c in enumerate(cols))
    values = {
        "run": html.escape(str(run)), "data": html.escape(str(data)),
        "threshold": f"{s['postprocess']['threshold']:.2f}", "dice": f"{s['dice']:.4f}",
        "lo": f"{lo:.4f}", "hi": f"{hi:.4f}", "n_images": s["n_images"], "iou": f"{s['iou']:.4f}",
        "hd95": f"{s['hd95']:.1f}", "accuracy": f"{s['accuracy']:.4f}", "ece": f"{ece:.4f}",
        "perf": perf, "params": f"{arch['params']:,}", "gflops": f"{arch['gflops']:.2f}",
        "size": arch["size"], "config": html.escape(str(arch["config"])), "stages": stages,
        "head": head, "table": table, **{f"fig_{k}": v for k, v in figs.items()},
    }
    return REPORT_TEMPLATE.substitute(values)
