"""`busseg cv`: k-fold cross-validation over the train + val scans of a prepared split.

Folds hold whole near-duplicate groups (the `group` column of `manifest.csv`), keep each class's
share, and never touch the test split. Each fold trains in `OUT/fold_K/` (resumable); the folds'
held-out predictions are then gathered into out-of-fold (OOF) results in `OUT/oof/`.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from pathlib import Path

import numpy as np

from busseg.config import TrainConfig
from busseg.data.dataset import TensorSplit, list_pairs, load_pairs
from busseg.data.split import assign_groups
from busseg.errors import InvalidInput, MissingFile
from busseg.evaluate import summarise
from busseg.jsonio import write_json
from busseg.postprocess import PostprocessSettings, plain_settings
from busseg.safety import claim

log = logging.getLogger("busseg.cv")
POOL_SPLITS = ("train", "val")


def read_pool(data: Path | str | list, splits: tuple[str, ...] = POOL_SPLITS) -> list[dict]:
    """The `splits` rows (default train + val) of `data/manifest.csv` with their image and mask
    paths; for a list of folders every source's rows, named `<source>/<name>` (groups too),
    each with its `source`."""
    if isinstance(data, (str, Path)):
        return _read_folder(Path(data), splits)
    from busseg.data.sources import source_dirs

    return [{**r, "name": f"{src}/{r['name']}", "group": f"{src}/{r['group']}", "source": src}
            for src, folder in source_dirs([str(d) for d in data]).items()
            for r in _read_folder(folder, splits)]


def _read_folder(data: Path, splits: tuple[str, ...]) -> list[dict]:
    manifest = data / "manifest.csv"
    if not manifest.is_file():
        raise MissingFile(f"{manifest}: not found (run `busseg prepare` first)")
    with open(manifest, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] in splits]
    if not rows:
        raise InvalidInput(f"{manifest}: no {' or '.join(splits)} rows")
    files = {split: {img.stem: (img, mask) for img, mask in list_pairs(data / split)}
             for split in {r["split"] for r in rows}}
    pool = []
    for r in rows:
        if r["name"] not in files[r["split"]]:
            raise MissingFile(f"{data / r['split'] / 'images'}: no image for {r['name']!r}")
        img, mask = files[r["split"]][r["name"]]
        pool.append({"name": r["name"], "class": r["class"], "group": r["group"],
                     "image": str(img), "mask": str(mask)})
    return pool


def assign_folds(pool: list[dict], k: int = 5, seed: int = 0) -> dict[str, int]:
    """Fold index of every pool image: whole groups per fold, per-class balance kept."""
    if k < 2:
        raise InvalidInput(f"cross-validation needs at least 2 folds, got {k}")
    parts = assign_groups([r["class"] for r in pool], [r["group"] for r in pool],
                          (1.0 / k,) * k, seed)
    return {r["name"]: p for r, p in zip(pool, parts)}


def load_pool(pool: list[dict], size: int) -> TensorSplit:
    """Every pool image in memory at `size`, in pool order, with the pool's names, classes
    and (several sources) each scan's source."""
    split = load_pairs([(Path(r["image"]), Path(r["mask"])) for r in pool], size)
    return TensorSplit(split.images, split.masks, [r["name"] for r in pool],
                       [r["class"] for r in pool],
                       [r["source"] for r in pool] if "source" in pool[0] else [])


def fold_splits(images: TensorSplit, folds: dict[str, int],
                fold: int) -> tuple[TensorSplit, TensorSplit]:
    """(train, held-out) images of one fold, taken from the loaded pool."""
    held = [folds[n] == fold for n in images.names]
    return (images.subset([i for i, h in enumerate(held) if not h]),
            images.subset([i for i, h in enumerate(held) if h]))


def nested_splits(images: TensorSplit, pool: list[dict], folds: dict[str, int], fold: int,
                  share: float, seed: int = 0) -> tuple[TensorSplit, TensorSplit]:
    """(train, inner validation) of one fold: its training part split again, whole groups and
    per-class shares kept, `share` of it for validation (early stopping and the best epoch), so
    the held-out fold is used for nothing but its out-of-fold predictions."""
    rows = {r["name"]: r for r in pool}
    idx = [i for i, n in enumerate(images.names) if folds[n] != fold]
    parts = assign_groups([rows[images.names[i]]["class"] for i in idx],
                          [rows[images.names[i]]["group"] for i in idx], (1.0 - share, share),
                          seed + 1 + fold)
    return (images.subset([i for i, p in zip(idx, parts) if p == 0]),
            images.subset([i for i, p in zip(idx, parts) if p == 1]))


