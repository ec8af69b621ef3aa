"""`sharpness`: ‖H_Δ(x) s_Δ(x)‖², the curvature of the guided score difference along itself, after Jeon et al.,
"Understanding and Mitigating Memorization in Diffusion Models via Sharpness of Probability Landscapes"
(ICML 2025), averaged over the first `steps` sampling steps (SPEC.md §2; docs/method.md).

The Hessian-vector product is taken by the configured method (`fd`, `fd-forward` or `jvp`) through
`memtest.detection.metrics.sharpness`, the one implementation of the metric.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch

from memtest.detection.detectors.base import Blocks
from memtest.detection.detectors.trajectory import TrajectoryDetector
from memtest.detection.metrics import sharpness

if TYPE_CHECKING:
    from memtest.models.families.base import Cond


class Sharpness(TrajectoryDetector):
    name: ClassVar[str] = "sharpness"
    source: ClassVar[str] = "Jeon et al., ICML 2025 (Dongjae0324/sharpness_memorization_diffusion)"

    def measure(
        self, blocks: Blocks, t: Any, c_c: Cond, c_0: Cond, x: torch.Tensor, o_c: torch.Tensor, o_0: torch.Tensor
    ) -> torch.Tensor:
        field: torch.Tensor = blocks.process.field(o_c, o_0, x, t)  # s_Δ(x), reused by the product
        return field

    def after(
        self, blocks: Blocks, t: Any, c_c: Cond, c_0: Cond, x: torch.Tensor, measured: torch.Tensor
    ) -> torch.Tensor:
        """‖H_Δ(x) s_Δ(x)‖² at the known s_Δ(x) (`measured`) by the configured method; x, c_c and c_0 have one
        row per generation."""
        method = blocks.settings.method
        if method != "jvp":
            with torch.inference_mode():
                s_fn = blocks.s_delta_fn(t, c_c, c_0)
                return sharpness(s_fn, x, method=method, h=blocks.fd_h, s_at_x=measured)
        # Fused SDPA kernels have no forward-mode derivative (pytorch#128971), and the math path holds the
        # full attention weights and their tangents (GiBs per generation at SD's size); PyTorch's own formulas
        # also convolve with the weights' zero tangents and unroll normalisation into many small operations.
        # lean_jvp() keeps the fused kernel and computes the same exact tangents without that waste.
        from memtest.detection._lean_jvp import lean_jvp

        with lean_jvp():
            return sharpness(blocks.s_delta_fn(t, c_c, c_0), x, method="jvp", s_at_x=measured)


DETECTOR = Sharpness()

__all__ = ["DETECTOR", "Sharpness"]
