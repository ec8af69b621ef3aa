"""The error of the datasets layer."""

from __future__ import annotations

from memtest.errors import MemtestError


class DatasetError(MemtestError):
    """A training set could not be read: an unknown layout, a malformed metadata row, a missing image or caption, a
    path that leaves the dataset root, a damaged archive, or an image refused by the safety limits. The message names
    the file, the row (or member) and the fix."""


__all__ = ["DatasetError"]
