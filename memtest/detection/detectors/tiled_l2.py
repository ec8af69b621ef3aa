"""`tiled_l2`: how alike a prompt's n generations are, by Carlini et al.'s tiled ℓ2 ("Extracting Training Data
from Diffusion Models", USENIX Security 2023).

Carlini et al. generate many images of a caption and call it memorized when many of them are near-copies of one
another under a tiled ℓ2 distance (each image cut into a grid of tiles, the distance is the largest per-tile ℓ2).
Here the n generations are the checkpoint's own: the family's diffusers pipeline (`Family.generate`) run from the
same initial noises the other detectors score, with the scorer's DDIM sampler, guidance scale and number of
inference steps. The distance is `memtest.evidence.pixel`'s (the same computation, the `pixel` copy descriptor):
both images at `side` x `side` (no resize at the checkpoint's own square resolution), a `tiles` x `tiles` grid,
the per-tile ℓ2 as a root mean square in [0, 1] pixel units (ℓ2 / √(values per tile): the ordering of ℓ2), the
largest over the tiles. Carlini et al.'s grid is 4 x 4 (128 px tiles on 512 px images); so is this one.

Score direction (higher = more memorized, like every metric): the similarity 1 − d. A generation's value is its
mean similarity to the other n − 1 generations of the prompt, so the prompt's score (the mean of its values) is
the mean pairwise similarity. Carlini et al. threshold the distances and look for a large clique among 500
generations; a continuous score for a calibrated threshold takes the mean instead (recorded as `aggregation`).
It needs n ≥ 2 and has no `steps`, `method` or `fd_h`: it measures finished images, not the sampler's field.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from memtest.detection.detectors.base import Batch, Blocks, Detector
from memtest.errors import ScoringError
from memtest.models.families.base import cond_rows

if TYPE_CHECKING:
    import torch

#: Carlini et al.'s tile grid (4 x 4 tiles).
TILES = 4


class TiledL2(Detector):
    name: ClassVar[str] = "tiled_l2"
    source: ClassVar[str] = "Carlini et al., USENIX Security 2023 (tiled ℓ2 among generations)"

    def check(self, blocks: Blocks) -> None:
        if blocks.ckpt.vae is None:
            raise ScoringError(
                f"The {self.name} metric compares generated images, and checkpoint {blocks.ckpt.name} has no VAE to "
                "decode them: give it a `vae/` folder, or choose a metric measured on latents (sharpness)."
            )
        self.side(blocks)

    def side(self, blocks: Blocks) -> int:
        """The side images are compared at: the checkpoint's own resolution (square) rounded down to the grid."""
        h, w = blocks.ckpt.resolution
        side = max(h, w) - max(h, w) % TILES
        if side < TILES:
            raise ScoringError(
                f"Checkpoint {blocks.ckpt.name} generates {h}x{w} images, too small for a {TILES}x{TILES} grid."
            )
        return side

    def identity(self, blocks: Blocks) -> dict[str, Any]:
        from memtest.evidence.pixel import PixelDescriptor

        s = blocks.settings
        return {
            "guidance_scale": s.guidance_scale,
            "generation": "the family's diffusers pipeline from the scored initial noises, DDIM, num_inference_steps",
            "descriptor": PixelDescriptor(side=self.side(blocks), tiles=TILES).settings(),
            "aggregation": "per generation: mean similarity (1 - tiled l2) to the prompt's other generations",
            **blocks.process.identity(),
        }

    def score(self, blocks: Blocks, batch: Batch) -> torch.Tensor:
        import torch

        from memtest.evidence.pixel import PixelDescriptor

        s = blocks.settings
        n = s.n
        descriptor = PixelDescriptor(side=self.side(blocks), tiles=TILES)
        family = blocks.ckpt.family
        values: list[float] = []
        done: dict[tuple[str, tuple[int, ...]], list[float]] = {}
        for i, prompt in enumerate(batch.prompts):
            key = (prompt, batch.seeds[i])
            if key not in done:  # the batch pads with repeats of its last prompt
                images = family.generate(
                    blocks.ckpt,
                    batch.x[i * n : (i + 1) * n],
                    prompt=None,
                    cond=cond_rows(batch.c_c, i * n),
                    guidance_scale=s.guidance_scale,
                    num_inference_steps=s.num_inference_steps,
                )
                done[key] = similarity_to_others(descriptor, list(images))
            values.extend(done[key])
        return torch.tensor(values, dtype=torch.float64)


def similarity_to_others(descriptor: Any, images: Sequence[Any]) -> list[float]:
    """Each image's mean similarity (1 - tiled l2, by `descriptor`) to the other images: 1.0 each for identical
    images. Needs at least two."""
    import numpy as np

    n = len(images)
    if n < 2:
        raise ScoringError(f"tiled l2 compares images with one another: got {n}.")
    features = descriptor.embed(list(images))
    sims = descriptor.compare(features, features)
    off = ~np.eye(n, dtype=bool)
    return [float(sims[r][off[r]].mean()) for r in range(n)]


DETECTOR = TiledL2()

__all__ = ["DETECTOR", "TILES", "TiledL2", "similarity_to_others"]
