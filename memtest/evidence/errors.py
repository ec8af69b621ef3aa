"""The error of the evidence layer."""

from __future__ import annotations

from memtest.errors import MemtestError


class EvidenceError(MemtestError):
    """Evidence could not be gathered: a training image that cannot be read safely, a copy descriptor that is not
    installed, or inputs that do not fit together."""


__all__ = ["EvidenceError"]
