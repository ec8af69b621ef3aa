"""Gate a fine-tune against its base: the base model's results mark what the fine-tune inherited. Imports
no torch."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memtest.audit.records import AuditCase, CaseRecord
from memtest.errors import CalibrationError, option

#: Settings a baseline's results must share with the run (every one changes a score).
BASELINE_SETTINGS: tuple[str, ...] = (
    "metric",
    "method",
    "n",
    "seed",
    "steps",
    "flow_steps",
    "per_prompt_seeds",
    "num_inference_steps",
    "guidance_scale",
)


@dataclass(frozen=True)
class Baseline:
    """The base model's results: which of its cases were flagged, which confirmed as copies (by case id)."""

    path: str
    flagged: frozenset[str]
    copied: frozenset[str]
    suites: frozenset[tuple[str, str]]

    @classmethod
    def load(cls, path: str | Path, settings: Mapping[str, Any]) -> Baseline:
        """Read a results file of the base model and check it was scored with the run's settings (`settings`:
        `ScoreSettings.to_dict()`); other settings are refused, naming the difference."""
        from memtest.audit.results import load_results

        doc = load_results(path)
        theirs = doc["settings"]
        diffs = [
            f"{key}: {theirs.get(key)!r} there, {settings.get(key)!r} here"
            for key in BASELINE_SETTINGS
            if key in settings and theirs.get(key) != settings.get(key)
        ]
        if diffs:
            raise CalibrationError(
                f"Baseline {path} was scored with other settings, so its flags do not compare: {'; '.join(diffs)}. "
                f"Score the base model with this run's settings and pass that file as {option('baseline')}."
            )
        detect = [c for c in doc["cases"] if c.get("kind", "detect") == "detect"]
        return cls(
            path=str(path),
            flagged=frozenset(str(c["id"]) for c in detect if c.get("flagged") or c.get("verdict") == "copy"),
            copied=frozenset(str(c["id"]) for c in detect if c.get("verdict") == "copy"),
            suites=frozenset((str(c["suite"]), str(c.get("suite_version", ""))) for c in doc["cases"]),
        )

    def apply(self, case: AuditCase, record: CaseRecord) -> CaseRecord:
        """Mark a case the base model flags too as inherited (a copy only when the base copies it too): it is
        reported apart, does not fail on that flag, and does not count against the flag budget. A case of a
        suite the baseline did not run is refused, naming the suite."""
        if (case.suite, case.suite_version) not in self.suites:
            raise CalibrationError(
                f"Baseline {self.path} has no cases of suite {case.suite} v{case.suite_version}: run the base "
                f"model on the same suites (and suite versions) and pass that file as {option('baseline')}."
            )
        verdict = record.get("verdict")
        inherited = (verdict == "flagged" and record["id"] in self.flagged) or (
            verdict == "copy" and record["id"] in self.copied
        )
        if not inherited:
            return record
        record["inherited"] = True
        if record["expectation"] == "clean" and record["outcome"] == "failed":
            record["outcome"] = "passed"
            record["message"] = f"{record['message']} Inherited: the base model ({self.path}) has it too."
        return record


__all__ = ["BASELINE_SETTINGS", "Baseline"]
