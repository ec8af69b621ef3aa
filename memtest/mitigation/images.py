"""Images of a mitigation: generation through the checkpoint's pipeline, thumbnails, and the distance to
a canary's memorised training image (the copy reference and its recorded copy boundary)."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from memtest.errors import MitigationError
from memtest.models.families.base import Cond

if TYPE_CHECKING:
    from memtest.models.checkpoint import Checkpoint


#: Longest side of the thumbnails stored in results records.
THUMBNAIL_SIZE = 64

# --------------------------------------------------------------------------------------------------
# images: generation, thumbnails, copy distance


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
        raise MitigationError("generate_images needs exactly one of prompt= and cond=.")
    images = checkpoint.family.generate(
        checkpoint,
        latents,
        prompt=prompt,
        cond=cond,
        guidance_scale=guidance_scale,
        num_inference_steps=num_inference_steps,
    )
    return np.asarray(images, dtype=np.float32)


def png_thumbnails(images: np.ndarray, size: int = THUMBNAIL_SIZE) -> list[str]:
    """(N, H, W, 3) in [0, 1] -> base64 PNGs (no data: prefix), shrunk so the longer side is <= size."""
    from PIL import Image

    out = []
    for img in np.asarray(images, dtype=np.float32):
        pil = Image.fromarray(np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8), mode="RGB")
        if max(pil.size) > size:
            pil.thumbnail((size, size))
        buf = io.BytesIO()
        pil.save(buf, format="PNG", optimize=True)
        out.append(base64.b64encode(buf.getvalue()).decode("ascii"))
    return out


def image_distances(images: np.ndarray, references: np.ndarray) -> np.ndarray:
    """RMSE in [0, 1] pixel units between every image (N, H, W, 3) and every reference (M, H, W, 3): (N, M)."""
    a = np.asarray(images, dtype=np.float64).reshape(len(images), -1)
    b = np.asarray(references, dtype=np.float64).reshape(len(references), -1)
    if a.shape[1] != b.shape[1]:
        raise MitigationError(f"Images {np.shape(images)} and references {np.shape(references)} differ in size.")
    sq = (a**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2.0 * a @ b.T
    return np.asarray(np.sqrt(np.maximum(sq, 0.0) / a.shape[1]), dtype=np.float64)


def nearest_distances(images: np.ndarray, references: np.ndarray) -> np.ndarray:
    """Nearest-neighbour RMSE of every image to a set of references, (N,)."""
    return np.asarray(image_distances(images, references).min(axis=1), dtype=np.float64)


def vae_roundtrip(checkpoint: Checkpoint, image: np.ndarray) -> np.ndarray:
    """decode(encode(image)) with the posterior mean: the closest image the checkpoint can output for a
    training image. (H, W, 3) in [0, 1] -> (H, W, 3) in [0, 1]."""
    if checkpoint.vae is None:
        raise MitigationError(f"Checkpoint {checkpoint.name} has no VAE to reproduce an image with.")
    arr = np.ascontiguousarray(np.asarray(image, dtype=np.float32).transpose(2, 0, 1))[None] * 2.0 - 1.0
    x = torch.from_numpy(arr).to(checkpoint.device, checkpoint.dtype)
    with torch.no_grad():
        rec = checkpoint.vae.decode(checkpoint.vae.encode(x).latent_dist.mean).sample
    out = (rec[0].float().cpu().numpy().transpose(1, 2, 0) + 1.0) / 2.0
    return np.asarray(np.clip(out, 0.0, 1.0), dtype=np.float32)


def planted_image(checkpoint_folder: str | Path, prompt: str) -> np.ndarray | None:
    """The training image a canary checkpoint memorised for `prompt` ((H, W, 3) in [0, 1]), else None."""
    from memtest.models.canaries import MANIFEST_NAME, load_manifest

    folder = Path(checkpoint_folder)
    if not (folder / MANIFEST_NAME).is_file():
        return None
    for p in load_manifest(folder).planted:
        if p.caption == prompt:
            return p.image()
    return None


#: A canary folder may hold this file: {"boundary": RMSE, "source": "..."}: an image closer than `boundary` to
#: the memorised image (as the VAE reproduces it) is a copy (scripts/mitigation_proof.py measures it).
COPY_FILENAME = "memtest-copy.json"


@dataclass(frozen=True)
class CopyReference:
    """What a generation of a planted caption is compared with: the memorised image as the checkpoint's VAE
    reproduces it, and (when the canary records one) the copy boundary."""

    image: np.ndarray  # (H, W, 3) in [0, 1]
    boundary: float | None

    def stats(self, images: np.ndarray | None) -> dict[str, Any] | None:
        """Mean RMSE of `images` to the memorised image and, with a boundary, how many are copies."""
        if images is None or len(images) == 0:
            return None
        d = image_distances(images, self.image[None])[:, 0]
        copies = None if self.boundary is None else int((d < self.boundary).sum())
        return {
            "distance": float(d.mean()),
            "copies": copies,
            "images": len(d),
            "rate": None if copies is None else copies / len(d),
        }


def copy_reference(checkpoint: Checkpoint, prompt: str) -> CopyReference | None:
    """The memorised image of `prompt` on a canary checkpoint (through its VAE) and its copy boundary, or None
    when the checkpoint plants no image for the prompt."""
    target = planted_image(checkpoint.path, prompt)
    if target is None:
        return None
    if checkpoint.vae is not None:
        target = vae_roundtrip(checkpoint, target)
    return CopyReference(target, copy_boundary(checkpoint.path))


def copy_boundary(checkpoint_folder: str | Path) -> float | None:
    """The copy boundary a canary folder records (`COPY_FILENAME`), or None when it records none."""
    import json

    path = Path(checkpoint_folder) / COPY_FILENAME
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get("boundary")
    except (OSError, ValueError, AttributeError) as exc:
        raise MitigationError(f"{path} is not a readable copy record ({exc}); regenerate it") from exc
    if not isinstance(value, (int, float)) or not value > 0:
        raise MitigationError(f"{path}: boundary must be a positive number, got {value!r}")
    return float(value)
