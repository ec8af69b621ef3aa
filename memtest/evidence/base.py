"""What a copy descriptor is: the one interface every descriptor implements (`pixel`, `sscd`).

A descriptor turns images into features (`embed`) and features into similarities (`compare`); `similarity` does
both for every (image, reference) pair, batched. Higher is more similar; `maximum` is an image's similarity to
itself. `settings()` is a plain-JSON dict of everything that changes the numbers, recorded with every result;
similarities measured under other settings must not be compared with a threshold calibrated under these.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from memtest.evidence.images import as_images


class Descriptor(ABC):
    """A copy descriptor: similarity of generations to training images (and to each other)."""

    #: The registry name (`memtest.evidence.descriptors.DESCRIPTORS`).
    name: ClassVar[str]
    #: An image's similarity to itself: the largest value `similarity` gives.
    maximum: ClassVar[float]
    #: The field's copy threshold for this descriptor, used when no calibrated one is given; None when the
    #: descriptor has no convention and must be calibrated.
    convention: ClassVar[float | None] = None
    #: Where `convention` comes from, for records and messages.
    convention_source: ClassVar[str] = ""

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """Everything that changes this descriptor's numbers, as plain JSON (name included)."""

    @abstractmethod
    def embed(self, images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """Features of each image ((H, W, 3) in [0, 1]; sizes may differ): an array with one row per image."""

    @abstractmethod
    def compare(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Similarities (len(a), len(b)) between the rows of two `embed` results."""

    def similarity(
        self, images: np.ndarray | Sequence[np.ndarray], references: np.ndarray | Sequence[np.ndarray]
    ) -> np.ndarray:
        """Similarity of every image to every reference, (N, M) float64; higher is closer, `maximum` at most."""
        return self.compare(self.embed(as_images(images)), self.embed(as_images(references, "references")))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.settings()!r})"


__all__ = ["Descriptor"]
