"""The project's own error types: a problem the user can fix, its message naming the file or
setting and what is wrong. `busseg` prints these as one line; anything else is a bug and keeps
its traceback."""

from __future__ import annotations


class BussegError(Exception):
    """An error the user can fix (a bad file, setting or folder)."""


class InvalidInput(BussegError, ValueError):
    """A file, value or combination of settings busseg cannot use."""


class MissingFile(BussegError, FileNotFoundError):
    """A file or folder that is not there."""


class OutputExists(BussegError, FileExistsError):
    """An output that holds earlier results (pass --overwrite to replace it)."""


class Unavailable(BussegError, RuntimeError):
    """Something this machine does not have (a CUDA device, an installed tool)."""
