"""`anisotropy`: Asthana & Belagiannis, "Detecting and Mitigating Memorization in Diffusion Models through
Anisotropy of the Log-Probability" (ICLR 2026; code: rohanasthana/memorization-anisotropy).

Two forward passes of both branches on the same initial noise x_T, no sampling step:

- the isotropic term at t ≈ T (the DDIM schedule's first timestep): ‖ε_θ(x_T, c) − ε_θ(x_T, ∅)‖, the
  score-difference norm (the process's `difference`; exactly `score_norm` at one step);
- the anisotropic term at t ≈ 0 (the schedule's third-to-last timestep, 41 of SD's 50-step schedule, as their
  `t_cosine = timesteps[-3]`), x_T fed unchanged: the cosine between the unconditional output o_∅ and the
  guidance direction o_c − o_∅, taken per latent position over the channels (their `cosine_similarity(...,
  dim=1)`) and averaged over the positions;

score = γ1 · norm + γ2 · cosine, per generation (the prompt's score is the mean over its n generations, as
theirs is). Their γ: (1, 2) for SD v1.4, (1, 0.1) for SD v2; the default here is SD v1.4's. The γ are settings
(`gamma`), recorded in the identity; `scripts/fit_anisotropy.py` fits them on a canary's reference and planted
captions (docs/runs/anisotropy-gamma.json).

Where memtest departs: the cosine is taken on the model's raw outputs (ε for ε-models, as their SD v1.4 branch;
v for v-prediction, as their SD v2 branch), and the norm on the ε difference for every prediction type (their
SD v2 branch scales the v difference by √ᾱ_t / (1 − ᾱ_t), a constant at the fixed t, so only γ1's scale differs).
Scores in the model's dtype, reduced in float32 (theirs ran in bfloat16). DDPM families only: the t ≈ 0 point is
defined on the DDIM schedule; flow-matching checkpoints are refused with that reason.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from memtest.detection.detectors.base import Batch, Blocks, Detector
from memtest.errors import ScoringError
from memtest.models.families.base import DDPMProcess

if TYPE_CHECKING:
    import torch

#: Asthana & Belagiannis's γ for SD v1.4 (detect_eval.py): (γ1 norm, γ2 cosine).
DEFAULT_GAMMA: tuple[float, float] = (1.0, 2.0)
#: The t ≈ 0 timestep: this many from the end of the DDIM schedule (their `timesteps[-3]`).
COSINE_FROM_END = 3


class Anisotropy(Detector):
    name: ClassVar[str] = "anisotropy"
    source: ClassVar[str] = "Asthana & Belagiannis, ICLR 2026 (rohanasthana/memorization-anisotropy)"

    def check(self, blocks: Blocks) -> None:
        self.timesteps(blocks)

    def gamma(self, blocks: Blocks) -> tuple[float, float]:
        g = blocks.settings.gamma
        return DEFAULT_GAMMA if g is None else (float(g[0]), float(g[1]))

    def timesteps(self, blocks: Blocks) -> tuple[int, int]:
        """(t ≈ T, t ≈ 0): the DDIM schedule's first and third-to-last timesteps."""
        process = blocks.process
        if not isinstance(process, DDPMProcess):
            raise ScoringError(
                f"The {self.name} metric measures at the DDIM schedule's first and third-to-last timesteps on the "
                f"same initial noise (Asthana & Belagiannis); checkpoint {blocks.ckpt.name} samples by flow "
                "matching, where that low-noise point has no counterpart. Choose sharpness or score_norm."
            )
        schedule = [int(t) for t in process.scheduler.timesteps]
        if len(schedule) < COSINE_FROM_END:
            raise ScoringError(
                f"The {self.name} metric needs at least {COSINE_FROM_END} inference steps (its low-noise point is the "
                f"third-to-last), got num_inference_steps={len(schedule)}."
            )
        return schedule[0], schedule[-COSINE_FROM_END]

    def identity(self, blocks: Blocks) -> dict[str, Any]:
        t_high, t_low = self.timesteps(blocks)
        return {
            "gamma": list(self.gamma(blocks)),
            "timesteps": [t_high, t_low],
            "norm": "||eps_c - eps_0|| at x_T, t = timesteps[0]",
            "cosine": "cos(o_0, o_c - o_0) over channels per position, mean over positions, at x_T, t = timesteps[1]",
            **blocks.process.identity(),
        }

    def terms(self, blocks: Blocks, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(norm, cosine) per generation, float64: the two measurements γ weighs."""
        import torch

        t_high, t_low = self.timesteps(blocks)
        x, c_c, c_0 = batch.x, batch.c_c, batch.c_0
        prompts = len(batch.prompts)
        xf = x.to(torch.float32)
        with torch.inference_mode():
            o_c, o_0 = blocks.branches(x, t_high, c_c, c_0, first=True, prompts=prompts)
            norm = blocks.process.difference(o_c, o_0, xf, t_high).flatten(1).norm(dim=1)
            o_c, o_0 = blocks.branches(x, t_low, c_c, c_0, first=True, prompts=prompts)
            cosine = channel_cosine(o_c, o_0)
        return norm.to(torch.float64), cosine.to(torch.float64)

    def score(self, blocks: Blocks, batch: Batch) -> torch.Tensor:
        g1, g2 = self.gamma(blocks)
        norm, cosine = self.terms(blocks, batch)
        return g1 * norm + g2 * cosine


def channel_cosine(o_c: torch.Tensor, o_0: torch.Tensor) -> torch.Tensor:
    """cos(o_0, o_c - o_0) over the channel axis at each position, averaged over positions: one value per row."""
    import torch

    return torch.nn.functional.cosine_similarity(o_0, o_c - o_0, dim=1).flatten(1).mean(dim=1)


def fit_gamma(norms: Any, cosines: Any, labels: Any, ratios: Any = None) -> tuple[tuple[float, float], float]:
    """γ = (1, r) for per-prompt terms (labels: 1 = memorized): the r that maximises the ROC AUC of
    norm + r·cosine over a grid of ratios (default: 0 and ±10^k for k in [-3, 3] by quarter decades); among equal
    AUCs (a separable set saturates at 1) the one with the widest standardised margin, (lowest memorized score −
    highest reference score) / the scores' standard deviation; then the smallest |r|. Only the ratio changes the
    ranking, so γ1 is fixed at 1 as the paper's are. Returns (γ, AUC)."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    n = np.asarray(norms, dtype=np.float64)
    c = np.asarray(cosines, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if n.shape != c.shape or n.shape != y.shape or n.ndim != 1:
        raise ScoringError(f"norms, cosines and labels must be 1-D of one length, got {n.shape}, {c.shape}, {y.shape}.")
    if len(set(y.tolist())) != 2:
        raise ScoringError("Fitting γ needs both memorized (1) and reference (0) prompts.")
    if ratios is None:
        mags = 10.0 ** np.arange(-3.0, 3.0 + 1e-9, 0.25)
        ratios = np.concatenate([[0.0], mags, -mags])
    best: tuple[float, float, float] | None = None  # (auc, margin, -|r|)
    best_r = 0.0
    for r in sorted((float(v) for v in ratios), key=abs):
        score = n + r * c
        spread = float(score.std())
        margin = (float(score[y == 1].min()) - float(score[y == 0].max())) / spread if spread > 0 else 0.0
        key = (round(float(roc_auc_score(y, score)), 12), round(margin, 12), -abs(r))
        if best is None or key > best:
            best, best_r = key, r
    assert best is not None
    return (1.0, best_r), best[0]


DETECTOR = Anisotropy()

__all__ = ["COSINE_FROM_END", "DEFAULT_GAMMA", "DETECTOR", "Anisotropy", "channel_cosine", "fit_gamma"]
