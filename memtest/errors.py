"""memtest's error types. Every user-facing failure is a MemtestError whose message says what was
wrong and how to fix it; the pytest plugin turns them into test errors, never skips or passes."""

from __future__ import annotations


class MemtestError(Exception):
    """Base class: a problem the user can fix (bad input, missing file, mismatched settings)."""


class CheckpointError(MemtestError):
    """A checkpoint could not be found, read or trusted."""


class ScoringError(MemtestError):
    """Scoring inputs were invalid, or the model produced a non-finite value."""


class SuiteError(MemtestError):
    """A prompt suite could not be found or parsed."""


class CalibrationError(MemtestError):
    """A calibration is missing, malformed, or does not match the checkpoint and settings."""


class ZooError(MemtestError):
    """Training data or a canary manifest is invalid."""


class ResultsError(MemtestError):
    """A results file is unreadable or results cannot be merged."""


class MitigationError(MemtestError):
    """A mitigation could not run: bad settings, no threshold, or nothing to generate with."""
