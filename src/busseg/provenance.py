"""Where a model came from: busseg version, git commit, and hashes of its split and config."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path


def git_commit() -> str | None:
    """The commit of the busseg source tree, where it is a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def sha256_of(obj) -> str:
    """SHA-256 of a JSON-serialisable object (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def provenance(config: dict | None = None, split: dict | None = None) -> dict:
    """Version and commit, plus hashes of the config and of the split (image names) if given."""
    from busseg import __version__

    doc: dict = {"busseg_version": __version__, "commit": git_commit()}
    if config is not None:
        doc["config_sha256"] = sha256_of(config)
    if split is not None:
        doc["split_sha256"] = sha256_of(split)
    return doc
