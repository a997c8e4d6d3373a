"""`busseg cv --by source`: leave-one-source-out, the figure a user at a new hospital gets.

With `data: [a, b, c]` each source is held out in turn: fold K trains on the other sources'
train splits (validating on their val splits, shares as `sources:` gives them) in `OUT/fold_K/`
and then predicts every scan of source K, all splits. `OUT/folds.json` names the held-out source
of each fold (`held_out`); the gathered results in `OUT/oof/` (the same files as a k-fold
cross-validation, so `busseg tune --cv OUT` chooses a decision rule on them) give each source's
Dice with its 95% CI, missed lesions and normal false positives, and the mean and worst source.
"""

from __future__ import annotations

from pathlib import Path

from busseg.config import TrainConfig
from busseg.cv import read_pool, train_fold, write_folds
from busseg.data.sources import source_dirs
from busseg.errors import InvalidInput

ALL_SPLITS = ("train", "val", "test")


def source_folds(pool: list[dict], held_out: list[str]) -> dict[str, int]:
    """Fold of every scan: the index of its source in `held_out`."""
    return {r["name"]: held_out.index(r["source"]) for r in pool}


def holdout_config(cfg: TrainConfig, held: str, out: Path) -> TrainConfig:
    """The training config of the fold that holds `held` out: the other folders, their shares."""
    others = [str(d) for name, d in source_dirs(cfg.data).items() if name != held]
    shares = {k: v for k, v in cfg.sources.items() if k != held} if len(others) > 1 else {}
    if cfg.sources and len(others) > 1 and sum(shares.values()) <= 0:
        raise InvalidInput(f"sources: holding {held!r} out leaves no source with a share")
    return cfg.model_copy(update={"data": others if len(others) > 1 else others[0],
                                  "sources": shares, "out": str(out)})


def run_by_source(cfg: TrainConfig, out: Path | str, only: list[int] | None = None) -> list[dict]:
    """Train the leave-one-source-out folds in `only` (default: all) that have not finished;
    each summary carries its fold and held-out source."""
    dirs = source_dirs(cfg.data)
    if len(dirs) < 2:
        raise InvalidInput("cv --by source needs several data folders (data: [a, b, ...])")
    out, held_out = Path(out), list(dirs)
    pool = read_pool(cfg.data, ALL_SPLITS)
    folds = source_folds(pool, held_out)
    write_folds(out, pool, folds, len(held_out), 0, by="source", splits=list(ALL_SPLITS),
                held_out=held_out)
    summaries = []
    for fold in only if only is not None else range(len(held_out)):
        if not 0 <= fold < len(held_out):
            raise InvalidInput(f"fold {fold} out of range 0-{len(held_out) - 1} "
                               f"(one per source: {', '.join(held_out)})")
        fold_cfg = holdout_config(cfg, held_out[fold], out / f"fold_{fold}")
        summaries.append({"fold": fold, "held_out": held_out[fold], **train_fold(fold_cfg)})
    return summaries
