"""The copy descriptors by name, and the choice among them: nothing else in memtest branches on which descriptor.

- `pixel` (`memtest.evidence.pixel`): normalised tiled ℓ2, no weights, right for the tiny canaries;
- `sscd` (`memtest.evidence.sscd`): Meta's SSCD through ONNX Runtime, the literature's copy descriptor;
- `auto`: `sscd` when it is installed and every image compared is at least `SSCD_MIN_SIDE` pixels on its shorter
  side, else `pixel`; the choice and its reason are recorded (`Choice`).

Why 64 px (`scripts/evidence_survey.py`, "sscd_sizes" in docs/runs/evidence-survey.json): crops of the two photos
scikit-learn ships, shrunk to a side s, against copies of themselves (shifted 2-3 px, JPEG quality 75) and
against crops of the other photo. From 64 px up, unrelated photos score at most 0.13 and copies at least 0.42;
below it the two close in (at 32 px 0.35 against 0.46, at 16 px 0.38 against 0.40), and upscaled noise scores
0.76-0.86 at every side. On the 16 px canaries SSCD does not separate a planted caption's copies from other
captions' generations at the convention's 0.5 (the survey's canary tables), so `auto` takes `pixel` there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from memtest.errors import did_you_mean
from memtest.evidence.base import Descriptor
from memtest.evidence.errors import EvidenceError
from memtest.evidence.pixel import PixelDescriptor
from memtest.evidence.sscd import SSCDDescriptor, sscd_available

#: Descriptor classes by name.
DESCRIPTORS: dict[str, type[Descriptor]] = {"pixel": PixelDescriptor, "sscd": SSCDDescriptor}
#: The names a caller may ask for: the descriptors and `auto`.
CHOICES = ("auto", *DESCRIPTORS)
#: `auto` takes SSCD only when every image's shorter side is at least this many pixels (module docstring).
SSCD_MIN_SIDE = 64


@dataclass(frozen=True)
class Choice:
    """A descriptor and why it was used: "requested", or `auto`'s reason."""

    descriptor: Descriptor
    requested: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"requested": self.requested, "used": self.descriptor.name, "reason": self.reason}


def make_descriptor(name: str, **options: Any) -> Descriptor:
    """The descriptor `name` ("pixel", "sscd") built with `options` (its constructor's keywords)."""
    cls = DESCRIPTORS.get(name)
    if cls is None:
        raise EvidenceError(
            f"Unknown copy descriptor {name!r}.{did_you_mean(name, CHOICES)} Available: {', '.join(CHOICES)}."
        )
    try:
        return cls(**options)
    except TypeError as exc:
        raise EvidenceError(f"The {name} descriptor does not take these options {sorted(options)}: {exc}.") from exc


def smallest_side(*image_sets: np.ndarray | Sequence[np.ndarray] | None) -> int | None:
    """The shortest image side among the given images (None when there are none)."""
    sides = [min(np.shape(img)[0], np.shape(img)[1]) for images in image_sets if images is not None for img in images]
    return int(min(sides)) if sides else None


def choose_descriptor(
    name: str | Descriptor = "auto",
    *image_sets: np.ndarray | Sequence[np.ndarray] | None,
    min_side: int = SSCD_MIN_SIDE,
) -> Choice:
    """The descriptor for comparing `image_sets` (generations, training images): a `Descriptor` as given, a named
    one, or for "auto" SSCD when it is installed and no image is smaller than `min_side`, else pixel."""
    if isinstance(name, Descriptor):
        return Choice(name, name.name, "given")
    if name != "auto":
        return Choice(make_descriptor(name), name, "requested")
    side = smallest_side(*image_sets)
    if not sscd_available():
        return Choice(PixelDescriptor(), "auto", "auto: pixel, SSCD is not installed")
    if side is None or side < min_side:
        return Choice(
            PixelDescriptor(),
            "auto",
            f"auto: pixel, the smallest image side {side} px is under SSCD's minimum of {min_side} px",
        )
    return Choice(SSCDDescriptor(), "auto", f"auto: sscd, every image side is at least {min_side} px")


__all__ = ["CHOICES", "DESCRIPTORS", "SSCD_MIN_SIDE", "Choice", "choose_descriptor", "make_descriptor", "smallest_side"]
