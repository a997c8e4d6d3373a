"""The one decision rule that turns a probability map (and a lesion score) into a mask.

numpy and scipy only, so every surface (CLI, Python API, ONNX path, service) applies the same
rule. `PostprocessSettings` is what `busseg tune` chooses and stores in `postprocess.json`
beside the weights (and in the shipped weights' metadata).

The rule, for a probability map `prob` and an image-level lesion score `score` (the presence
head's probability; for a model without a head, the map's peak probability, `lesion_score`):
1. With a presence threshold and a score below it, the scan holds no lesion: the mask is empty.
2. Otherwise threshold the map and drop components smaller than `min_area_frac` of the image
   (and, with `keep_largest`, all but the most lesion-like one).
3. When the score says "lesion", the most lesion-like component (largest probability mass) is
   always kept, even when it is small or below the threshold: a lesion the model found is never
   erased by the component filters. If nothing passes the threshold, the component around the
   most probable pixel (pixels at least half its probability) is the mask.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
from scipy import ndimage

from busseg.errors import InvalidInput

SETTINGS_FILE = "postprocess.json"


@dataclass(frozen=True)
class PostprocessSettings:
    """Threshold, flip TTA, lesion-presence threshold and component filter of one model."""

    threshold: float = 0.5
    tta: bool = False
    presence_threshold: float | None = None
    min_area_frac: float = 0.0
    keep_largest: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise InvalidInput(f"threshold must be in [0, 1], got {self.threshold}")
        if self.presence_threshold is not None and not 0.0 <= self.presence_threshold <= 1.0:
            raise InvalidInput("presence_threshold must be in [0, 1], got "
                               f"{self.presence_threshold}")
        if not 0.0 <= self.min_area_frac < 1.0:
            raise InvalidInput(f"min_area_frac must be in [0, 1), got {self.min_area_frac}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PostprocessSettings:
        """Build from a dict; unknown keys are errors (older `min_confidence` is dropped)."""
        data = {k: v for k, v in data.items() if k != "min_confidence"}
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise InvalidInput(f"unknown post-processing key(s): {', '.join(unknown)}")
        return cls(**data)

    def replace(self, **changes) -> PostprocessSettings:
        """A copy with some values changed (None values are ignored)."""
        return PostprocessSettings(**{**asdict(self),
                                      **{k: v for k, v in changes.items() if v is not None}})


def plain_settings() -> PostprocessSettings:
    """The plain output: threshold 0.5, no TTA, no presence rule, no component filter."""
    return PostprocessSettings()


def chosen_settings(model: PostprocessSettings | None, plain: bool = False,
                    threshold: float | None = None, tta: bool | None = None,
                    source: object = "the model") -> PostprocessSettings:
    """What a command applies: the model's settings (the plain output with `plain`), then the
    threshold and TTA it was given. A model file without settings (`model` None, `source` names
    it) needs `plain` or a threshold."""
    if model is None and threshold is None and not plain:
        raise InvalidInput(f"{source}: the file carries no busseg settings (exported by another "
                           "tool?); pass --threshold or --plain to use it with plain settings")
    base = plain_settings() if plain or model is None else model
    return base.replace(threshold=threshold, tta=tta)


OWNER_KEY = "for_checkpoint"  # the file name of the model a `postprocess.json` was chosen for


def save_settings(settings: PostprocessSettings, path: Path | str,
                  for_checkpoint: str | None = None) -> None:
    """Write a `postprocess.json`; `for_checkpoint` names the model file it belongs to."""
    owner = {OWNER_KEY: for_checkpoint} if for_checkpoint else {}
    Path(path).write_text(json.dumps({**owner, **settings.to_dict()}, indent=1))


def read_settings(path: Path | str) -> tuple[PostprocessSettings, str | None]:
    """A `postprocess.json`'s settings and the model file it names (None in files that name
    none); a bad file raises ValueError naming it."""
    try:
        data = json.loads(Path(path).read_text())
        owner = data.pop(OWNER_KEY, None) if isinstance(data, dict) else None
        return PostprocessSettings.from_dict(data), owner
    except (json.JSONDecodeError, TypeError, ValueError, AttributeError) as exc:
        raise InvalidInput(f"{path}: not valid post-processing settings ({exc})") from None


def load_settings(path: Path | str) -> PostprocessSettings:
    """Read a `postprocess.json`'s settings; a bad file raises ValueError naming it."""
    return read_settings(path)[0]


def lesion_score(prob: np.ndarray, head_score: float | None) -> float:
    """The image-level lesion score the presence rule reads: the presence head's probability,
    or, for a model without a head, the peak probability of the map."""
    return float(np.max(prob)) if head_score is None else float(head_score)


def says_lesion(prob: np.ndarray, score: float | None,
                settings: PostprocessSettings) -> bool | None:
    """True/False from the presence rule on the lesion score (`lesion_score`); None when there
    is no rule."""
    if settings.presence_threshold is None:
        return None
    return bool(lesion_score(prob, score) >= settings.presence_threshold)


def _strongest_fallback(prob: np.ndarray) -> np.ndarray:
    """The component around the most probable pixel, at half its probability."""
    peak = np.unravel_index(int(np.argmax(prob)), prob.shape)
    labels, _ = ndimage.label(prob >= 0.5 * prob[peak])
    return labels == labels[peak]


def decide(prob: np.ndarray, score: float | None, settings: PostprocessSettings) -> np.ndarray:
    """The final boolean mask of one probability map (see the module docstring)."""
    lesion = says_lesion(prob, score, settings)
    if lesion is False:
        return np.zeros(prob.shape, dtype=bool)
    mask = prob >= settings.threshold
    if not mask.any():
        return _strongest_fallback(prob) if lesion else mask
    if settings.min_area_frac <= 0 and not settings.keep_largest:
        return mask
    labels, n = ndimage.label(mask)
    inside = labels[mask]  # one pass over the lesion pixels, no per-component masks
    areas = np.bincount(inside, minlength=n + 1)[1:]
    strength = np.bincount(inside, weights=prob[mask].astype(np.float64), minlength=n + 1)[1:]
    keep = areas >= settings.min_area_frac * mask.size
    if settings.keep_largest and keep.any():
        keep = np.arange(n) == int(np.argmax(np.where(keep, strength, -1.0)))
    if lesion:
        keep[int(np.argmax(strength))] = True
    return np.concatenate(([False], keep))[labels]  # label -> kept, as a lookup table
