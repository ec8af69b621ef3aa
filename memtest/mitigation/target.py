"""A checkpoint as a mitigation target, shared by SAIL and the baselines: its scorer, the acceptance
threshold (calibrated, or the median of its references), the first step's conditioning and start point,
and the unmitigated images."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from memtest.errors import MitigationError, option
from memtest.evidence.generation import generate_images
from memtest.models.families.base import Cond

if TYPE_CHECKING:
    from memtest.detection.scoring import Scorer
    from memtest.models.checkpoint import Checkpoint


def as_scorer(target: Scorer | Checkpoint | str | Path) -> Scorer:
    """`target` as a `Scorer`: itself, or a default-settings scorer of the checkpoint (loaded from a path)."""
    from memtest.detection.scoring import Scorer
    from memtest.models.checkpoint import Checkpoint, load_checkpoint

    if isinstance(target, Scorer):
        return target
    ckpt = target if isinstance(target, Checkpoint) else load_checkpoint(target)
    return Scorer(ckpt)


def resolve_threshold(scorer: Scorer, threshold: float | None) -> float:
    """`threshold` if given, else the checkpoint's own calibrated sharpness threshold (checked to match)."""
    if threshold is not None:
        if not math.isfinite(threshold):
            raise MitigationError(f"The acceptance threshold must be a finite number, got {threshold!r}.")
        return float(threshold)
    from memtest.audit.calibration import CALIBRATION_FILENAME, checkpoint_calibration

    ckpt = scorer.ckpt
    cal, _ = checkpoint_calibration(
        scorer.identity(),
        ckpt.path,
        missing=f"Checkpoint {ckpt.name} has no {CALIBRATION_FILENAME}, so SAIL has no acceptance threshold. Pass "
        f"threshold= (for example a calibration's threshold), or calibrate first ({option('calibrate')}).",
        error=MitigationError,
    )
    _check_sharpness_settings(scorer)
    return float(cal.threshold)


def reference_threshold(scorer: Scorer, quantile: float = 0.5) -> float:
    """A stricter acceptance threshold: the `quantile` of the checkpoint's calibration reference scores.

    The detection threshold is the sharpness of the sharpest non-memorized prompts (its 1 - fpr quantile);
    the median asks SAIL for a landscape as flat as a typical non-memorized prompt's. On a canary whose
    planted captions reproduce their image from every x_T, only the stricter one moves the image away.
    """
    from memtest.audit.calibration import CALIBRATION_FILENAME, checkpoint_calibration

    if not 0.0 <= quantile <= 1.0:
        raise MitigationError(f"quantile must be in [0, 1], got {quantile!r}.")
    cal, _ = checkpoint_calibration(
        scorer.identity(),
        scorer.ckpt.path,
        missing=f"Checkpoint {scorer.ckpt.name} has no {CALIBRATION_FILENAME} to take reference scores from.",
        error=MitigationError,
    )
    _check_sharpness_settings(scorer)
    return float(np.quantile(np.asarray(cal.reference_scores, dtype=np.float64), quantile))


def _check_sharpness_settings(scorer: Scorer) -> None:
    s = scorer.settings
    if s.metric != "sharpness" or s.steps != 1:
        raise MitigationError(
            f"Mitigation accepts on first-step sharpness, but the scorer measures {s.metric} over {s.steps} "
            "step(s), so its calibrated threshold does not apply. Score with metric=sharpness, steps=1, or pass "
            "a sharpness threshold explicitly."
        )


def first_step(scorer: Scorer, prompt: str) -> tuple[int, Cond, Cond]:
    """The detector's first timestep, the prompt's conditioning and the unconditional one (one row each)."""
    t = scorer.timesteps[0]
    return t, scorer.embed([prompt]), scorer.null()


def seed_images(
    scorer: Scorer, prompt: str, latents: torch.Tensor, guidance_scale: float, steps: int | None
) -> tuple[np.ndarray, float]:
    """The checkpoint's own generations of `prompt` from `latents` (default: the scorer's inference steps), and
    the seconds they took."""
    started = time.perf_counter()
    images = generate_images(
        scorer.ckpt,
        latents,
        prompt=prompt,
        guidance_scale=guidance_scale,
        num_inference_steps=steps or scorer.settings.num_inference_steps,
    )
    return images, time.perf_counter() - started
