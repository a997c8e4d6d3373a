"""Several prepared data folders in one training run: each a source with its share of draws.

`data: [data/busi, data/busbra, data/breast]` trains on every folder's train split and
validates on every val split; a scan is named `<source>/<name>`. `sources: {busi: 0.5, ...}`
gives each source its share of the training draws (the shares are normalised; sources left out
of the mapping are not drawn); without it each source draws in proportion to its size. Inside a
source the classes are balanced as for one folder (`normal_share` for normal scans). The run
folder records each source's path, the SHA-256 of its manifest and its counts (sources.json).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import torch

from busseg.data.dataset import TensorSplit, load_split
from busseg.errors import InvalidInput


def source_dirs(data: str | list[str]) -> dict[str, Path]:
    """{source name: folder} of the config's `data` (one folder: its name, as one source)."""
    folders = [data] if isinstance(data, str) else list(data)
    named = {}
    for folder in folders:
        name = Path(folder).name or Path(folder).resolve().name  # as given, links kept
        if name in named:
            raise InvalidInput(f"data: two sources are named {name!r} ({named[name]} and "
                               f"{folder}); give the folders distinct names")
        named[name] = Path(folder)
    return named


def concat(splits: dict[str, TensorSplit]) -> TensorSplit:
    """One split of several sources' splits, names prefixed with their source."""
    parts = list(splits.items())
    return TensorSplit(torch.cat([s.images for _, s in parts]),
                       torch.cat([s.masks for _, s in parts]),
                       [f"{src}/{n}" for src, s in parts for n in s.names],
                       [lab for _, s in parts for lab in s.labels],
                       [src for src, s in parts for _ in s.names])


def load_sources(data: str | list[str], size: int) -> tuple[TensorSplit, TensorSplit]:
    """(train, val) of every source at `size`; a single folder keeps its own names."""
    dirs = source_dirs(data)
    if len(dirs) == 1:
        folder = next(iter(dirs.values()))
        return load_split(folder / "train", size), load_split(folder / "val", size)
    train = concat({n: load_split(d / "train", size) for n, d in dirs.items()})
    val = concat({n: load_split(d / "val", size) for n, d in dirs.items()})
    return train, val


def source_shares(sources: list[str], given: dict[str, float]) -> dict[str, float]:
    """Each source's share of the draws (summing to 1): `given` normalised, or by size."""
    counts = Counter(sources)
    if not given:
        return {s: n / len(sources) for s, n in counts.items()}
    unknown = set(given) - set(counts)
    if unknown:
        raise InvalidInput(f"sources: {sorted(unknown)} are not among the data folders "
                           f"({', '.join(sorted(counts))})")
    total = sum(given.values())
    return {s: given.get(s, 0.0) / total for s in counts}


def record(data: str | list[str], train: TensorSplit, val: TensorSplit,
           shares: dict[str, float]) -> dict:
    """What sources.json keeps: each source's folder, manifest hash, counts and share."""
    out = {}
    for name, folder in source_dirs(data).items():
        manifest = folder / "manifest.csv"
        digest = hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest.is_file() \
            else None
        mine = [i for i, s in enumerate(train.sources or [name] * len(train)) if s == name]
        out[name] = {"path": str(folder), "manifest_sha256": digest,
                     "train": dict(Counter(train.labels[i] for i in mine)),
                     "val": sum(s == name for s in (val.sources or [name] * len(val))),
                     "share": shares.get(name, 1.0)}
    return out
