"""Plain-JSON records the detection layer hands up (importable without torch: the results and the report read them)."""

from __future__ import annotations

from typing import TypedDict


class WordWeight(TypedDict):
    word: str
    weight: float


class AttributionEntry(TypedDict):
    """`memtest.detection.attribution.Attribution.to_dict()`: a case record's `attribution`. Word weights are shares
    of the signal's gradient mass (averaged over text encoders); with `special` (start, end and unplaceable tokens)
    and `padding` they sum to 1."""

    signal: str
    words: list[WordWeight]
    special: float
    padding: float
    encoders: dict[str, list[WordWeight]]
    top: str | None
    seconds: float


__all__ = ["AttributionEntry", "WordWeight"]
