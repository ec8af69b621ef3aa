"""The `pixel` copy descriptor: a normalised tiled ℓ2 distance, after Carlini et al., "Extracting Training Data
from Diffusion Models" (USENIX Security 2023).

Carlini et al. compare a generation with a training image by a tiled ℓ2: the images are split into a grid of
non-overlapping tiles, the ℓ2 distance is taken per tile, and the distance is the largest over the tiles, so that
a copy has to match everywhere and a large flat background cannot hide a differing region. Here:

- both images are resized to `side` x `side` (bilinear, antialiased when shrinking; an image already that size is
  used as it is), so images of different sizes compare;
- the grid is `tiles` x `tiles`; per tile the ℓ2 is normalised by the tile's number of values, i.e. the root mean
  square difference in [0, 1] pixel units, so the number does not depend on the side or the grid;
- distance d = the largest per-tile RMSE, in [0, 1]; similarity = 1 - d, so higher is closer and an image's
  similarity to itself is exactly 1 (`maximum`).

No weights, nothing to install, and meaningful at any size, the 16-32 px canaries included. It has no copy
convention: its threshold must be calibrated (`memtest.evidence.confirm.calibrate_copy_threshold`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from memtest.evidence.base import Descriptor
from memtest.evidence.errors import EvidenceError
from memtest.evidence.images import as_images, resize_to

#: Default side the images are resized to (a 16 px canary upscaled 4x, a 512 px image shrunk 8x), and the default
#: tile grid, 2 x 2. Carlini et al. used 4 x 4 tiles of 128 px on 512 px images; on the 16 px canaries a 4 x 4 grid
#: leaves 4 x 4 native pixels per tile, and the planted images' noise texture then dominates a tile's RMSE: on
#: zoo:finetuned (10 planted captions against 28 clean ones, n = 4) the margin between the lowest planted caption's
#: similarity to its own image and the highest clean caption's to any planted image was 0.081 with 2 x 2 tiles,
#: 0.078 with 1, 0.048 with 4 and 0.058 with 8. Ask for `tiles=4` on large images without SSCD.
SIDE = 64
TILES = 2

# Elements of one (images, references, tiles, values) difference block in `compare`: about 64 MB of float64.
_BLOCK = 1 << 23


def resize(image: np.ndarray, side: int) -> np.ndarray:
    """(H, W, 3) in [0, 1] -> (side, side, 3) float64 (`memtest.evidence.images.resize_to`)."""
    return resize_to(image, side, side)


class PixelDescriptor(Descriptor):
    """Normalised tiled ℓ2 (module docstring); similarity = 1 - the largest per-tile RMSE."""

    name: ClassVar[str] = "pixel"
    maximum: ClassVar[float] = 1.0

    def __init__(self, side: int = SIDE, tiles: int = TILES) -> None:
        if not isinstance(side, int) or not isinstance(tiles, int) or side < 1 or tiles < 1 or side % tiles:
            raise EvidenceError(
                f"The pixel descriptor needs positive integers side and tiles with side divisible by tiles, got "
                f"side={side!r}, tiles={tiles!r} (the default is side={SIDE}, tiles={TILES})."
            )
        self.side = side
        self.tiles = tiles

    def settings(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "side": self.side,
            "tiles": self.tiles,
            "resize": "bilinear to side x side (antialiased when shrinking), float",
            "distance": "max over tiles of the per-tile RMSE in [0, 1] pixel units",
            "similarity": "1 - distance",
        }

    def embed(self, images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """(N, tiles², tile values): each image resized and cut into its grid of tiles."""
        imgs = as_images(images)
        t, s = self.tiles, self.side // self.tiles
        if not imgs:
            return np.zeros((0, t * t, s * s * 3), dtype=np.float64)
        x = np.stack([resize(img, self.side) for img in imgs])  # (N, side, side, 3)
        x = x.reshape(len(imgs), t, s, t, s, 3).transpose(0, 1, 3, 2, 4, 5)
        return np.ascontiguousarray(x.reshape(len(imgs), t * t, s * s * 3))

    def compare(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        a = np.asarray(a, dtype=np.float64)
        b = np.asarray(b, dtype=np.float64)
        if a.ndim != 3 or b.ndim != 3 or a.shape[1:] != b.shape[1:]:
            raise EvidenceError(
                f"Pixel features {a.shape} and {b.shape} do not match: embed both with the same descriptor settings."
            )
        out = np.empty((len(a), len(b)), dtype=np.float64)
        per_pair = max(1, a.shape[1] * a.shape[2])
        step = max(1, _BLOCK // max(1, len(a) * per_pair))
        for start in range(0, len(b), step):
            diff = a[:, None] - b[None, start : start + step]  # (N, m, tiles, values): exact zeros for equal tiles
            rmse = np.sqrt(np.mean(diff * diff, axis=-1))
            out[:, start : start + step] = 1.0 - rmse.max(axis=-1)
        return out


__all__ = ["SIDE", "TILES", "PixelDescriptor", "resize"]
