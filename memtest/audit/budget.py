"""The run's flag budget: how many unconfirmed flags a clean model produces at the calibrated false-positive
rate, so that a suite of thousands of clean prompts does not fail by arithmetic (docs/method.md). Imports no
torch (scipy loads when a budget is computed)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from memtest.errors import CalibrationError

#: The confidence of the flag budget: a clean model exceeds it in at most 1% of runs.
BUDGET_CONFIDENCE = 0.99


@dataclass(frozen=True)
class FlagBudget:
    """How many unconfirmed flags a clean model produces at the calibrated rate, and how many this run has.

    A clean case is flagged when its score exceeds the threshold; the threshold is an order statistic of
    `n_reference` reference scores, so the rate p at which it flags clean prompts drawn like the references is
    itself uncertain: p ~ Beta(m - j, j + 1) for the (j+1)-th smallest of m scores. The count of flags among N
    clean cases is then beta-binomial, and `allowed` is its `confidence` quantile: an upper bound on N·fpr that
    also allows for the threshold having been estimated from finitely many references."""

    clean: int
    flagged: int
    allowed: int
    expected: float
    fpr: float
    n_reference: int
    confidence: float = BUDGET_CONFIDENCE

    @property
    def exceeded(self) -> bool:
        return self.flagged > self.allowed

    def describe(self) -> str:
        return (
            f"{self.flagged} unconfirmed flag(s) among {self.clean} clean case(s); a clean model gives at most "
            f"{self.allowed} at {self.confidence:.0%} confidence (expected {self.expected:.3g} at fpr {self.fpr:g}, "
            f"threshold from {self.n_reference} references)"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "clean": self.clean,
            "flagged": self.flagged,
            "allowed": self.allowed,
            "expected": self.expected,
            "fpr": self.fpr,
            "n_reference": self.n_reference,
            "confidence": self.confidence,
            "exceeded": self.exceeded,
        }


def flags_allowed(clean: int, fpr: float, n_reference: int, confidence: float = BUDGET_CONFIDENCE) -> int:
    """The `confidence` quantile of the number of flags among `clean` clean cases (see `FlagBudget`)."""
    if clean <= 0:
        return 0
    if n_reference < 1:
        raise CalibrationError("The flag budget needs the calibration's reference scores; it has none.")
    from scipy.stats import betabinom

    # numpy's quantile(method="higher") at 1 - fpr picks the sorted score at index ceil((m - 1)(1 - fpr)).
    j = math.ceil((n_reference - 1) * (1.0 - fpr) - 1e-12)
    return int(betabinom.ppf(confidence, clean, n_reference - j, j + 1))


def flag_budget(records: Sequence[Mapping[str, Any]], fpr: float, n_reference: int) -> FlagBudget:
    """The run's budget: clean detection cases judged against the threshold, and their unconfirmed flags
    (inherited ones, which the baseline flags too, are left out of both)."""
    clean = [
        r
        for r in records
        if r["kind"] == "detect" and r["expectation"] == "clean" and r.get("verdict") and not r.get("inherited")
    ]
    flagged = sum(1 for r in clean if r.get("verdict") == "flagged")
    return FlagBudget(
        clean=len(clean),
        flagged=flagged,
        allowed=flags_allowed(len(clean), fpr, n_reference),
        expected=len(clean) * fpr,
        fpr=fpr,
        n_reference=n_reference,
    )


__all__ = ["BUDGET_CONFIDENCE", "FlagBudget", "flag_budget", "flags_allowed"]
