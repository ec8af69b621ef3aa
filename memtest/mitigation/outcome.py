"""What a mitigation did (`Mitigation`, whatever the method; the methods' own results beside it) and how a suite
case judges it: the `[mitigate]` item's record, `mitigate: copy`'s rule, the copy statistics on a canary.

The judge asks a method's result (`MethodResult`) how to judge it, never the method's name: whether it accepts on
the detector's threshold, what it accepted and tried. A `Mitigation` without one (the prompt baselines) is
judged on its sharpness alone, reported and not judged."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from memtest.audit.records import CaseRecord, MitigationEntry
from memtest.errors import MitigationError
from memtest.evidence.images import THUMBNAIL_SIZE, png_thumbnails
from memtest.mitigation.images import copy_reference

if TYPE_CHECKING:
    from memtest.evidence import CopyThreshold
    from memtest.models.checkpoint import Checkpoint


class MethodResult(Protocol):
    """What `judge_mitigation` and `Mitigation.record` ask of a method's own result (`Mitigation.result`)."""

    @property
    def label(self) -> str:
        """How messages name the method ("SAIL")."""
        ...

    @property
    def accepts_on_threshold(self) -> bool:
        """Whether the method accepts an x_T on the detector's threshold: then every accepted x_T must be below
        it and their mean below the unmitigated score, and the case record has a margin. Otherwise the sharpness
        after is reported, not judged."""
        ...

    @property
    def final_sharpness(self) -> tuple[float, ...]:
        """The sharpness each candidate reached at the end (the score when nothing was accepted), or ()."""
        ...

    @property
    def accepted_seeds(self) -> tuple[int, ...]:
        """The seeds of the accepted x_T, in order."""
        ...

    @property
    def seeds_tried(self) -> tuple[int, ...]:
        """Every seed the method drew an x_T from, in order."""
        ...


@dataclass(frozen=True)
class AcceptedLatent:
    """One accepted initial noise: an independent tensor, its seed, and its sharpness before and after."""

    seed: int
    latent: torch.Tensor
    sharpness_before: float  # at the seed's own x_T, before any step
    sharpness_after: float  # at `latent`, where the candidate was accepted
    steps: int  # this candidate's own optimisation steps


@dataclass(frozen=True)
class SailResult:
    """What `sail` found. `succeeded` is False (with `reason`) when the step budget ran out first."""

    accepted: tuple[AcceptedLatent, ...]
    wanted: int
    steps: int  # optimisation steps of the batch
    seeds_tried: tuple[int, ...]  # every seed a candidate started from, in order; no repeats
    succeeded: bool
    reason: str
    threshold: float
    initial_sharpness: dict[int, float]  # sharpness of every tried seed's x_T that was measured
    history: tuple[tuple[float, ...], ...]  # per step: each slot's loss L(x) before the step (nan: no step)
    final_sharpness: tuple[float, ...] = ()  # every slot's sharpness at the last check
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    evaluations: int = 0  # calls of s_delta
    rows_evaluated: int = 0  # rows through s_delta (forward), the cost in units of one x
    checks: int = 0  # exact sharpness measurements of single candidates

    @property
    def latents(self) -> torch.Tensor:
        """The accepted latents stacked, (k, ...), k = len(accepted) (<= wanted)."""
        if not self.accepted:
            raise MitigationError(f"SAIL accepted no latent: {self.reason}")
        return torch.stack([a.latent for a in self.accepted])

    @property
    def sharpness_before(self) -> list[float]:
        return [a.sharpness_before for a in self.accepted]

    @property
    def sharpness_after(self) -> list[float]:
        return [a.sharpness_after for a in self.accepted]

    # As a MethodResult: SAIL accepts a candidate once the detector's own sharpness is below the threshold.
    @property
    def label(self) -> str:
        return "SAIL"

    @property
    def accepts_on_threshold(self) -> bool:
        return True

    @property
    def accepted_seeds(self) -> tuple[int, ...]:
        return tuple(a.seed for a in self.accepted)


@dataclass(frozen=True)
class ResampleResult:
    """What `mitigate_resample` screened: the draws it accepted and every draw, in order. It accepts on the
    trajectory magnitude (its own level), not on the detector's threshold."""

    accepted_seeds: tuple[int, ...]
    seeds_tried: tuple[int, ...]

    @property
    def label(self) -> str:
        return "resample"

    @property
    def accepts_on_threshold(self) -> bool:
        return False

    @property
    def final_sharpness(self) -> tuple[float, ...]:
        return ()


