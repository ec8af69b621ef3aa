"""The gate: which cases an audit runs, how each is judged, and what a run adds up to.

The pytest plugin (one item per case, batch-scored when the first runs) and `memtest audit` (all cases at
once) both go through these functions, so they give the same records, calibrations and summaries. Importing
this module costs nothing (no torch): the engine loads the model when it first scores.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memtest.audit.budget import FlagBudget, flag_budget
from memtest.audit.calibration import Calibration, calibrate
from memtest.audit.records import AuditCase, CaseRecord, MitigationEntry
from memtest.audit.suites import Suite, builtin_suites, resolve_suite
from memtest.errors import CalibrationError, MemtestError, ScoringError, SuiteError, option

if TYPE_CHECKING:
    from memtest.audit.engine import Engine
    from memtest.progress import ProgressFn

SUITE_FILENAME = "memtest-suite.yaml"


# -- which cases -------------------------------------------------------------------------------------------
def suite_cases(suite: Suite, calibrate: bool) -> list[AuditCase]:
    """Cases a run executes: references when calibrating, clean and memorized ones when gating."""
    wanted = {"reference"} if calibrate else {"clean", "memorized"}
    return [
        AuditCase(
            suite=suite.name,
            suite_version=suite.version,
            case_id=c.id,
            prompt=c.prompt,
            expectation=c.expectation,
            tags=tuple(c.tags),
            mitigate=c.mitigate,
            source=str(suite.path) if suite.path else None,
            line=c.line,
            images=tuple(str(p) for p in c.image_paths(suite.path)),
        )
        for c in suite.cases
        if c.expectation in wanted
    ]


def shard_index(case_id: str, count: int) -> int:
    """Stable 1-based shard of a case: a hash of its id, so adding cases never moves others."""
    digest = hashlib.sha256(case_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % count + 1


def checkpoint_suite(folder: Path) -> str | None:
    """The suite a checkpoint ships for itself: `memtest-suite.yaml`, or the canary manifest's `suite`."""
    own = folder / SUITE_FILENAME
    if own.is_file():
        return str(own)
    from memtest.models.canaries import MANIFEST_NAME, load_manifest

    if (folder / MANIFEST_NAME).is_file():
        return load_manifest(folder).suite or None
    return None


def resolve_suites(names: Sequence[str], checkpoint_folder: Path | None, checkpoint_name: str) -> list[Suite]:
    if names:
        return [resolve_suite(n) for n in names]
    own = checkpoint_suite(checkpoint_folder) if checkpoint_folder else None
    if own is None:
        raise SuiteError(
            f"No suite was named and checkpoint {checkpoint_name} ships none ({SUITE_FILENAME}). "
            f"Pass {option('suite', 'NAME')} or a path; built-in suites: {', '.join(sorted(builtin_suites()))}."
        )
    return [resolve_suite(own)]


def check_runnable(suites: Iterable[Suite], calibrate: bool) -> None:
    """Every named suite has cases to run in this mode; a suite with none is a usage error, not a pass."""
    for suite in suites:
        if not suite_cases(suite, calibrate):
            mode = "reference" if calibrate else "clean or memorized"
            hint = (
                "name a suite that has reference cases"
                if calibrate
                else f"reference cases only calibrate: add {option('calibrate')}"
            )
            raise SuiteError(f"Suite '{suite.name}' has no {mode} cases to run: {hint}.")


def select_cases(suites: Iterable[Suite], calibrate: bool, shard: tuple[int, int] | None) -> list[AuditCase]:
    cases: list[AuditCase] = []
    for suite in suites:
        cases.extend(suite_cases(suite, calibrate))
    if shard is not None:
        i, n = shard
        cases = [c for c in cases if shard_index(c.id, n) == i]
    return cases


