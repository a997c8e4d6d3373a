"""A command's record of what it wrote into its output folder: a journal, a lock, safe removal.

`busseg predict` appends one line to `results.jsonl` before it writes a scan's files (the names
it is about to write) and one after (the rows and the files written), each line flushed and
synced, so an interrupted run leaves a record that says exactly which files are its own. A
second run into the same folder reads it to resume (skip finished scans, after checking their
files are there) or, with `--overwrite`, to remove exactly what the earlier run wrote. Whatever
the journal says, removal never leaves the output folder: a listed name that is not a plain
file name in that folder is ignored. A lock file refuses a second run into the same folder
while one is writing there. Ctrl-C stops a run between scans (`interrupt_between`), so the scan
in hand is finished and recorded first; a second Ctrl-C stops at once.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from busseg.errors import InvalidInput
from busseg.jsonio import clean
from busseg.safety import OutputExistsError

JOURNAL = "results.jsonl"
LOCK = ".busseg-predict.lock"


def own_file(out: Path, name: object) -> Path | None:
    """`out / name` when `name` is a plain file name inside `out` (no separator, no `..`, not
    absolute, not a link to elsewhere); None otherwise."""
    if not isinstance(name, str) or not name or name in (".", ".."):
        return None
    if "/" in name or "\\" in name or "\0" in name or Path(name).is_absolute():
        return None
    path = out / name
    if path.parent.resolve() != out.resolve():
        return None
    return path


def remove_own(out: Path, names) -> int:
    """Remove the plain files (or links, never their targets) `names` in `out`; anything
    else (folders, names outside `out`) is left alone. The number removed."""
    n = 0
    for name in names:
        path = own_file(out, name)
        if path is not None and (path.is_symlink() or path.is_file()):
            path.unlink()
            n += 1
    return n


@dataclass
class Journal:
    """The finished scans (by input file) and unfinished names of an earlier run."""

    settings: dict | None = None
    done: dict[str, dict] = field(default_factory=dict)  # file -> {"rows", "outputs"}
    started: dict[str, list[str]] = field(default_factory=dict)  # file -> names, unfinished

    def outputs(self) -> list[str]:
        """Every name the run wrote or was about to write."""
        names = [n for entry in self.done.values() for n in entry["outputs"]]
        return names + [n for started in self.started.values() for n in started]


def read_journal(out: Path) -> Journal | None:
    """The journal in `out`, or None when there is none. A last line cut short by a crash is
    ignored; any other unreadable line makes the journal unusable (ValueError)."""
    path = out / JOURNAL
    if not path.is_file():
        return None
    journal = Journal()
    lines = path.read_text(errors="replace").splitlines()
    for i, line in enumerate(lines):
        try:
            entry = json.loads(line)
            _apply(journal, entry)
        except (ValueError, KeyError, TypeError, AttributeError):
            if i == len(lines) - 1:
                break  # written when the run was killed
            raise InvalidInput(f"{path}: line {i + 1} is not a busseg journal entry; "
                               "pass --overwrite to replace this folder's results") from None
    return journal


def _apply(journal: Journal, entry: dict) -> None:
    kind = entry["kind"]
    if kind == "run":
        journal.settings = dict(entry["settings"])
    elif kind == "start":
        journal.started[str(entry["file"])] = [str(n) for n in entry["outputs"]]
        journal.done.pop(str(entry["file"]), None)
    elif kind == "done":
        journal.started.pop(str(entry["file"]), None)
        journal.done[str(entry["file"])] = {"rows": list(entry["rows"]),
                                            "outputs": [str(n) for n in entry["outputs"]]}
    elif kind != "error":
        raise InvalidInput(kind)


class JournalWriter:
    """Appends entries to `out`/results.jsonl, each flushed and synced to disk."""

    def __init__(self, out: Path, settings: dict, fresh: bool) -> None:
        self.fh = open(out / JOURNAL, "w" if fresh else "a", encoding="utf-8")
        if fresh:
            self.write({"kind": "run", "settings": settings})

    def write(self, entry: dict) -> None:
        self.fh.write(json.dumps(clean(entry), allow_nan=False) + "\n")
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def close(self) -> None:
        self.fh.close()


class FolderLock:
    """An exclusive lock on `out`/.busseg-predict.lock for one run's lifetime (released by
    the system if the process dies, so a killed run never blocks the next one)."""

    def __init__(self, out: Path) -> None:
        self.path = out / LOCK
        self.fh = None

    def __enter__(self) -> FolderLock:
        self.fh = open(self.path, "a+", encoding="utf-8")
        try:
            import fcntl

            fcntl.flock(self.fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # no fcntl (Windows): no lock
            pass
        except OSError:
            self.fh.close()
            self.fh = None
            raise OutputExistsError(f"{self.path.parent}: another busseg predict is writing "
                                    "into this folder; wait for it or choose another --out"
                                    ) from None
        self.fh.seek(0)
        self.fh.truncate()
        self.fh.write(f"{os.getpid()}\n")
        self.fh.flush()
        return self

    def __exit__(self, *exc) -> None:
        if self.fh is not None:
            self.path.unlink(missing_ok=True)
            self.fh.close()


@contextmanager
def interrupt_between() -> Iterator[Callable[[], None]]:
    """Within the block SIGINT only takes note; the function it yields raises KeyboardInterrupt
    when one came, for the caller to call between scans. A second SIGINT raises at once. Off the
    main thread, or where SIGINT is not Python's default handler, nothing changes."""
    pending: list[int] = []

    def check() -> None:
        if pending:
            raise KeyboardInterrupt

    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield check
        return

    def note(signum: int, frame: object) -> None:
        if pending:
            raise KeyboardInterrupt
        pending.append(signum)

    signal.signal(signal.SIGINT, note)
    try:
        yield check
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
