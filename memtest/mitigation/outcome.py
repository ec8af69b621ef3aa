"""What a mitigation did (`Mitigation`, whatever the method) and how a suite case judges it: the
`[mitigate]` item's record, `mitigate: copy`'s rule, the copy statistics on a canary."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from memtest.mitigation.images import COPY_FILENAME, THUMBNAIL_SIZE, copy_reference, png_thumbnails

if TYPE_CHECKING:
    from memtest.mitigation.sail import (
        SailResult,  # sail.py builds Mitigation records: a runtime import would be circular
    )
    from memtest.models.checkpoint import Checkpoint


@dataclass(frozen=True)
class Mitigation:
    """One prompt's mitigation on a checkpoint, whatever the method.

    `sharpness_before` are the detector's per-generation values at the original seeds' x_T;
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
    sail: SailResult | None = None
    embedding_after: torch.Tensor | None = None
    details: dict[str, Any] = field(default_factory=dict)
    # On a canary that plants the prompt: `CopyReference.stats` of the images before and after
    # ({"distance", "copies", "images", "rate"}; copies and rate None without a recorded boundary).
    copy_before: dict[str, Any] | None = None
    copy_after: dict[str, Any] | None = None

    @property
    def cost_ratio(self) -> float | None:
        """Mitigation time over the time of one full generation of the same n images."""
        if not self.generation_seconds:
            return None
        return self.seconds / self.generation_seconds

    def _seeds_tried(self) -> Sequence[int]:
        """SAIL's candidates, or the draws another x_T method screened (`details["seeds_tried"]`), in order."""
        return self.sail.seeds_tried if self.sail is not None else self.details.get("seeds_tried", ())

    def record(
        self,
        id: str,
        *,
        copy_distance_before: float | None = None,
        copy_distance_after: float | None = None,
        thumbnail_size: int = THUMBNAIL_SIZE,
    ) -> dict[str, Any]:
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
            "seeds_tried": [int(s) for s in self._seeds_tried()],
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
    case: Any, mitigation: Mitigation, unmitigated: float, *, checkpoint: Checkpoint | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A `mitigate` case record and the results' `mitigation` entry for a suite case (an `AuditCase`).

    The case passes when the method succeeded and, for SAIL, every accepted x_T is below the threshold and their
    mean sharpness is below `unmitigated` (the detector's score of the prompt); `resample` accepts on its own
    level, so for it the sharpness after is reported, not judged. On a canary `checkpoint` whose
    manifest plants the prompt, the entry also carries the mean RMSE of the images before and after to the
    memorised training image as the checkpoint's VAE reproduces it (`vae_roundtrip`). A case with
    `mitigate: copy` must also pass `judge_copy` (the copy leaves); without a copy reference and boundary for
    the prompt it fails, naming the suite file, the case and the fix. Its record and entry get
    `copy_required: true` and `copy_verdict` ("passed" or "failed").
    """
    after = [float(v) for v in mitigation.sharpness_after]
    thr = float(mitigation.threshold)
    # With nothing accepted, the score is the lowest sharpness any candidate reached at the end.
    final = [v for v in (mitigation.sail.final_sharpness if mitigation.sail else ()) if math.isfinite(v)]
    score = sum(after) / len(after) if after else min(final, default=float(unmitigated))
    problems = []
    # SAIL accepts on the detector's sharpness, so it must land below the threshold and the unmitigated score;
    # resample accepts on the trajectory magnitude (its own level), and the sharpness after is only reported.
    sail_rule = mitigation.method == "sail"
    if not mitigation.succeeded:
        problems.append(f"{'SAIL' if sail_rule else mitigation.method} did not finish: {mitigation.reason}")
    above = [v for v in after if not v < thr]
    if above and sail_rule:
        problems.append(f"{len(above)} accepted x_T at or above the threshold {thr:.6g}: {above}")
    if not after:
        problems.append("no latent was accepted")
    elif not score < unmitigated and sail_rule:
        problems.append(f"mean sharpness after {score:.6g} is not below the unmitigated {unmitigated:.6g}")
    record: dict[str, Any] = {
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
        "seeds": (
            [a.seed for a in mitigation.sail.accepted]
            if mitigation.sail is not None
            else [int(s) for s in mitigation.details.get("accepted_seeds", mitigation.seeds)]
        ),
        "threshold": thr,
        "margin": score - thr if sail_rule else None,  # resample does not accept on the threshold
        "flagged": None,
        "unmitigated": float(unmitigated),
        "outcome": "failed" if problems else "passed",
        "message": (
            f"{case.id}: mitigation ({mitigation.method}) failed: " + "; ".join(problems)
            if problems
            else f"{case.id}: {len(after)} flat x_T found in {mitigation.steps} step(s), mean sharpness "
            f"{unmitigated:.6g} -> {score:.6g} (threshold {thr:.6g})"
            if sail_rule
            else f"{case.id}: {mitigation.method}: {mitigation.reason}; mean sharpness {unmitigated:.6g} -> "
            f"{score:.6g} (threshold {thr:.6g}, reported only)"
        ),
    }
    if checkpoint is not None and mitigation.copy_before is None:
        mitigation = with_copy_stats(mitigation, checkpoint)
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

    The rule of `mitigate: copy`: copies must be counted (a recorded copy boundary), at least one of the
    unmitigated images must be a copy, and the copy rate of the mitigated images (SAIL: those from the accepted
    x_T) must be at most half the rate before: 4/4 -> 2/4 passes, 4/4 -> 3/4 fails, 1/4 -> 0/4 passes,
    4/4 -> 1/2 (two accepted) passes, 4/4 -> 2/3 fails.
    """
    if before is None:
        return "no copy reference: the checkpoint plants no image for this prompt"
    if before.get("copies") is None:
        return "copies are not counted: the checkpoint records no copy boundary"
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
            f"mitigate: copy needs the copy boundary of {name} ({COPY_FILENAME} in its folder, "
            f"written by scripts/train_mixture_canary.py --finish) to count copies: add it, or {fix}"
        )
    problem = judge_copy(before, after)
    if problem is not None and before.get("copies") == 0:
        problem += f": the prompt does not copy on this checkpoint; {fix}"
    return problem


def describe_copies(before: dict[str, Any], after: dict[str, Any] | None) -> str:
    """ "copies 4/4 -> 1/4, RMSE to the memorised image 0.09 -> 0.21" (copies only with a recorded boundary)."""

    def count(c: dict[str, Any] | None) -> str:
        return "-" if c is None or c["copies"] is None else f"{c['copies']}/{c['images']}"

    dist = "-" if after is None else f"{after['distance']:.3f}"
    head = "" if before["copies"] is None else f"copies {count(before)} -> {count(after)}, "
    return f"{head}RMSE to the memorised image {before['distance']:.3f} -> {dist}"


def with_copy_stats(m: Mitigation, checkpoint: Checkpoint | None) -> Mitigation:
    """`m` with `copy_before` / `copy_after` filled in when `checkpoint` is a canary that plants the prompt."""
    if checkpoint is None or m.images_before is None:
        return m
    ref = copy_reference(checkpoint, m.prompt)
    if ref is None:
        return m
    import dataclasses

    return dataclasses.replace(m, copy_before=ref.stats(m.images_before), copy_after=ref.stats(m.images_after))
