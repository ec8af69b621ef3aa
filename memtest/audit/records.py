"""The typed records that cross the audit's seams: a prompt's scores (the engine and its cache), a case's
outcome (the gate, the plugin's test reports, the results file), a mitigation's entry (memtest.mitigation builds
it, the results file and the report read it). Plain JSON types only, so an xdist worker can
send them to the controller as they are. No torch here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, TypedDict

from typing_extensions import NotRequired

from memtest.audit.suites import Mitigate
from memtest.detection.records import AttributionEntry

Outcome = Literal["passed", "failed", "error"]
#: A detection case's verdict: `copy` (confirmed by comparing generations with training images), `flagged` (above
#: the threshold, not confirmed) or `clean` (at or below it).
Verdict = Literal["copy", "flagged", "clean"]


@dataclass(frozen=True)
class AuditCase:
    suite: str
    suite_version: str
    case_id: str
    prompt: str
    expectation: str
    tags: tuple[str, ...] = ()
    mitigate: Mitigate = False  # the suite's value: True, False or "copy" (the copy must leave)
    source: str | None = None
    line: int | None = None
    #: the caption's training images (absolute paths), from the suite case's `images:`
    images: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return f"{self.suite}::{self.case_id}"


class ScoreRecord(TypedDict):
    """One prompt's scores as the engine returns and caches them."""

    prompt: str
    score: float
    values: list[float]
    seeds: list[int]


class CaseRecord(TypedDict):
    """One case's entry in the results file's `cases` (docs/results-format.md)."""

    id: str
    suite: str
    suite_version: str
    case_id: str
    kind: Literal["detect", "mitigate"]
    prompt: str
    expectation: str
    tags: list[str]
    score: float | None
    values: list[float]
    threshold: float | None
    margin: float | None
    flagged: bool | None
    outcome: Outcome
    message: str
    seeds: NotRequired[list[int]]
    #: detection cases that were judged against a threshold (not references, not mitigation items)
    verdict: NotRequired[Verdict | None]
    #: what confirmation measured (memtest.evidence), when it ran
    evidence: NotRequired[dict[str, Any] | None]
    #: each word's share of the memorization signal (memtest.detection.attribution), flagged cases with the
    #: attribution option
    attribution: NotRequired[AttributionEntry | None]
    #: flagged or copied on the baseline (the base model) too: reported apart, not counted
    inherited: NotRequired[bool]
    #: the pytest node that ran it (the plugin's)
    nodeid: NotRequired[str]
    #: `mitigate` records: the detector's score before mitigation, and the copy statistics on a canary
    unmitigated: NotRequired[float]
    copy_before: NotRequired[dict[str, Any] | None]
    copy_after: NotRequired[dict[str, Any] | None]
    copy_required: NotRequired[bool]
    copy_verdict: NotRequired[str]


class MitigationEntry(TypedDict):
    """One entry of the results document's `mitigation` list (docs/results-format.md), built by
    `Mitigation.record` only: plain JSON types, images as small base64 PNGs."""

    id: str
    prompt: str
    method: str
    threshold: float
    succeeded: bool
    reason: str
    steps: int | None
    seeds: list[int]
    seeds_tried: list[int]
    prompt_after: str | None
    sharpness_before: list[float]
    sharpness_after: list[float]
    images_before: list[str]
    images_after: list[str]
    copy_distance_before: float | None
    copy_distance_after: float | None
    seconds: float
    generation_seconds: float | None
    copy_before: dict[str, Any] | None
    copy_after: dict[str, Any] | None
    #: `mitigate: copy` cases (judge_mitigation): the copy had to leave, and whether it did
    copy_required: NotRequired[bool]
    copy_verdict: NotRequired[str]


__all__ = ["AuditCase", "CaseRecord", "MitigationEntry", "Outcome", "ScoreRecord", "Verdict"]