def write_folds(out: Path, pool: list[dict], folds: dict[str, int], k: int, seed: int,
                inner_val: float = 0.0, **extra) -> None:
    """`OUT/folds.json`: the fold of every image and the inner validation share (refusing to
    change either in an existing cross-validation); `extra` keys are kept beside them (`by`,
    `splits`, `held_out` of a cross-validation by source)."""
    doc = {"k": k, "seed": seed, "inner_val": inner_val, "folds": folds,
           "groups": {r["name"]: r["group"] for r in pool},
           "classes": {r["name"]: r["class"] for r in pool}, **extra}
    if "source" in pool[0]:
        doc["sources"] = {r["name"]: r["source"] for r in pool}
    path = out / "folds.json"
    if path.is_file():
        old = json.loads(path.read_text())
        if old.get("folds") != folds:
            raise InvalidInput(f"{path}: holds a different fold assignment; use a new --out")
        if old.get("inner_val", inner_val) != inner_val:
            raise InvalidInput(f"{path}: its folds were trained with --inner-val "
                               f"{old['inner_val']}, not {inner_val}; use that or a new --out")
        return
    out.mkdir(parents=True, exist_ok=True)
    write_json(path, doc)


def fold_done(fold_dir: Path) -> bool:
    """Whether a fold's training finished (its summary exists)."""
    return (fold_dir / "train_summary.json").is_file()


def run_cv(cfg: TrainConfig, out: Path | str, k: int = 5, only: list[int] | None = None,
           seed: int = 0, inner_val: float = 0.0) -> list[dict]:
    """Train the folds in `only` (default: all) that have not finished; resume an interrupted one.
    With `inner_val` > 0 each fold validates (early stopping, best epoch) on that share of its
    own training part (`nested_splits`), not on its held-out scans.

    Returns each fold's training summary, with its wall time.
    """
    if not 0.0 <= inner_val < 0.5:
        raise InvalidInput(f"inner validation share must be in [0, 0.5), got {inner_val}")
    if cfg.select == "best" and not inner_val:
        log.warning("warning: select: best picks each fold's epoch on its held-out scans, so the "
                    "out-of-fold figures are optimistic; --set select=last or --inner-val 0.125 "
                    "measures without it")
    out = Path(out)
    pool = read_pool(cfg.data)
    folds = assign_folds(pool, k, seed)
    write_folds(out, pool, folds, k, seed, inner_val)
    images: list[TensorSplit] = []  # loaded once, when the first fold needs training

    def splits_of(fold: int) -> tuple[TensorSplit, TensorSplit]:
        if not images:
            images.append(load_pool(pool, cfg.size))
        return (nested_splits(images[0], pool, folds, fold, inner_val, seed) if inner_val
                else fold_splits(images[0], folds, fold))

    summaries = []
    for fold in only if only is not None else range(k):
        if not 0 <= fold < k:
            raise InvalidInput(f"fold {fold} out of range 0-{k - 1}")
        fold_cfg = cfg.model_copy(update={"out": str(out / f"fold_{fold}")})
        summaries.append({"fold": fold, **train_fold(fold_cfg, lambda f=fold: splits_of(f))})
    return summaries


def train_fold(fold_cfg: TrainConfig, splits=None) -> dict:
    """Train one fold into `fold_cfg.out` unless it has finished (resuming an interrupted one);
    `splits()` gives its (train, val) images, None: `fold_cfg.data`'s. Its training summary."""
    from busseg.train import train

    fold_dir = Path(fold_cfg.out)
    if not fold_done(fold_dir):
        resume = (fold_dir / "last.pt").is_file()
        log.info("%s: %s", fold_dir.name, "resuming" if resume else "training")
        t0 = time.time()
        # an unfinished fold with no epoch saved holds only this command's own start files
        train(fold_cfg, resume=resume, splits=splits() if splits else None,
              overwrite=not resume)
        log.info("%s finished in %.1f min (this session)", fold_dir.name,
                 (time.time() - t0) / 60)
    return json.loads((fold_dir / "train_summary.json").read_text())


def predict_pool(forward_of_fold, pool: list[dict], folds: dict[str, int], k: int,
                 size: int, progress: bool = True) -> dict:
    """Held-out predictions of every pool image by the model of its fold, with and without flip
    TTA: probabilities as uint8 (N x S x S) and lesion scores (the peak probability where the
    model has no head)."""
    from tqdm import tqdm

    from busseg.data.dataset import load_pair
    from busseg.inference import predict_maps

    n = len(pool)
    probs = {t: np.zeros((n, size, size), np.uint8) for t in (False, True)}
    scores = {t: np.full(n, np.nan, np.float32) for t in (False, True)}
    truths = np.zeros((n, size, size), bool)
    bar = tqdm(total=n, desc="out-of-fold", unit="img", disable=not progress)
    for fold in range(k):
        forward = forward_of_fold(fold)
        for i, r in enumerate(pool):
            if folds[r["name"]] != fold:
                continue
            gray, truth = load_pair(Path(r["image"]), Path(r["mask"]))
            if truth.shape != (size, size):
                raise InvalidInput(f"{r['image']}: {truth.shape} is not the {size}x{size} of the "
                                   "model; cross-validate on a split prepared at the model size")
            truths[i] = truth
            for tta in (False, True):
                p = predict_maps(forward, [gray], size, tta)[0]
                probs[tta][i] = np.round(p.prob * 255).astype(np.uint8)
                scores[tta][i] = p.score
            bar.update()
    bar.close()
    return {"names": np.array([r["name"] for r in pool]), "truth": truths,
            "prob": probs[False], "prob_tta": probs[True],
            "score": scores[False], "score_tta": scores[True]}


