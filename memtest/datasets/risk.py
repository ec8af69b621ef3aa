"""Duplication risk: how often training shows the model a caption, or an image close to one of its images.

Near duplicates are images whose 64-bit perceptual hashes (imagehash.phash: the signs of the lowest 8x8 DCT
frequencies of a 32x32 grey copy) differ in at most ``distance`` bits (`DEFAULT_DISTANCE`, measured in
docs/datasets.md). Clusters are the connected components of that relation (union-find), found without comparing every
pair: by the pigeonhole principle two hashes within ``d`` bits agree exactly on at least one of ``d + 1`` disjoint
bands of bits, so only hashes that share a band value are compared (vectorised, in numpy), after equal hashes are
merged. On uniform hashes that is about ``n^2 (d + 1) / 2^(64 / (d + 1))`` comparisons instead of ``n^2 / 2``.

Per caption (`CaptionRisk`): ``repeats`` (the times per epoch it is trained: the sum of its rows' repeats, kohya's N
or num_repeats, 1 elsewhere), ``rows`` (exact duplicate captions), ``images`` (distinct images by content),
``dup_cluster`` (the largest near-duplicate cluster among its images, counted in training rows across the whole set),
and ``exposure``: the larger of its repeats and the repeats summed over the rows of that cluster, i.e. how many times
per epoch the model sees this caption or an image near-identical to one of its images. A caption is ``at_risk`` when
its exposure is at least twice a typical row's repeats (the median over rows) and at least 2: seen twice as often as
the rest of the set (a kohya folder that repeats everything 10 times does not make everything at risk; an image
there duplicated twice does).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np

from memtest.datasets.errors import DatasetError

#: The largest Hamming distance (bits of 64) between perceptual hashes of near duplicates (docs/datasets.md).
DEFAULT_DISTANCE: Final = 8
#: At risk: exposure at least this many times a typical row's repeats (and at least 2).
RISK_FACTOR: Final = 2
_BLOCK: Final = 256


def near_duplicate_labels(hashes: Sequence[int], distance: int = DEFAULT_DISTANCE) -> list[int]:
    """A cluster label per hash: two hashes share a label when a chain of hashes, each within ``distance`` bits of the
    next, joins them. Labels are the index of the cluster's first member."""
    if isinstance(distance, bool) or not isinstance(distance, int) or not 0 <= distance <= 32:
        raise DatasetError(f"The hash distance must be a whole number of bits from 0 to 32, got {distance!r}.")
    if not hashes:
        return []
    values = np.array([h & 0xFFFFFFFFFFFFFFFF for h in hashes], dtype=np.uint64)
    unique, inverse = np.unique(values, return_inverse=True)
    parent = list(range(len(unique)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i: int, j: int) -> None:
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)

    if distance > 0 and len(unique) > 1:
        bands = distance + 1
        edges = np.linspace(0, 64, bands + 1).round().astype(int)
        for low, high in itertools.pairwise(edges.tolist()):
            mask = np.uint64((1 << int(high - low)) - 1)
            keys = (unique >> np.uint64(low)) & mask
            order = np.argsort(keys, kind="stable")
            starts = np.flatnonzero(np.r_[True, np.diff(keys[order]) != 0])
            ends = np.r_[starts[1:], len(order)]
            for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
                if end - start > 1:
                    _join(order[start:end], unique, distance, union)
    roots = [find(i) for i in range(len(unique))]
    first: dict[int, int] = {}
    for index, u in enumerate(inverse.ravel().tolist()):
        first.setdefault(roots[u], index)
    return [first[roots[u]] for u in inverse.ravel().tolist()]


def _join(members: np.ndarray, unique: np.ndarray, distance: int, union: Callable[[int, int], None]) -> None:
    group = unique[members]
    for offset in range(0, len(members), _BLOCK):
        block = group[offset : offset + _BLOCK]
        near = np.bitwise_count(block[:, None] ^ group[None, :]) <= distance
        rows, cols = np.nonzero(near)
        for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
            if c > r + offset:
                union(int(members[r + offset]), int(members[c]))


@dataclass(frozen=True)
class CaptionRisk:
    """The duplication facts of one caption (see the module docstring)."""

    rows: int
    repeats: int
    images: int
    dup_cluster: int
    exposure: int
    at_risk: bool

    def tags(self) -> tuple[str, ...]:
        """The case tags: ``repeats:N``, ``images:K``, ``dup-cluster:M``, ``dup-caption:R`` (R >= 2 rows carry the
        caption) and ``at-risk``."""
        tags = [f"repeats:{self.repeats}", f"images:{self.images}", f"dup-cluster:{self.dup_cluster}"]
        if self.rows > 1:
            tags.append(f"dup-caption:{self.rows}")
        if self.at_risk:
            tags.append("at-risk")
        return tuple(tags)

    def order(self) -> tuple[int, int, int, int]:
        """Sort key, riskiest first."""
        return (-self.exposure, -self.dup_cluster, -self.repeats, -self.images)


def at_risk_floor(row_repeats: Mapping[int, int]) -> int:
    """The exposure from which a caption is at risk: `RISK_FACTOR` times the median repeats of a row, and at least 2
    (``row_repeats``: how many rows have each repeat count)."""
    total = sum(row_repeats.values())
    seen = 0
    median = 1
    for repeats in sorted(row_repeats):
        seen += row_repeats[repeats]
        if 2 * seen >= total:
            median = repeats
            break
    return max(2, RISK_FACTOR * median)


__all__ = ["DEFAULT_DISTANCE", "RISK_FACTOR", "CaptionRisk", "at_risk_floor", "near_duplicate_labels"]