@dataclass(frozen=True)
class Mitigation:
    """One prompt's mitigation on a checkpoint, whatever the method.

    `result` is the method's own result where it has one (`SailResult`, `ResampleResult`; the judge asks it how
    to judge the method). `sharpness_before` are the detector's per-generation values at the original seeds' x_T;
    `sharpness_after` are measured the same way on what the method changed: SAIL at the accepted x_T,
    the prompt baselines at the original x_T under the new prompt or embedding. Images are (n, H, W, 3)
    in [0, 1]: `images_before` from the original seeds and prompt (unmitigated), `images_after` the
    mitigated generations. `seconds` is the mitigation alone; `generation_seconds` one full generation of
    the n unmitigated images, measured in the same run (the cost ratio is their quotient).
    """

    method: str
    prompt: str
    threshold: float
    succeeded: bool
    reason: str
    seeds: tuple[int, ...]
    sharpness_before: tuple[float, ...]
    sharpness_after: tuple[float, ...]
    latents_before: torch.Tensor
    latents_after: torch.Tensor | None
    prompt_after: str | None = None
    steps: int | None = None
    seconds: float = 0.0
    images_before: np.ndarray | None = None
    images_after: np.ndarray | None = None
    generation_seconds: float | None = None
    result: MethodResult | None = None
    embedding_after: torch.Tensor | None = None
    details: dict[str, Any] = field(default_factory=dict)
    # On a canary that plants the prompt: `CopyReference.stats` of the images before and after ({"distance",
    # "similarity", "threshold", "copies", "images", "rate"}; copies and rate None without a copy threshold).
    copy_before: dict[str, Any] | None = None
    copy_after: dict[str, Any] | None = None

    @property
    def cost_ratio(self) -> float | None:
        """Mitigation time over the time of one full generation of the same n images."""
        if not self.generation_seconds:
            return None
        return self.seconds / self.generation_seconds

    @property
    def sail(self) -> SailResult | None:
        """SAIL's own result (None for another method)."""
        return self.result if isinstance(self.result, SailResult) else None

    @property
    def accepts_on_threshold(self) -> bool:
        """Whether the method accepts on the detector's threshold (`MethodResult.accepts_on_threshold`)."""
        return self.result is not None and self.result.accepts_on_threshold

    @property
    def accepted_seeds(self) -> tuple[int, ...]:
        """The seeds of the accepted x_T (the original seeds for a method that keeps them)."""
        return tuple(self.result.accepted_seeds) if self.result is not None else tuple(self.seeds)

    @property
    def seeds_tried(self) -> tuple[int, ...]:
        """Every seed the method drew an x_T from, in order (none for a method that keeps the original x_T)."""
        return tuple(self.result.seeds_tried) if self.result is not None else ()

    def record(
        self,
        id: str,
        *,
        copy_distance_before: float | None = None,
        copy_distance_after: float | None = None,
        thumbnail_size: int = THUMBNAIL_SIZE,
    ) -> MitigationEntry:
        """The results document's `mitigation` entry (plain JSON types; images as small base64 PNGs)."""
        before, after = self.images_before, self.images_after
        return {
            "id": id,
            "prompt": self.prompt,
            "method": self.method,
            "threshold": float(self.threshold),
            "succeeded": bool(self.succeeded),
            "reason": self.reason,
            "steps": self.steps,
            "seeds": [int(s) for s in self.seeds],
            "seeds_tried": [int(s) for s in self.seeds_tried],
            "prompt_after": self.prompt_after,
            "sharpness_before": [float(v) for v in self.sharpness_before],
            "sharpness_after": [float(v) for v in self.sharpness_after],
            "images_before": png_thumbnails(before, thumbnail_size) if before is not None else [],
            "images_after": png_thumbnails(after, thumbnail_size) if after is not None else [],
            "copy_distance_before": None if copy_distance_before is None else float(copy_distance_before),
            "copy_distance_after": None if copy_distance_after is None else float(copy_distance_after),
            "seconds": float(self.seconds),
            "generation_seconds": None if self.generation_seconds is None else float(self.generation_seconds),
            "copy_before": self.copy_before,
            "copy_after": self.copy_after,
        }