# -- judging -----------------------------------------------------------------------------------------------
def base_record(case: AuditCase, *, mitigate: bool = False) -> CaseRecord:
    """A case's record before it is judged (an error record until `judge` fills it in)."""
    return {
        "id": f"{case.id}[mitigate]" if mitigate else case.id,
        "suite": case.suite,
        "suite_version": case.suite_version,
        "case_id": case.case_id,
        "kind": "mitigate" if mitigate else "detect",
        "prompt": case.prompt,
        "expectation": case.expectation,
        "tags": list(case.tags),
        "score": None,
        "values": [],
        "threshold": None,
        "margin": None,
        "flagged": None,
        "outcome": "passed",
        "message": "",
    }


def error_record(case: AuditCase, message: str, *, mitigate: bool = False) -> CaseRecord:
    """The record of a case that could not be judged: outcome `error`, with the cause."""
    record = base_record(case, mitigate=mitigate)
    record["seeds"], record["outcome"], record["message"] = [], "error", message
    return record


def judge(
    case: AuditCase, score: float, values: Sequence[float], threshold: float | None, *, fail_on: str = "copy"
) -> CaseRecord:
    """The outcome of one case before confirmation. A memorized prompt must be flagged (above the threshold).
    A clean prompt above it is `flagged`: with `fail_on="flag"` that fails the case (the strict per-case rule);
    with `fail_on="copy"` it fails only once confirmed as a copy (`confirm`), and until then it counts against
    the run's flag budget (`flag_budget`)."""
    if not math.isfinite(score):
        raise ScoringError(f"Case {case.id} has a non-finite score ({score}); the gate fails closed.")
    record = base_record(case)
    record["score"], record["values"] = float(score), [float(v) for v in values]
    if case.expectation == "reference" or threshold is None:
        return record
    flagged = score > threshold
    record["threshold"], record["margin"], record["flagged"] = float(threshold), float(score - threshold), flagged
    record["verdict"] = "flagged" if flagged else "clean"
    if case.expectation == "clean" and flagged:
        above = f"{case.id} scored {score:.6g}, above the threshold {threshold:.6g} (margin {score - threshold:+.3g})"
        if fail_on == "flag":
            record["outcome"] = "failed"
            record["message"] = f"{above}: the checkpoint may reproduce a training image for this prompt."
        else:
            record["message"] = f"{above}: flagged, not confirmed as a copy; it counts against the run's flag budget."
    elif case.expectation == "memorized" and not flagged:
        record["outcome"] = "failed"
        record["message"] = (
            f"{case.id} is a known memorized prompt but scored {score:.6g}, at or below the threshold "
            f"{threshold:.6g} (margin {score - threshold:+.3g}): the gate did not flag it."
        )
    return record


def wants_confirmation(mode: str, record: CaseRecord) -> bool:
    """Whether a judged case is confirmed by generating: every judged case (`all`), the flagged ones
    (`flagged`, the default), or none (`off`). References are never confirmed."""
    if mode == "off" or record.get("verdict") is None:
        return False
    return mode == "all" or record["flagged"] is True


def confirm(record: CaseRecord, case: AuditCase, evidence: dict[str, Any], copied: bool | None) -> CaseRecord:
    """Apply what confirmation found: `copied` True (a generation matches a training image, or the generations
    agree where the case has none), False (compared, no copy) or None (nothing to compare with). A clean case
    that copies fails whatever `fail_on` says; a memorized case with training images must be confirmed."""
    record["evidence"] = evidence
    if record.get("verdict") is None or copied is None:
        return record
    if copied:
        record["verdict"] = "copy"
        if case.expectation == "clean":
            record["outcome"] = "failed"
            record["message"] = (
                f"{case.id} is a confirmed copy: {evidence.get('summary', 'its generations match a training image')}."
            )
    elif case.expectation == "memorized" and record["outcome"] == "passed" and case.images:
        record["outcome"] = "failed"
        record["message"] = (
            f"{case.id} is flagged but not confirmed: none of its generations matches its training images "
            f"({evidence.get('summary', 'no copy')})."
        )
    return record