def load_oof(cv_dir: Path | str) -> dict:
    """The arrays `gather_oof` saved in `CV/oof/predictions.npz`."""
    path = Path(cv_dir) / "oof" / "predictions.npz"
    if not path.is_file():
        raise MissingFile(f"{path}: not found (run `busseg cv` to the end first)")
    with np.load(path) as z:
        return {key: z[key] for key in z.files}


def gather_oof(cv_dir: Path | str, data: Path | str = "data", device: str = "cpu",
               progress: bool = True, overwrite: bool = False) -> dict:
    """Predict every pool image with its fold's model; write `CV/oof/predictions.npz` and the
    plain output's per-image rows and `metrics.json` (same keys as evaluate) in `CV/oof/plain/`.
    Returns that summary, with each fold's training wall time."""
    from busseg.checkpoint import load_model
    from busseg.inference import torch_forward

    cv_dir = Path(cv_dir)
    doc = json.loads((cv_dir / "folds.json").read_text())
    k, folds = doc["k"], doc["folds"]
    missing = [f for f in range(k) if not fold_done(cv_dir / f"fold_{f}")]
    if missing:
        raise MissingFile(f"{cv_dir}: fold(s) {missing} have not finished training")
    pool = [r for r in read_pool(data, tuple(doc.get("splits", POOL_SPLITS)))
            if r["name"] in folds]
    if len(pool) != len(folds):
        raise InvalidInput(f"{data}: holds {len(pool)} of the {len(folds)} images in folds.json")
    claim([cv_dir / "oof"], overwrite)
    first = load_model(cv_dir / "fold_0" / "unet_final.pt", device)

    def forward_of_fold(fold: int):
        return torch_forward(load_model(cv_dir / f"fold_{fold}" / "unet_final.pt", device), device)

    arrays = predict_pool(forward_of_fold, pool, folds, k, first.size, progress)
    (cv_dir / "oof").mkdir(exist_ok=True)
    np.savez_compressed(cv_dir / "oof" / "predictions.npz", **arrays)
    return score_oof(cv_dir, arrays, plain_settings(), "plain")


def by_source(rows: list[dict], sources: dict[str, str]) -> dict:
    """Each source's summary of its scans' rows, and the mean and worst of the sources' lesion
    Dice (`source_mean_dice`, `source_worst_dice`, `source_worst`)."""
    per = {src: summarise([r for r in rows if sources[r["name"]] == src])
           for src in sorted(set(sources[r["name"]] for r in rows))}
    worst = min(per, key=lambda src: per[src]["dice"])
    return {"by_source": per, "source_mean_dice": float(np.mean([p["dice"] for p in per.values()])),
            "source_worst_dice": per[worst]["dice"], "source_worst": worst}


def score_oof(cv_dir: Path, arrays: dict, settings: PostprocessSettings, label: str) -> dict:
    """Per-image rows and metrics of the OOF predictions under `settings` in `CV/oof/LABEL/`."""
    from busseg.evaluate import score_image, write_rows
    from busseg.postprocess import decide

    prob = arrays["prob_tta" if settings.tta else "prob"]
    score = arrays["score_tta" if settings.tta else "score"]
    doc = json.loads((cv_dir / "folds.json").read_text())
    rows = []
    for i, name in enumerate(map(str, arrays["names"])):
        s = None if np.isnan(score[i]) else float(score[i])
        pred = decide(prob[i].astype(np.float32) / 255.0, s, settings)
        rows.append({"fold": doc["folds"][name],
                     **score_image(name, arrays["truth"][i], pred, s, doc["classes"].get(name))})
    summary = summarise(rows)
    if "sources" in doc:  # several sources: each one's own figures, their mean and the worst
        summary.update(by_source(rows, doc["sources"]))
    times = [json.loads((cv_dir / f"fold_{f}" / "train_summary.json").read_text())
             for f in range(doc["k"])]
    summary.update({"postprocess": settings.to_dict(),
                    "checkpoint": f"{cv_dir}/fold_*/unet_final.pt", "data": "out-of-fold",
                    "errors": [], "fold_train_time_s": [t["train_time_s"] for t in times],
                    "fold_precision": [t.get("precision", "fp32") for t in times]})
    out = cv_dir / "oof" / label
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "metrics.json", summary)
    write_rows(out / "per_image.csv", rows)
    return summary