def judge_mitigation(
    case: Any,
    mitigation: Mitigation,
    unmitigated: float,
    *,
    checkpoint: Checkpoint | None = None,
    copy_threshold: CopyThreshold | None = None,
) -> tuple[CaseRecord, MitigationEntry]:
    """A `mitigate` case record and the results' `mitigation` entry for a suite case (an `AuditCase`).

    The case passes when the method succeeded and, for a method that accepts on the detector's threshold (its
    result says so: SAIL), every accepted x_T is below the threshold and their mean sharpness is below
    `unmitigated` (the detector's score of the prompt); `resample` accepts on its own level and the prompt
    baselines keep the x_T, so for them the sharpness after is reported, not judged. On a canary `checkpoint` whose
    manifest plants the prompt, the entry also carries the copies among the images before and after, counted as
    the gate's confirmation counts them (`CopyReference`, with `copy_threshold`, by default the checkpoint's own
    calibrated one), and their mean RMSE to the memorised training image as the checkpoint's VAE reproduces it
    (`vae_roundtrip`). A case with `mitigate: copy` must also pass `judge_copy` (the copy leaves); without a copy
    reference and threshold for the prompt it fails, naming the suite file, the case and the fix. Its record and
    entry get `copy_required: true` and `copy_verdict` ("passed" or "failed").
    """
    after = [float(v) for v in mitigation.sharpness_after]
    thr = float(mitigation.threshold)
    method = mitigation.result
    # With nothing accepted, the score is the lowest sharpness any candidate reached at the end.
    final = [v for v in (method.final_sharpness if method is not None else ()) if math.isfinite(v)]
    score = sum(after) / len(after) if after else min(final, default=float(unmitigated))
    problems = []
    # A method that accepts on the detector's sharpness (SAIL) must land below the threshold and the unmitigated
    # score; one that accepts on its own level (resample) or keeps the x_T only reports the sharpness after.
    on_threshold = mitigation.accepts_on_threshold
    if not mitigation.succeeded:
        label = method.label if method is not None else mitigation.method
        problems.append(f"{label} did not finish: {mitigation.reason}")
    above = [v for v in after if not v < thr]
    if above and on_threshold:
        problems.append(f"{len(above)} accepted x_T at or above the threshold {thr:.6g}: {above}")
    if not after:
        problems.append("no latent was accepted")
    elif not score < unmitigated and on_threshold:
        problems.append(f"mean sharpness after {score:.6g} is not below the unmitigated {unmitigated:.6g}")
    record: CaseRecord = {
        "id": f"{case.id}[mitigate]",
        "suite": case.suite,
        "suite_version": case.suite_version,
        "case_id": case.case_id,
        "kind": "mitigate",
        "prompt": case.prompt,
        "expectation": case.expectation,
        "tags": list(case.tags),
        "score": score,
        "values": after,
        "seeds": [int(s) for s in mitigation.accepted_seeds],
        "threshold": thr,
        "margin": score - thr if on_threshold else None,  # a method judged on another rule has no margin
        "flagged": None,
        "unmitigated": float(unmitigated),
        "outcome": "failed" if problems else "passed",
        "message": (
            f"{case.id}: mitigation ({mitigation.method}) failed: " + "; ".join(problems)
            if problems
            else f"{case.id}: {len(after)} flat x_T found in {mitigation.steps} step(s), mean sharpness "
            f"{unmitigated:.6g} -> {score:.6g} (threshold {thr:.6g})"
            if on_threshold
            else f"{case.id}: {mitigation.method}: {mitigation.reason}; mean sharpness {unmitigated:.6g} -> "
            f"{score:.6g} (threshold {thr:.6g}, reported only)"
        ),
    }
    if checkpoint is not None and mitigation.copy_before is None:
        mitigation = with_copy_stats(mitigation, checkpoint, copy_threshold)
    cb, ca = mitigation.copy_before, mitigation.copy_after
    before_d = None if cb is None else float(cb["distance"])
    after_d = None if ca is None else float(ca["distance"])
    if cb is not None:
        record["copy_before"], record["copy_after"] = cb, ca
        record["message"] += "; " + describe_copies(cb, ca)
    entry = mitigation.record(case.id, copy_distance_before=before_d, copy_distance_after=after_d)
    if copy_required(case):
        problem = _copy_problem(case, mitigation, checkpoint)
        verdict = "failed" if problem else "passed"
        record["copy_required"] = entry["copy_required"] = True
        record["copy_verdict"] = entry["copy_verdict"] = verdict
        if problem:
            if not problems:
                record["message"] = f"{case.id}: mitigation ({mitigation.method}) failed: {problem}"
            else:
                record["message"] += f"; and {problem}"
            record["outcome"] = "failed"
        else:
            record["message"] += f"; the copy left ({COPY_RULE})"
    return record, entry


#: The rule of `mitigate: copy` (memtest.audit.suites), as the messages state it.
COPY_RULE = "copies after at most half the copies before, as rates"