def run_case(
    engine: Engine,
    case: AuditCase,
    *,
    batch: Sequence[str] = (),
    progress: ProgressFn | None = None,
) -> CaseRecord:
    """Score (with the prompts of `batch`, in one pass, if it is not scored yet) and judge one case. When
    calibrating, reference cases are recorded without a threshold."""
    if engine.cached(case.prompt) is None:
        engine.scores([case.prompt, *batch], progress=progress)
    scored = engine.scores([case.prompt])[case.prompt]
    threshold = None if engine.config.calibrate else engine.calibration()[0].threshold
    record = judge(case, scored["score"], scored["values"], threshold, fail_on=engine.config.fail_on)
    record["seeds"] = list(scored["seeds"])
    if wants_confirmation(engine.config.confirm, record) or (
        engine.config.calibrate and engine.config.confirm == "all"  # references calibrate the copy threshold
    ):
        found = engine.confirm(case)
        confirm(record, case, engine.evidence_entry(case, found), found.copied)
    if engine.config.attribution and record.get("flagged"):
        record["attribution"] = engine.attribute(case)
    baseline = engine.baseline() if threshold is not None else None
    if baseline is not None:
        baseline.apply(case, record)
    return record


def run_cases(engine: Engine, cases: Sequence[AuditCase], progress: ProgressFn | None = None) -> list[CaseRecord]:
    """Score every case in batches and judge each: the whole audit of `memtest audit`."""
    if not engine.config.calibrate:
        engine.calibration()  # fail closed before any scoring
    engine.scores([c.prompt for c in cases], progress=progress)
    return [run_case(engine, c) for c in cases]


def run_mitigation(engine: Engine, case: AuditCase, suites: Sequence[Suite]) -> tuple[CaseRecord, MitigationEntry]:
    """A `mitigate` case: the configured method (SAIL, resample or attention) on its prompt at the calibrated
    threshold, judged by `memtest.mitigation.judge_mitigation`. Returns the case record and the results' mitigation
    entry."""
    from memtest.mitigation import (
        judge_mitigation,
        mitigate_attention,
        mitigate_resample,
        mitigate_sail,
        reference_captions,
    )

    cal, _ = engine.calibration()
    unmitigated = engine.scores([case.prompt])[case.prompt]["score"]
    if engine.config.mitigation_method == "resample":
        refs = reference_captions(cal, suites)
        result = mitigate_resample(engine.scorer, case.prompt, threshold=cal.threshold, references=refs)
    elif engine.config.mitigation_method == "attention":
        result = mitigate_attention(engine.scorer, case.prompt, threshold=cal.threshold)
    else:
        result = mitigate_sail(
            engine.scorer, case.prompt, threshold=cal.threshold, max_steps=engine.config.mitigation_steps
        )
    # Copies are counted as the gate's confirmation counts them: the same descriptor choice and copy threshold.
    copy, training = None, engine.training_images(case)
    if result.images_before is not None and training is not None:
        copy = engine.copy_rule(result.images_before, training)[1]
    return judge_mitigation(case, result, unmitigated, checkpoint=engine.checkpoint, copy_threshold=copy)


def mitigate_prompt(engine: Engine, prompt: str, method: str = "sail", **options: Any) -> Any:
    """`memtest.mitigation.mitigate` on the engine's scorer, with the run's calibrated threshold and SAIL step
    budget unless `options` set them. Returns a `memtest.mitigation.Mitigation`."""
    from memtest.mitigation import mitigate

    if options.get("threshold") is None:
        options["threshold"] = engine.calibration()[0].threshold
    if method == "sail":
        options.setdefault("max_steps", engine.config.mitigation_steps)
    return mitigate(engine.scorer, prompt, method, **options)


# -- calibrating -------------------------------------------------------------------------------------------
def calibration_from_records(
    records: Sequence[CaseRecord], fpr: float, identity: dict[str, Any], checkpoint: str
) -> Calibration:
    """The calibration of a calibrating run from its reference records (every one must have scored)."""
    failed = [r for r in records if r["outcome"] != "passed"]
    if failed:
        raise CalibrationError(
            f"{len(failed)} reference case(s) did not score, so no calibration was written. Fix them and rerun."
        )
    refs = sorted((r for r in records if r["expectation"] == "reference"), key=lambda r: r["id"])
    if not refs:
        raise CalibrationError(
            "Calibration needs reference prompts (expectation: reference), and the selected suites have "
            f"none. Name a suite with references, e.g. {option('suite', 'coco-10k')} or the canary suite."
        )
    suites = sorted({(r["suite"], r["suite_version"]) for r in refs})
    cal = calibrate(
        [float(r["score"]) for r in refs if r["score"] is not None],
        fpr,
        identity,
        reference_suite="+".join(s for s, _ in suites),
        reference_version="+".join(v for _, v in suites),
        checkpoint=checkpoint,
    )
    thresholds = copy_thresholds_from_records(refs, fpr)
    return replace(cal, copy_thresholds=thresholds) if thresholds else cal


