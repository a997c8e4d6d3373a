"""Group-aware, per-class 80/10/10 splitting: near-duplicate groups never straddle splits."""

from __future__ import annotations

import random
from collections import Counter, defaultdict

from busseg.errors import InvalidInput

SPLITS = ("train", "val", "test")


def split_groups(
    labels: list[str],
    groups: list,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
) -> list[str]:
    """Assign each item a split (train/val/test) so that every group lands in one split."""
    return [SPLITS[k] for k in assign_groups(labels, groups, fractions, seed)]


def assign_groups(
    labels: list[str], groups: list, fractions: tuple[float, ...], seed: int = 0
) -> list[int]:
    """Assign each item a part index so that every group lands in one part.

    A group belongs to the class most of its members have (ties: alphabetical). Per class, groups
    are shuffled with `seed` and, largest first, each goes to the part furthest below its target
    count, so the per-class proportions come close to `fractions`.
    """
    if abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) < 0:
        raise InvalidInput(f"split fractions must be non-negative and sum to 1, got {fractions}")
    members: dict = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    group_class = {
        g: sorted(Counter(labels[i] for i in idx).items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
        for g, idx in members.items()
    }
    rng = random.Random(seed)
    out = [-1] * len(labels)
    parts = range(len(fractions))
    for label in sorted(set(group_class.values())):
        gs = sorted(g for g, c in group_class.items() if c == label)
        rng.shuffle(gs)
        gs.sort(key=lambda g: -len(members[g]))  # stable: shuffled order within equal sizes
        total = sum(len(members[g]) for g in gs)
        targets = [f * total for f in fractions]
        counts = [0] * len(fractions)
        for g in gs:
            k = max(parts, key=lambda s: (targets[s] - counts[s]) / max(targets[s], 1e-9))
            counts[k] += len(members[g])
            for i in members[g]:
                out[i] = k
    return out
