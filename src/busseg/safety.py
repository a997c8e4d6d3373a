"""Never replace earlier results silently: outputs are claimed before a command writes them.

`claim(paths, overwrite)` refuses (FileExistsError, one line naming what is there and the flag
that allows it) when any of `paths` exists; with `overwrite=True` it deletes them first, so the
files of an earlier run and this one never mix. Only paths a command itself writes are claimed.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

from busseg.errors import OutputExists


class OutputExistsError(OutputExists):
    """An output of this command already holds earlier results."""


def existing(paths: Iterable[Path | str]) -> list[Path]:
    """The paths that exist (files, folders or links)."""
    return [Path(p) for p in paths if Path(p).exists() or Path(p).is_symlink()]


def claim(paths: Iterable[Path | str], overwrite: bool, hint: str = "--overwrite") -> None:
    """Refuse when any path exists, unless `overwrite` (then remove them)."""
    found = existing(paths)
    if not found:
        return
    if not overwrite:
        names = ", ".join(str(p) for p in found[:3]) + (" ..." if len(found) > 3 else "")
        raise OutputExistsError(
            f"{names} already exist(s) from an earlier run; pass {hint} to replace it")
    for p in found:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def inside(path: Path | str, folder: Path | str) -> bool:
    """Whether `path` is `folder` or lies under it (after resolving links)."""
    path, folder = Path(path).resolve(), Path(folder).resolve()
    return path == folder or folder in path.parents