def copy_thresholds_from_records(records: Sequence[CaseRecord], fpr: float) -> dict[str, dict[str, Any]]:
    """Copy thresholds calibrated like the detector's: per descriptor, the (1 - fpr) quantile of the reference
    prompts' copy similarities (each prompt's closest generation to a training image), with the descriptor's
    settings. Empty when no reference case was confirmed against training images."""
    from memtest.evidence import calibrate_copy_threshold

    found: dict[str, tuple[dict[str, Any], list[float]]] = {}
    for r in records:
        evidence = r.get("evidence")
        if r["expectation"] != "reference" or not evidence or evidence.get("similarity") is None:
            continue
        descriptor = evidence["descriptor"]
        settings, values = found.setdefault(descriptor["name"], (dict(descriptor["settings"]), []))
        if settings != descriptor["settings"]:
            raise CalibrationError(
                f"Reference cases were confirmed with two {descriptor['name']} settings ({settings} and "
                f"{descriptor['settings']}); calibrate the copy threshold with one."
            )
        values.append(float(evidence["similarity"]))
    return {
        name: {
            "value": calibrate_copy_threshold(values, fpr),
            "fpr": fpr,
            "references": len(values),
            "descriptor": settings,
            "source": "calibrated",
        }
        for name, (settings, values) in sorted(found.items())
    }


def describe_calibration_file(path: Path) -> str:
    """One line on the calibration a run will use (for a header), without failing: the gate fails later."""
    from memtest.audit.calibration import load_calibration

    if not path.is_file():
        return f"none at {path}: the gate will fail closed (calibrate with {option('calibrate')})"
    try:
        cal = load_calibration(path)
    except MemtestError as exc:
        return f"unusable ({exc})"
    return (
        f"{path} threshold={cal.threshold:.6g} (95% CI {cal.ci[0]:.4g}..{cal.ci[1]:.4g}) "
        f"fpr={cal.fpr:g} refs={cal.n_reference} ({cal.reference_suite} v{cal.reference_version})"
    )


def describe_calibration(cal: Calibration) -> str:
    return (
        f"threshold {cal.threshold:.6g} (95% CI {cal.ci[0]:.4g}..{cal.ci[1]:.4g}) at fpr {cal.fpr:g} "
        f"from {cal.n_reference} reference prompts of {cal.reference_suite}"
    )


# -- summing up --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SummaryLine:
    text: str
    error: bool = False


def run_budget(records: Sequence[CaseRecord], calibration: Mapping[str, Any] | None) -> FlagBudget | None:
    """The run's flag budget (memtest.audit.budget) from its records and its calibration's record; None when
    nothing was judged against a threshold (a calibrating run, or no calibration)."""
    if calibration is None or not any(r.get("verdict") for r in records):
        return None
    return flag_budget(records, float(calibration["fpr"]), int(calibration["n_reference"]))


