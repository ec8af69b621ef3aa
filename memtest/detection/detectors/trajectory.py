"""Detectors measured along the sampler's trajectory from x_T: `sharpness` and `score_norm` (SPEC.md §2).

The walk is shared: flow-matching checkpoints first take the guided Euler steps through the process's
`lead_timesteps` without measuring; then at each of the `steps` measured timesteps both branches run in one
forward, the detector measures one value per generation, and the sampler takes its guided step to the next.
The per-generation score is the mean over the measured timesteps (accumulated in float64).

Several trajectory detectors under the same settings walk the same points, so `walk` measures them all on one
walk (`memtest.detection.scoring.score_together`): the branches' forwards run once for all of them, and each
detector's values are the ones its own walk gives, bit for bit (the same operations on the same tensors).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from memtest.detection.detectors.base import Batch, Blocks, Detector

if TYPE_CHECKING:
    from memtest.models.families.base import Cond


class TrajectoryDetector(Detector):
    """A detector that measures at the first `steps` sampling steps (module docstring)."""

    shares_walk: ClassVar[bool] = True

    def identity(self, blocks: Blocks) -> dict[str, Any]:
        s = blocks.settings
        return {
            "method": s.method,
            "steps": s.steps,
            "timesteps": list(blocks.timesteps),
            # the scale moves the measured points only when the sampler steps with it before or between them
            "guidance_scale": s.guidance_scale if self.guided_steps(blocks) else None,
            "fd_h": blocks.fd_h if s.method != "jvp" else None,
            **blocks.process.identity(),
        }

    @staticmethod
    def guided_steps(blocks: Blocks) -> bool:
        """Whether the sampler takes a guided step before or between the measured points."""
        p = blocks.process
        return (blocks.settings.steps > 1 or len(p.lead_timesteps) > 0) and p.cfg

    @abstractmethod
    def measure(
        self, blocks: Blocks, t: Any, c_c: Cond, c_0: Cond, x: torch.Tensor, o_c: torch.Tensor, o_0: torch.Tensor
    ) -> torch.Tensor:
        """One value per generation at timestep t, from the latents x (float32) and both branches' raw outputs
        there; called in inference mode."""

    def after(
        self, blocks: Blocks, t: Any, c_c: Cond, c_0: Cond, x: torch.Tensor, measured: torch.Tensor
    ) -> torch.Tensor:
        """The value outside inference mode, from what `measure` returned (sharpness differentiates here)."""
        return measured

    def score(self, blocks: Blocks, batch: Batch) -> torch.Tensor:
        return walk(blocks, batch, [self])[0]


def walk(blocks: Blocks, batch: Batch, detectors: Sequence[TrajectoryDetector]) -> list[torch.Tensor]:
    """Each detector's per-generation values (float64) on one walk of the sampler's trajectory from the batch's
    initial noises under `blocks`' settings (module docstring)."""
    s = blocks.settings
    x, c_c, c_0 = batch.x, batch.c_c, batch.c_0
    prompts = len(batch.prompts)
    totals = [torch.zeros(x.shape[0], dtype=torch.float64, device=x.device) for _ in detectors]
    process = blocks.process
    # Flow matching: guided Euler steps from x_1 to the first measured noise level (none for DDPM).
    for k, t in enumerate(process.lead_timesteps):
        with torch.inference_mode():
            o_c, o_0 = blocks.branches(x, t, c_c, c_0, first=k == 0, prompts=prompts)
            x = process.step(process.guide(o_c, o_0, s.guidance_scale), t, x.to(torch.float32))
    first = not process.lead_timesteps
    timesteps = blocks.timesteps
    for k, t in enumerate(timesteps):
        xf = x.to(torch.float32)
        with torch.inference_mode():
            o_c, o_0 = blocks.branches(x, t, c_c, c_0, first=first and k == 0, prompts=prompts)
            measured = [d.measure(blocks, t, c_c, c_0, xf, o_c, o_0) for d in detectors]
        for total, d, m in zip(totals, detectors, measured, strict=True):
            total += d.after(blocks, t, c_c, c_0, xf, m).to(torch.float64)
        if k + 1 < len(timesteps):
            with torch.inference_mode():
                x = process.step(process.guide(o_c, o_0, s.guidance_scale), t, xf)
    return [total / len(timesteps) for total in totals]


__all__ = ["TrajectoryDetector", "walk"]
