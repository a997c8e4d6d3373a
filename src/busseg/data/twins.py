"""Near-duplicate ("twin") detection: BUSI holds re-exported and re-cropped copies of scans.

Each image becomes a small thumbnail (`THUMB` x `THUMB`, area filter), standardised to zero mean
and unit norm. Two images are twins when the Pearson correlation of their thumbnails is at least
`threshold` (default `DEFAULT_THRESHOLD`). Twins are joined transitively into groups with a
union-find, and a split assigns whole groups.
"""

from __future__ import annotations

import numpy as np
import torch

from busseg.preprocess import resize_image, to_gray01

THUMB = 32
DEFAULT_THRESHOLD = 0.90


def thumbnail(image: np.ndarray, size: int = THUMB) -> np.ndarray:
    """Return the flattened, zero-mean, unit-norm thumbnail of an image."""
    t = resize_image(to_gray01(image), (size, size)).numpy().ravel().astype(np.float64)
    t = t - t.mean()
    norm = np.linalg.norm(t)
    return t / norm if norm > 0 else t


def twin_pairs(thumbs: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> list[tuple[int, int]]:
    """All index pairs (i < j) whose thumbnail correlation is >= threshold."""
    corr = torch.as_tensor(thumbs) @ torch.as_tensor(thumbs).T
    i, j = torch.nonzero(torch.triu(corr >= threshold, diagonal=1), as_tuple=True)
    return list(zip(i.tolist(), j.tolist()))


def group_ids(n: int, pairs: list[tuple[int, int]]) -> list[int]:
    """Union-find over `pairs`; return a group id per item (the smallest index in its group)."""
    parent = list(range(n))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return [find(a) for a in range(n)]
