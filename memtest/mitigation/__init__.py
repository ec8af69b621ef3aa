"""Inference-time mitigation of memorization (SPEC.md §4): SAIL, and the baselines it is compared with.

SAIL (sharpness-aware initialization for latent diffusion, Jeon et al., ICML 2025) keeps the prompt and
the weights and chooses the initial noise x_T instead: memorization shows as a sharp landscape at the
first sampling step, and a deterministic sampler maps x_T one-to-one to the image, so an x_T where the
landscape is flat gives an image that is not the memorized one. memtest follows the paper, not the
published code:

    L(x) = ‖s_Δ(x + δ s_Δ(x)) − s_Δ(x)‖² + α ‖x‖²

- the probe direction s_Δ(x) is re-evaluated at the current x every step (and differentiated through);
- squared norms, as written (the first term is a finite-difference form of δ² ‖H_Δ s_Δ‖²);
- a batch of B candidates optimised in parallel with Adam (lr 0.05), each candidate with its own Adam
  state, so restarting one does not disturb the others;
- a candidate is accepted once its sharpness ‖H_Δ s_Δ‖², measured exactly as the detector measures it
  (same method and finite-difference step), falls below the acceptance threshold (default: the
  checkpoint's calibrated detection threshold); accepted latents are stored as independent copies;
- candidates that are not accepted after `restart_after` steps restart from fresh seeds that never
  repeat; the whole run stops at a step budget, and running out of it is a reported outcome
  (`succeeded=False` with a reason), not an exception.

Scale-dependent defaults (SPEC.md §4: the paper's α = 0.05 and loss thresholds belong to SD's latent size):

- δ: the detector's finite-difference step divided by the median ‖s_Δ‖ of the first candidates, so the
  probe point x + δ s_Δ(x) lies as far from x as the detector's own probes
  (`memtest.detection.metrics.DEFAULT_FD_H` · √d) and the first term is δ² ‖H_Δ s_Δ‖² to the detector's accuracy.
- α: chosen so that on the Gaussian shell (‖x‖² = d σ₀², σ₀ = init_noise_sigma) the norm term equals
  `ALPHA_RATIO` (0.1) times the first term at the acceptance threshold τ:
  α = ALPHA_RATIO · δ² τ / (d σ₀²). The norm term then never dominates while a candidate is still sharper
  than the threshold (α = 0.01 on a 1,024-dimensional model swamped a sharpness of 1e-2 and collapsed x
  toward 0), yet it still penalises drifting off the shell.
- `renormalize=True` instead projects every candidate back onto the shell ‖x‖ = √d σ₀ after each step.

`sail` is model-agnostic: it takes any batched callable x -> s_Δ(x) (closed-form models test it).
`mitigate` runs SAIL or another method on a checkpoint through `memtest.detection.scoring.Scorer` and generates the
images before and after through the checkpoint's own pipeline. Trajectory resampling (`resample`,
`memtest.mitigation.resample`) also chooses x_T but does not move it: it keeps ordinary draws whose
trajectory, a few sampler steps in, is no more text-driven than ordinary captions'. Baselines with the same interface:
random token addition (`rta`) and random number addition (`rna`) to the prompt (Somepalli et al., 2023),
and prompt-embedding optimisation of the first-step score-difference norm ‖ε_c − ε_0‖ (`embedding`,
Wen et al., ICLR 2024), and Ren et al.'s cross-attention edit (`attention`, ECCV 2024: the start token's logit
scaled up in the conditional branch, the padding masked; `memtest.mitigation.attention`). This mitigation acts
at inference only: it does not change the weights, so it does not protect a checkpoint whose weights are released.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memtest.audit.records import MitigationEntry
from memtest.detection.metrics import measure_sharpness
from memtest.detection.noise import SeedStream, fresh_seed, gaussian_noise
from memtest.errors import MitigationError
from memtest.evidence.generation import generate_images
from memtest.evidence.images import THUMBNAIL_SIZE, png_thumbnails
from memtest.mitigation.attention import DEFAULT_START_SCALE, mitigate_attention
from memtest.mitigation.baselines import (
    DEFAULT_ADDITIONS,
    DEFAULT_EMBEDDING_LR,
    DEFAULT_EMBEDDING_STEPS,
    insert_words,
    mitigate_embedding,
    mitigate_rna,
    mitigate_rta,
)
from memtest.mitigation.images import (
    CopyReference,
    copy_reference,
    image_distances,
    nearest_distances,
    own_copy_threshold,
    planted_image,
    vae_roundtrip,
)
from memtest.mitigation.outcome import (
    COPY_RULE,
    AcceptedLatent,
    MethodResult,
    Mitigation,
    ResampleResult,
    SailResult,
    copy_required,
    describe_copies,
    judge_copy,
    judge_mitigation,
    with_copy_stats,
)
from memtest.mitigation.resample import (
    DEFAULT_LEAD,
    DEFAULT_QUANTILE,
    calibration_references,
    mitigate_resample,
    reference_captions,
    reference_level,
    trajectory_magnitude,
    trajectory_point,
)
from memtest.mitigation.sail import (
    ALPHA_RATIO,
    DEFAULT_LR,
    DEFAULT_MAX_STEPS,
    DEFAULT_RESTART_AFTER,
    DEFAULT_SCREEN,
    BatchAdam,
    SailStep,
    default_alpha,
    mitigate_sail,
    sail,
    sail_loss,
)
from memtest.mitigation.target import as_scorer, reference_threshold, resolve_threshold

if TYPE_CHECKING:
    from memtest.detection.scoring import Scorer
    from memtest.models.checkpoint import Checkpoint

METHODS: tuple[str, ...] = ("sail", "resample", "rta", "rna", "embedding", "attention")

_METHODS: dict[str, Callable[..., Mitigation]] = {
    "sail": mitigate_sail,
    "resample": mitigate_resample,
    "rta": mitigate_rta,
    "rna": mitigate_rna,
    "embedding": mitigate_embedding,
    "attention": mitigate_attention,
}


def mitigate(target: Scorer | Checkpoint | str | Path, prompt: str, method: str = "sail", **options: Any) -> Mitigation:
    """Mitigate `prompt` on a checkpoint (or a `Scorer`, whose settings and caches are reused) with `method`:
    sail (default), resample, rta, rna, embedding or attention; `options` go to `mitigate_<method>`."""
    fn = _METHODS.get(method)
    if fn is None:
        raise MitigationError(f"Unknown mitigation method {method!r}. Choose one of: {', '.join(METHODS)}.")
    scorer = as_scorer(target)
    return with_copy_stats(fn(scorer, prompt, **options), scorer.ckpt)


__all__ = [
    "ALPHA_RATIO",
    "COPY_RULE",
    "DEFAULT_ADDITIONS",
    "DEFAULT_EMBEDDING_LR",
    "DEFAULT_EMBEDDING_STEPS",
    "DEFAULT_LEAD",
    "DEFAULT_LR",
    "DEFAULT_MAX_STEPS",
    "DEFAULT_QUANTILE",
    "DEFAULT_RESTART_AFTER",
    "DEFAULT_SCREEN",
    "DEFAULT_START_SCALE",
    "METHODS",
    "THUMBNAIL_SIZE",
    "AcceptedLatent",
    "BatchAdam",
    "CopyReference",
    "MethodResult",
    "Mitigation",
    "MitigationEntry",
    "ResampleResult",
    "SailResult",
    "SailStep",
    "SeedStream",
    "calibration_references",
    "copy_reference",
    "copy_required",
    "default_alpha",
    "describe_copies",
    "fresh_seed",
    "gaussian_noise",
    "generate_images",
    "image_distances",
    "insert_words",
    "judge_copy",
    "judge_mitigation",
    "measure_sharpness",
    "mitigate",
    "mitigate_attention",
    "mitigate_embedding",
    "mitigate_resample",
    "mitigate_rna",
    "mitigate_rta",
    "mitigate_sail",
    "nearest_distances",
    "own_copy_threshold",
    "planted_image",
    "png_thumbnails",
    "reference_captions",
    "reference_level",
    "reference_threshold",
    "resolve_threshold",
    "sail",
    "sail_loss",
    "trajectory_magnitude",
    "trajectory_point",
    "vae_roundtrip",
    "with_copy_stats",
]
