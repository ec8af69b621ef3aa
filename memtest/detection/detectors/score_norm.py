"""`score_norm`: the norm of the guided score difference, after Wen et al., "Detecting, Explaining, and Mitigating
Memorization in Diffusion Models" (ICLR 2024): ‖ε_θ(x_t, c) − ε_θ(x_t, ∅)‖ per generation at each measured step
(the process's `difference`: the ε difference for DDPM families, the velocity difference for flow matching),
averaged over the first `steps` sampling steps.

It records the Hessian-vector-product method and step in its identity although it does not use them, as it did
before detectors were modules: shipped calibrations match on that identity.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from memtest.detection.detectors.base import Blocks
from memtest.detection.detectors.trajectory import TrajectoryDetector

if TYPE_CHECKING:
    import torch

    from memtest.models.families.base import Cond


class ScoreNorm(TrajectoryDetector):
    name: ClassVar[str] = "score_norm"
    source: ClassVar[str] = "Wen et al., ICLR 2024 (YuxinWenRick/diffusion_memorization)"

    def measure(
        self, blocks: Blocks, t: Any, c_c: Cond, c_0: Cond, x: torch.Tensor, o_c: torch.Tensor, o_0: torch.Tensor
    ) -> torch.Tensor:
        value: torch.Tensor = blocks.process.difference(o_c, o_0, x, t).flatten(1).norm(dim=1)
        return value


DETECTOR = ScoreNorm()

__all__ = ["DETECTOR", "ScoreNorm"]