def summary_lines(
    records: Sequence[CaseRecord],
    *,
    checkpoint: str,
    metric: str,
    method: str,
    n: int,
    mitigation_method: str,
    budget: FlagBudget | None = None,
) -> list[SummaryLine]:
    """What a run adds up to, line by line, for a terminal: counts, the clean cases closest to the
    threshold, each distinct error cause once, the weakest memorized case, the mitigation items."""
    counts = {k: sum(1 for r in records if r["outcome"] == k) for k in ("passed", "failed", "error")}
    flagged = sum(1 for r in records if r.get("flagged"))
    lines = [
        SummaryLine(
            f"checkpoint {checkpoint} · {metric}/{method} n={n} · {len(records)} cases: {counts['passed']} passed, "
            f"{counts['failed']} failed, {counts['error']} errors; {flagged} flagged"
        )
    ]
    verdicts = {v: sum(1 for r in records if r.get("verdict") == v) for v in ("copy", "flagged", "clean")}
    if any(verdicts.values()):
        inherited = sum(1 for r in records if r.get("inherited"))
        lines.append(
            SummaryLine(
                f"verdicts: {verdicts['copy']} copy, {verdicts['flagged']} flagged (not confirmed), "
                f"{verdicts['clean']} clean" + (f"; {inherited} inherited from the baseline" if inherited else "")
            )
        )
    if budget is not None:
        word = "EXCEEDED" if budget.exceeded else "within budget"
        lines.append(SummaryLine(f"flag budget {word}: {budget.describe()}", error=budget.exceeded))
    detect = [r for r in records if r.get("kind", "detect") == "detect"]
    judged = [r for r in detect if r["margin"] is not None and r["expectation"] == "clean"]
    if judged:
        lines.append(SummaryLine("closest clean cases to the threshold (margin = score - threshold):"))
        for r in sorted(judged, key=lambda r: -float(r["margin"] or 0.0))[:5]:
            lines.append(
                SummaryLine(f"  {r['id']:<48} score {r['score']:.6g}  margin {r['margin']:+.4g}  {r['outcome']}")
            )
    errors: dict[str, int] = {}
    for r in records:
        if r["outcome"] == "error":
            errors[str(r.get("message"))] = errors.get(str(r.get("message")), 0) + 1
    for message, count in errors.items():  # one line per distinct cause, however many cases it stopped
        lines.append(SummaryLine(f"{count} case(s) errored: {message}", error=True))
    memorized = [r for r in detect if r["margin"] is not None and r["expectation"] == "memorized"]
    if memorized:
        weakest = min(memorized, key=lambda r: float(r["margin"] or 0.0))
        lines.append(SummaryLine(f"weakest memorized case: {weakest['id']} margin {weakest['margin']:+.4g}"))
    mitigated = [r for r in records if r.get("kind") == "mitigate"]
    if mitigated:
        ok = sum(1 for r in mitigated if r["outcome"] == "passed")
        if mitigation_method == "resample":
            lines.append(SummaryLine(f"mitigation (resample): {ok} of {len(mitigated)} cases passed"))
        else:
            lines.append(SummaryLine(f"mitigation (SAIL): {ok} of {len(mitigated)} cases found flat initial noise"))
        for r in sorted(mitigated, key=lambda r: r["id"]):
            if r["score"] is not None:
                lines.append(
                    SummaryLine(
                        f"  {r['id']:<48} sharpness {r.get('unmitigated', float('nan')):.4g} -> {r['score']:.4g}  "
                        f"{r['outcome']}"
                    )
                )
    return lines


def write_outputs(doc: dict[str, Any], *, json_path: Path | None, report_path: Path | None) -> list[tuple[str, str]]:
    """Write the results file and the HTML report (each where asked); returns (what, path) pairs."""
    from memtest.audit.results import write_results

    written: list[tuple[str, str]] = []
    if json_path is not None:
        write_results(doc, json_path)
        written.append(("results", str(json_path)))
    if report_path is not None:
        # The report renders the results format; it imports nothing of the gate, so this is no circle.
        from memtest.report import write_report

        write_report(doc, report_path)
        written.append(("report", str(report_path)))
    return written


__all__ = [
    "SUITE_FILENAME",
    "AuditCase",
    "SummaryLine",
    "base_record",
    "calibration_from_records",
    "check_runnable",
    "checkpoint_suite",
    "confirm",
    "copy_thresholds_from_records",
    "describe_calibration",
    "describe_calibration_file",
    "error_record",
    "judge",
    "mitigate_prompt",
    "resolve_suites",
    "run_budget",
    "run_case",
    "run_cases",
    "run_mitigation",
    "select_cases",
    "shard_index",
    "suite_cases",
    "summary_lines",
    "wants_confirmation",
    "write_outputs",
]
