"""Generation: a prompt's images from given initial noises through the checkpoint's own pipeline (the family's
`generate`), which confirmation (`memtest.evidence.confirm`) and the mitigations share."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from memtest.evidence.errors import EvidenceError

if TYPE_CHECKING:
    import torch

    from memtest.models.checkpoint import Checkpoint
    from memtest.models.families.base import Cond


def generate_images(
    checkpoint: Checkpoint,
    latents: torch.Tensor,
    *,
    prompt: str | None = None,
    cond: Cond | None = None,
    guidance_scale: float = 7.5,
    num_inference_steps: int = 50,
) -> np.ndarray:
    """Images (n, H, W, 3) in [0, 1] from initial noises x_T (n, C, h, w) through the checkpoint's pipeline.

    The family's own diffusers pipeline with DDIM from the checkpoint's noise schedule (the scorer's sampler,
    so the first step is the one the detector looks at), classifier-free guidance against the family's
    unconditional branch. Give `prompt`, or `cond` (one prompt's conditioning, as `Scorer.embed` returns it).
    """
    if (prompt is None) == (cond is None):
        raise EvidenceError("generate_images needs exactly one of prompt= and cond=.")
    images = checkpoint.family.generate(
        checkpoint,
        latents,
        prompt=prompt,
        cond=cond,
        guidance_scale=guidance_scale,
        num_inference_steps=num_inference_steps,
    )
    return np.asarray(images, dtype=np.float32)


__all__ = ["generate_images"]