def copy_required(case: Any) -> bool:
    """Whether a suite case (a `SuiteCase` or an `AuditCase`) says `mitigate: copy`: the copy must leave."""
    return getattr(case, "mitigate", False) == "copy"


def judge_copy(before: dict[str, Any] | None, after: dict[str, Any] | None) -> str | None:
    """Why the copy did not leave, or None when it did, from `CopyReference.stats` of the images before and after.

    The rule of `mitigate: copy`: copies must be counted (a copy threshold), at least one of the
    unmitigated images must be a copy, and the copy rate of the mitigated images (SAIL: those from the accepted
    x_T) must be at most half the rate before: 4/4 -> 2/4 passes, 4/4 -> 3/4 fails, 1/4 -> 0/4 passes,
    4/4 -> 1/2 (two accepted) passes, 4/4 -> 2/3 fails.
    """
    if before is None:
        return "no copy reference: the checkpoint plants no image for this prompt"
    if before.get("copies") is None:
        return "copies are not counted: the checkpoint's calibration has no copy threshold"
    n_before, c_before = int(before["images"]), int(before["copies"])
    if c_before == 0:
        return f"nothing to remove: 0/{n_before} generations copy before mitigation"
    if after is None or not after.get("images"):
        return f"copies {c_before}/{n_before} before and no mitigated image to count copies in"
    n_after, c_after = int(after["images"]), int(after["copies"])
    if 2 * c_after * n_before > c_before * n_after:
        allowed = (c_before * n_after) // (2 * n_before)
        return (
            f"the copy did not leave: copies {c_before}/{n_before} -> {c_after}/{n_after}, "
            f"more than half the rate before (at most {allowed}/{n_after} allowed)"
        )
    return None


def _copy_problem(case: Any, mitigation: Mitigation, checkpoint: Checkpoint | None) -> str | None:
    """`judge_copy` with a message that names the suite file, the case and the fix where the case cannot be judged."""
    source = getattr(case, "source", None) or getattr(case, "suite", "the suite")
    line = getattr(case, "line", None)
    where = f"{source}{f', line {line}' if line else ''}, case '{getattr(case, 'case_id', case)}'"
    fix = f"use mitigate: true in {where}"
    before, after = mitigation.copy_before, mitigation.copy_after
    name = "the checkpoint" if checkpoint is None else checkpoint.name
    if before is None:
        if mitigation.images_before is None:
            return f"mitigate: copy needs the unmitigated images to count copies in ({where}); generate them"
        if checkpoint is None:
            return f"mitigate: copy needs the checkpoint to count copies on ({where}); pass checkpoint="
        return (
            f"mitigate: copy needs a checkpoint whose manifest plants this prompt (a copy reference); "
            f"{name} plants no image for {mitigation.prompt!r}: {fix}"
        )
    if before.get("copies") is None:
        return (
            f"mitigate: copy needs a copy threshold for {name} to count copies (copy_thresholds in its "
            f"calibration, added by scripts/calibrate_copy.py): add it, or {fix}"
        )
    problem = judge_copy(before, after)
    if problem is not None and before.get("copies") == 0:
        problem += f": the prompt does not copy on this checkpoint; {fix}"
    return problem


def describe_copies(before: dict[str, Any], after: dict[str, Any] | None) -> str:
    """ "copies 4/4 -> 1/4, RMSE to the memorised image 0.09 -> 0.21" (copies only with a copy threshold)."""

    def count(c: dict[str, Any] | None) -> str:
        return "-" if c is None or c["copies"] is None else f"{c['copies']}/{c['images']}"

    dist = "-" if after is None else f"{after['distance']:.3f}"
    head = "" if before["copies"] is None else f"copies {count(before)} -> {count(after)}, "
    return f"{head}RMSE to the memorised image {before['distance']:.3f} -> {dist}"


def with_copy_stats(m: Mitigation, checkpoint: Checkpoint | None, threshold: CopyThreshold | None = None) -> Mitigation:
    """`m` with `copy_before` / `copy_after` filled in when `checkpoint` is a canary that plants the prompt, copies
    counted against `threshold` (default: the checkpoint's own calibrated copy threshold, `copy_reference`)."""
    if checkpoint is None or m.images_before is None:
        return m
    ref = copy_reference(checkpoint, m.prompt, threshold)
    if ref is None:
        return m
    import dataclasses

    return dataclasses.replace(m, copy_before=ref.stats(m.images_before), copy_after=ref.stats(m.images_after))
