"""Images of a mitigation: generation through the checkpoint's pipeline, thumbnails, the distance to a canary's
memorised training image, and its copies counted by the gate's confirmation rule (the copy reference)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from memtest.errors import MitigationError

if TYPE_CHECKING:
    from memtest.evidence import CopyThreshold
    from memtest.models.checkpoint import Checkpoint


# --------------------------------------------------------------------------------------------------
# images: copy distance and copy counts (generation and thumbnails are memtest.evidence's)


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
    training image (`Family.reproduce`). (H, W, 3) in [0, 1] -> (H, W, 3) in [0, 1]."""
    if checkpoint.vae is None:
        raise MitigationError(f"Checkpoint {checkpoint.name} has no VAE to reproduce an image with.")
    reproduced = checkpoint.family.reproduce(checkpoint, np.asarray(image, dtype=np.float32)[None])
    return np.asarray(reproduced[0], dtype=np.float32)


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


@dataclass(frozen=True)
class CopyReference:
    """What the generations of a planted caption are counted as copies against: the gate's own confirmation rule
    (`memtest.evidence`): the checkpoint's training images (a canary's planted images) as stored and as its VAE
    reproduces them, whichever is closer, through the descriptor and copy threshold of its calibration. `image` is
    the prompt's memorised image as the VAE reproduces it, for the reported distance (RMSE)."""

    image: np.ndarray  # (H, W, 3) in [0, 1]
    training: np.ndarray  # (k, H, W, 3) in [0, 1]
    reproduced: np.ndarray | None  # the same k as the VAE reproduces them
    threshold: CopyThreshold | None

    def stats(self, images: np.ndarray | None) -> dict[str, Any] | None:
        """Mean RMSE of `images` to the memorised image, mean best similarity to the training images and, with a
        copy threshold, how many are copies (best similarity above it, as a confirmation counts them)."""
        from memtest.evidence import comparison_settings, make_descriptor, resolve_copy_threshold
        from memtest.evidence import training_similarities as similarities

        if images is None or len(images) == 0:
            return None
        d = image_distances(images, self.image[None])[:, 0]
        descriptor = make_descriptor(str(self.threshold.descriptor.get("name", "pixel")) if self.threshold else "pixel")
        settings = comparison_settings(descriptor, self.reproduced is not None)
        value, _ = resolve_copy_threshold(self.threshold, descriptor, settings)
        train = list(np.asarray(self.training, dtype=np.float32))
        again = None if self.reproduced is None else list(np.asarray(self.reproduced, dtype=np.float32))
        best = similarities(descriptor, descriptor.embed(list(np.asarray(images))), train, again).max(axis=1)
        copies = None if value is None else int((best > value).sum())
        return {
            "distance": float(d.mean()),
            "similarity": float(best.mean()),
            "threshold": value,
            "copies": copies,
            "images": len(d),
            "rate": None if copies is None else copies / len(d),
        }


def copy_reference(checkpoint: Checkpoint, prompt: str, threshold: CopyThreshold | None = None) -> CopyReference | None:
    """The copy reference of `prompt` on a canary checkpoint, or None when the checkpoint plants no image for the
    prompt. `threshold` defaults to the pixel copy threshold of the checkpoint's own calibration
    (`own_copy_threshold`); without one, copies are not counted."""
    from memtest.evidence import canary_planted, reproduce_training

    target = planted_image(checkpoint.path, prompt)
    if target is None:
        return None
    captions, training = canary_planted(checkpoint)
    reproduced = reproduce_training(checkpoint, training, training)
    if reproduced is not None:  # its own round trip is among them (`Family.reproduce` takes one image at a time)
        target = reproduced[captions.index(prompt)]
    if threshold is None:
        threshold = own_copy_threshold(checkpoint.path)
    return CopyReference(target, training, reproduced, threshold)


def own_copy_threshold(checkpoint_folder: str | Path, descriptor: str = "pixel") -> CopyThreshold | None:
    """The copy threshold for `descriptor` in the checkpoint folder's own calibration (`copy_thresholds` of its
    memtest-calibration.json, added by scripts/calibrate_copy.py), or None when it has none."""
    from memtest.audit.calibration import CALIBRATION_FILENAME, load_calibration
    from memtest.evidence import CopyThreshold

    path = Path(checkpoint_folder) / CALIBRATION_FILENAME
    if not path.is_file():
        return None
    entry = load_calibration(path).copy_thresholds.get(descriptor)
    if entry is None:
        return None
    return CopyThreshold.from_entry(entry, f"calibrated ({path})")
