"""busseg: breast-ultrasound lesion segmentation with a lightweight U-Net."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load_model", "segment"]


def __getattr__(name: str):
    # Lazy imports keep `busseg --help` fast (torch loads only when needed).
    if name == "load_model":
        from busseg.checkpoint import load_model

        return load_model
    if name == "segment":
        from busseg.inference import segment

        return segment
    raise AttributeError(f"module 'busseg' has no attribute {name!r}")
