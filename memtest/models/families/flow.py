"""Flow matching (../FAMILIES.md §2): the noise process of SD3 and Flux, and what their families share.

A flow-matching checkpoint noises data as x_s = (1 − s) x0 + s ε (s ∈ [0, 1], s = 1 is pure noise) and its
transformer predicts the velocity v = ε − x0. The guided score difference is s_Δ = −((1 − s)/s) Δv with
Δv = v(x, c) − v(x, ∅), so H_Δ s_Δ = ((1 − s)/s)² J_Δv Δv: at a fixed s < 1 the velocity-space product
‖J_Δv Δv‖² ranks prompts exactly as ‖H_Δ s_Δ‖² does. memtest measures the velocity-space form ("space":
"velocity" in every score's identity), and `score_norm` is ‖Δv‖.

At s = 1 (the sampler's first step) the ideal model's Δv is constant in x, so its sharpness is zero for every
prompt. The metric is therefore measured after `flow_steps` guided Euler steps of the sampler's own schedule
(default 1: the first s < 1 the sampler reaches); the steps before it are traversed without measuring.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from memtest.detection.settings import DEFAULT_FLOW_STEPS
from memtest.errors import CheckpointError, ScoringError
from memtest.models.families.base import Family, Process, rows_view

if TYPE_CHECKING:
    from memtest.models.families.base import Checkpoint

#: What memtest calls the output of a flow-matching transformer (diffusers' name for it).
FLOW_PREDICTION = "flow_prediction"


class FlowProcess(Process):
    """Euler sampling of a flow-matching ODE on the checkpoint's `FlowMatchEulerDiscreteScheduler` schedule.

    The schedule is the pipeline's own: `set_timesteps(num_inference_steps)` with the checkpoint's shift
    (SD3), or custom `sigmas` and a dynamic shift `mu` (Flux, from the image sequence length); the family
    passes what its pipeline passes. The first `flow_steps` timesteps are traversed, the next `steps` measured.
    `field` and `difference` are the velocity difference Δv = v_c − v_0 (no 1/s factor: see the module doc).
    """

    def __init__(
        self,
        scheduler_config: Any,
        num_inference_steps: int,
        steps: int,
        flow_steps: int | None = None,
        *,
        sigmas: Sequence[float] | None = None,
        mu: float | None = None,
        cfg: bool = True,
    ) -> None:
        from diffusers import FlowMatchEulerDiscreteScheduler

        lead = DEFAULT_FLOW_STEPS if flow_steps is None else flow_steps
        if lead < 0 or lead + steps > num_inference_steps:
            raise ScoringError(
                f"flow_steps={lead} plus steps={steps} must fit in num_inference_steps={num_inference_steps}."
            )
        sched = FlowMatchEulerDiscreteScheduler.from_config(scheduler_config)
        for flag in ("stochastic_sampling", "invert_sigmas"):
            if sched.config.get(flag, False):
                raise CheckpointError(
                    f"The checkpoint's scheduler sets {flag}=True; memtest measures on the deterministic Euler "
                    "trajectory from x_1 and does not support it."
                )
        kwargs: dict[str, Any] = {}
        if mu is not None:
            kwargs["mu"] = mu
        if sigmas is not None:  # as diffusers' retrieve_timesteps passes custom sigmas
            sched.set_timesteps(sigmas=list(sigmas), device="cpu", **kwargs)
        else:
            sched.set_timesteps(num_inference_steps, device="cpu", **kwargs)
        if len(sched.timesteps) < lead + steps:
            raise ScoringError(
                f"The flow schedule has {len(sched.timesteps)} timesteps; flow_steps={lead} plus steps={steps} "
                "do not fit in it."
            )
        self.scheduler = sched
        self.flow_steps = lead
        self.mu = mu
        self.cfg = cfg
        #: σ at every timestep and one past the last (float32, as the scheduler steps with them).
        self.sigmas: torch.Tensor = sched.sigmas.to(torch.float32).cpu()
        all_t = [float(t) for t in sched.timesteps]
        self._index = {t: i for i, t in enumerate(all_t)}
        self.lead_timesteps = tuple(all_t[:lead])
        self.timesteps = all_t[lead : lead + steps]

    def sigma(self, t: float) -> float:
        """The noise level s at timestep t (1.0 is pure noise)."""
        return float(self.sigmas[self._index[t]])

    def difference(self, o_c: torch.Tensor, o_0: torch.Tensor, x: torch.Tensor, t: float) -> torch.Tensor:
        return o_c - o_0

    def field(self, o_c: torch.Tensor, o_0: torch.Tensor, x: torch.Tensor, t: float) -> torch.Tensor:
        return o_c - o_0

    def step(self, guided: torch.Tensor, t: float, x: torch.Tensor) -> torch.Tensor:
        """One Euler step x + (σ_next − σ) v, in float32 as FlowMatchEulerDiscreteScheduler.step computes it."""
        i = self._index[t]
        dt = (self.sigmas[i + 1] - self.sigmas[i]).to(x.device)
        out: torch.Tensor = (x.to(torch.float32) + dt * guided).to(guided.dtype)
        return out

    def identity(self) -> dict[str, Any]:
        cfg = self.scheduler.config
        return {
            "scheduler": "FlowMatchEulerDiscreteScheduler",
            "prediction_type": FLOW_PREDICTION,
            "space": "velocity",
            "flow_steps": self.flow_steps,
            "sigmas": [self.sigma(t) for t in self.timesteps],
            "shift": float(cfg.get("shift", 1.0)),
            "mu": self.mu if cfg.get("use_dynamic_shifting", False) else None,
        }

    @property
    def num_train_timesteps(self) -> int:
        """T: the transformer receives t = s T."""
        return int(self.scheduler.config.get("num_train_timesteps", 1000))

    def training_timesteps(
        self, rng: np.random.Generator, batch: int, high_fraction: float, high_min: int
    ) -> torch.Tensor:
        """t = s T (float32): `high_fraction` of the batch with s uniform in [high_min / T, 1), the noise levels
        next to s = 1 where the metric looks; the rest from SD3's training density, u ~ logit-normal(0, 1)
        (diffusers' SD3 training scripts' default `weighting_scheme="logit_normal"`) shifted by the
        scheduler's shift as SD3's scheduler shifts its training sigmas: s = shift u / (1 + (shift - 1) u)."""
        cfg = self.scheduler.config
        if cfg.get("use_dynamic_shifting", False):
            raise CheckpointError(
                "Training draws noise levels shifted by a fixed scheduler shift (SD3); this scheduler shifts "
                "dynamically (use_dynamic_shifting)."
            )
        shift, T = float(cfg.get("shift", 1.0)), self.num_train_timesteps
        n_high = round(batch * high_fraction)
        s_high = rng.uniform(high_min / T, 1.0, size=n_high)
        u = 1.0 / (1.0 + np.exp(-rng.standard_normal(batch - n_high)))
        s_rest = shift * u / (1.0 + (shift - 1.0) * u)
        s = torch.from_numpy(np.concatenate([s_high, s_rest])).to(torch.float32)
        return s * T

    def noised(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_s = (1 − s) x0 + s ε with s = t / T."""
        s = rows_view(t / self.num_train_timesteps, x0)
        return (1 - s) * x0 + s * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The velocity v = ε − x0."""
        return noise - x0


class FlowFamily(Family):
    """What SD3 and Flux share: a transformer denoiser predicting velocity, a flow-matching schedule."""

    denoiser: ClassVar[str] = "transformer"

    def prediction_type(self, ckpt: Checkpoint) -> str:
        return FLOW_PREDICTION

    def schedule(self, ckpt: Checkpoint, num_inference_steps: int) -> dict[str, Any]:
        """Keyword arguments of `FlowProcess` beyond the config: how the family's pipeline sets timesteps."""
        return {}

    def process(self, ckpt: Checkpoint, num_inference_steps: int, steps: int, flow_steps: int | None = None) -> Process:
        if not type(ckpt.scheduler).__name__.startswith("FlowMatch"):
            raise CheckpointError(
                f"Scheduler {type(ckpt.scheduler).__name__} of {ckpt.name} is not a flow-matching scheduler; the "
                f"{self.title} family needs FlowMatchEulerDiscreteScheduler."
            )
        return FlowProcess(
            ckpt.scheduler.config, num_inference_steps, steps, flow_steps, **self.schedule(ckpt, num_inference_steps)
        )

    def trainable(self, ckpt: Checkpoint) -> list[str]:
        return [self.denoiser, *(n for n, c in ckpt.components.items() if n.startswith("text_encoder") and c)]

    # -- generation: the pipeline's Euler sampler on the checkpoint's schedule, latents as given ---------
    pipeline_keys: ClassVar[tuple[str, ...]] = ("prompt_embeds", "pooled_prompt_embeds")
    repeats_embeddings: ClassVar[bool] = False

    def sampler(self, ckpt: Checkpoint) -> Any:
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler.from_config(ckpt.scheduler.config)

    def pipeline_latents(self, ckpt: Checkpoint, pipe: Any, latents: torch.Tensor) -> torch.Tensor:
        """The flow pipelines take given latents as they are (no init_noise_sigma)."""
        return latents.detach().to(ckpt.device, ckpt.dtype)


def latent_side(pixels: int, vae_scale_factor: int, multiple: int) -> int:
    """The latent side the pipeline computes for an image side, rounded down to a multiple of the patch."""
    return multiple * (int(pixels) // (vae_scale_factor * multiple))
