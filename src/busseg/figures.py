"""Figures shared by `busseg report` and the summary notebook (matplotlib, Agg backend)."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from busseg.data.dataset import CLASS_NAMES, LESION_CLASSES  # noqa: E402
from busseg.errors import MissingFile
from busseg.metrics import LOG_KEYS, Reliability  # noqa: E402

CLASS_COLORS = {"benign": "#1f77b4", "malignant": "#d62728", "normal": "#2ca02c",
                "unknown": "#7f7f7f"}


def load_history(run_dir: Path | str) -> dict[str, np.ndarray]:
    """The per-epoch `.npy` logs of a run folder ({train,val}_{loss,acc,dice})."""
    run_dir = Path(run_dir)
    out = {}
    for phase in ("train", "val"):
        for key in LOG_KEYS:
            path = run_dir / f"{phase}_{key}.npy"
            if path.is_file():
                out[f"{phase}_{key}"] = np.load(path)
    if not out:
        raise MissingFile(f"{run_dir}: no training logs (*_loss.npy) found")
    return out


def curves_figure(history: dict[str, np.ndarray]):
    """Loss, accuracy and Dice per epoch, training beside validation."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, key, title in zip(axes, ("loss", "acc", "dice"),
                              ("BCE + Dice loss", "Pixel accuracy", "Dice")):
        for phase, style in (("train", "-"), ("val", "--")):
            values = history.get(f"{phase}_{key}")
            if values is not None:
                ax.plot(np.arange(1, len(values) + 1), values, style, label=phase)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


def groups_figure(per_group: dict):
    """Mean Dice with its 95% CI per value of each grouping (lesion size, scanner, ...)."""
    columns = [c for c, values in per_group.items() if values]
    n_rows = sum(len(per_group[c]) for c in columns)
    fig, axes = plt.subplots(len(columns), 1, figsize=(7, 0.45 * n_rows + 1.2 * len(columns)),
                             squeeze=False)
    for ax, column in zip(axes[:, 0], columns):
        values = per_group[column]
        labels = [f"{v} (n={s['n']})" for v, s in values.items()]
        dice = np.array([s["dice"] for s in values.values()])
        ci = np.array([s["dice_ci95"] for s in values.values()], dtype=float)
        err = np.vstack([dice - ci[:, 0], ci[:, 1] - dice])
        ax.barh(range(len(dice)), dice, xerr=err, color="#4c78a8", capsize=3)
        ax.set_yticks(range(len(dice)), labels)
        ax.set_xlim(0, 1)
        ax.set_title(f"Dice by {column}", fontsize=10, loc="left")
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def dice_distribution_figure(rows: list[dict]):
    """Per-image Dice per class as box plots with the points over them."""
    classes = [c for c in (*CLASS_NAMES, "unknown")
               if any(r["class"] == c for r in rows)]
    fig, ax = plt.subplots(figsize=(6, 4))
    data = [[r["dice"] for r in rows if r["class"] == c] for c in classes]
    ax.boxplot(data, tick_labels=classes, showfliers=False)
    rng = np.random.default_rng(0)
    for i, (c, d) in enumerate(zip(classes, data), start=1):
        ax.scatter(i + rng.uniform(-0.15, 0.15, len(d)), d, s=12, alpha=0.6,
                   color=CLASS_COLORS[c])
    ax.set_ylim(-0.05, 1.05)
    ax.set_ylabel("Dice per image")
    ax.set_title("Dice distribution per class")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


def reliability_figure(rel: Reliability):
    """Observed lesion frequency against predicted probability, per bin of `rel`."""
    ok = rel.count > 0
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    ax.plot([0, 1], [0, 1], ":", color="gray", label="perfect calibration")
    ax.plot(rel.prob_sum[ok] / rel.count[ok], rel.positive[ok] / rel.count[ok], "o-",
            label=f"model (ECE {rel.ece():.3f})")
    ax.set_xlabel("predicted lesion probability")
    ax.set_ylabel("observed lesion frequency")
    ax.set_title("Reliability diagram (pixels)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    fig.tight_layout()
    return fig


def cases_figure(cases: list[tuple[str, dict, np.ndarray, np.ndarray, np.ndarray]]):
    """Scans with the true outline (green) and the predicted outline (red): (title, row, gray,
    truth, pred) per panel."""
    n = len(cases)
    cols = min(n, 3)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.9 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (title, row, gray, truth, pred) in zip(axes.ravel(), cases):
        ax.imshow(gray, cmap="gray", vmin=0, vmax=1)
        if truth.any():
            ax.contour(truth, levels=[0.5], colors="lime", linewidths=1.5)
        if pred.any():
            ax.contour(pred, levels=[0.5], colors="red", linewidths=1.5)
        ax.set_title(f"{title}\n{row['name']}  Dice {row['dice']:.3f}", fontsize=10)
    fig.suptitle("Ground truth (green) vs prediction (red)")
    fig.tight_layout()
    return fig


def data_overview_figure(rows: list[dict], sizes: dict[str, tuple[int, int]] | None = None):
    """Class counts and image sizes of an evaluated folder: the original (height, width) from
    `sizes` (the prepared data's manifest) where known, else the size evaluated."""
    sizes = sizes or {}
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    classes = sorted({r["class"] for r in rows})
    counts = [sum(r["class"] == c for r in rows) for c in classes]
    a.bar(classes, counts, color=[CLASS_COLORS.get(c, "gray") for c in classes])
    a.set_ylabel("images")
    a.set_title("Images per class")
    for c in classes:
        sub = [r for r in rows if r["class"] == c]
        hw = [sizes.get(r["name"], (r["height"], r["width"])) for r in sub]
        b.scatter([w for _, w in hw], [h for h, _ in hw], s=12, label=c,
                  color=CLASS_COLORS.get(c, "gray"))
    b.set_xlabel("width (px)")
    b.set_ylabel("height (px)")
    known = sum(r["name"] in sizes for r in rows)
    b.set_title("Original image sizes" if known == len(rows) else "Image sizes (as evaluated)")
    b.legend()
    b.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def to_data_uri(fig) -> str:
    """PNG data URI of a figure (closes it)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def pick_cases(rows: list[dict]) -> list[tuple[str, dict]]:
    """Best, median and worst image by Dice within each class present (normal: worst only)."""
    picked = []
    for c in (*LESION_CLASSES, "unknown", "normal"):
        sub = sorted((r for r in rows if r["class"] == c), key=lambda r: r["dice"])
        if not sub:
            continue
        if c == "normal":
            picked.append((f"{c}: worst", sub[0]))
            continue
        for label, r in (("best", sub[-1]), ("median", sub[len(sub) // 2]), ("worst", sub[0])):
            picked.append((f"{c}: {label}", r))
    return picked
