"""Confirmation of a flag: generate what the detector looked at, and compare it with the training images.

A flag says the first sampling step is sharper than non-memorized prompts' (`memtest.detection`). Evidence that the
checkpoint copies is in the images: `confirm` generates the prompt's n images from the very initial noises the
detector scored (`Scorer.seeds_for`, `Scorer.noise`), through the family's own pipeline (`generate_images`, which
the mitigations use too), and measures with a copy descriptor (`memtest.evidence.descriptors`):

- (a) each generation's best similarity to the case's training images, and which training image is closest;
- (b) agreement among the n generations (mean and max pairwise similarity): a memorized caption returns the same
  image from different noises, an ordinary one does not.

The training images are compared as stored and, on a checkpoint with a VAE, also as that VAE reproduces them
(`Family.reproduce`: decode(encode(x))), whichever is closer: a latent model can only output decoded latents, so on
a lossy VAE (the 16 px canaries') a perfect copy is the round trip, not the stored image. The comparison is
recorded with the descriptor's settings (`training_images`), so a copy threshold holds only for the comparison
it was calibrated with.

A generation is a copy when its best similarity exceeds the copy threshold. The threshold is calibrated the way the
detector's is (`calibrate_copy_threshold`: the 1 - fpr quantile over reference prompts known not to be memorized
of their largest similarity to the training images), or, for a descriptor with a convention (SSCD: 0.5), that
convention when no calibrated one is given. For the shipped canaries the training images are the planted images
of their manifests (`canary_training_images`), so a canary's copy verdicts come from this same mechanism.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np

from memtest.audit.calibration import quantile_threshold, required_references
from memtest.evidence.base import Descriptor
from memtest.evidence.descriptors import choose_descriptor
from memtest.evidence.errors import EvidenceError
from memtest.evidence.generation import generate_images
from memtest.evidence.images import as_images, png_thumbnails, resize_to
from memtest.models.canaries import MANIFEST_NAME, CanaryManifest, load_manifest

if TYPE_CHECKING:
    from memtest.detection.scoring import Scorer
    from memtest.models.checkpoint import Checkpoint


# --------------------------------------------------------------------------------------------------
# copy thresholds

#: How the generations are compared with the training images (`comparison_settings`, module docstring).
AS_STORED = "as stored"
AS_STORED_OR_REPRODUCED = "as stored or as the checkpoint's VAE reproduces them, whichever is closer"


def comparison_settings(descriptor: Descriptor, reproduced: bool) -> dict[str, Any]:
    """What a copy threshold holds for: the descriptor's settings and how the training images are taken."""
    return {**descriptor.settings(), "training_images": AS_STORED_OR_REPRODUCED if reproduced else AS_STORED}


def calibrate_copy_threshold(similarities: Sequence[float] | np.ndarray, fpr: float) -> float:
    """The copy threshold at false-positive rate `fpr`: the (1 - fpr) quantile ("higher", as the detector's
    `memtest.audit.calibration.quantile_threshold`) of reference similarities, so at most a fraction `fpr` of the
    references lies above it.

    A reference similarity is one reference prompt's largest similarity of its generations to the training images
    (`Confirmation.similarity`), measured with the descriptor and settings the threshold will judge: the prompt is
    the unit, as in the detector's calibration. At least `required_references(fpr)` of them are needed."""
    if not 0.0 < fpr < 1.0:
        raise EvidenceError(f"The copy false-positive rate must be in (0, 1), got {fpr!r}.")
    values = np.asarray(similarities, dtype=np.float64).ravel()
    need = required_references(fpr)
    if values.size < need:
        raise EvidenceError(
            f"Calibrating a copy threshold at a false-positive rate of {fpr:g} needs at least {need} reference "
            f"similarities, got {values.size}. Confirm more reference prompts, or raise the rate to at least "
            f"{1.0 / max(values.size, 1):.3g}."
        )
    if not np.isfinite(values).all():
        raise EvidenceError("A reference similarity is not finite; a copy threshold cannot be built from it.")
    return quantile_threshold(values, fpr)


@dataclass(frozen=True)
class CopyThreshold:
    """A calibrated copy threshold and what it holds for: the descriptor settings it was measured under."""

    value: float
    fpr: float
    references: int
    descriptor: dict[str, Any]
    source: str = "calibrated"

    @classmethod
    def from_entry(cls, entry: dict[str, Any], source: str) -> CopyThreshold:
        """A calibration file's `copy_thresholds` entry (`to_dict`'s shape), with where it was found."""
        return cls(
            value=float(entry["value"]),
            fpr=float(entry["fpr"]),
            references=int(entry["references"]),
            descriptor=dict(entry["descriptor"]),
            source=source,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "fpr": self.fpr,
            "references": self.references,
            "descriptor": dict(self.descriptor),
            "source": self.source,
        }


def copy_threshold(
    similarities: Sequence[float] | np.ndarray, fpr: float, settings: dict[str, Any], source: str = "calibrated"
) -> CopyThreshold:
    """`calibrate_copy_threshold` with its provenance: the comparison's settings (`comparison_settings`), the
    rate and the count."""
    value = calibrate_copy_threshold(similarities, fpr)
    return CopyThreshold(value, float(fpr), int(np.size(similarities)), dict(settings), source)


def resolve_copy_threshold(
    threshold: float | CopyThreshold | None, descriptor: Descriptor, settings: dict[str, Any] | None = None
) -> tuple[float | None, str]:
    """The threshold a confirmation judges by, and where it comes from: a number as given, a `CopyThreshold`
    (checked to hold for the comparison's `settings`, by default `descriptor`'s against the training images as
    stored), the descriptor's convention, or none."""
    if isinstance(threshold, CopyThreshold):
        settings = comparison_settings(descriptor, False) if settings is None else settings
        if threshold.descriptor != settings:
            raise EvidenceError(
                f"The copy threshold {threshold.value:g} was calibrated with the settings {threshold.descriptor}, "
                f"but this confirmation uses {settings}. Calibrate it again with these (scripts/calibrate_copy.py "
                "adds it to a calibration file; a calibrating run with confirmation of all cases writes it), or "
                "confirm with the settings it was calibrated with."
            )
        return threshold.value, f"{threshold.source} at fpr {threshold.fpr:g} on {threshold.references} references"
    if threshold is not None:
        if not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
            raise EvidenceError(f"The copy threshold must be a finite number, got {threshold!r}.")
        return float(threshold), "given"
    if descriptor.convention is not None:
        return float(descriptor.convention), descriptor.convention_source
    return None, f"none: the {descriptor.name} descriptor has no convention; calibrate one (calibrate_copy_threshold)"


# --------------------------------------------------------------------------------------------------
# generation


@dataclass(frozen=True)
class Generations:
    """A prompt's images from the detector's initial noises, and what made them."""

    prompt: str
    seeds: tuple[int, ...]
    images: np.ndarray  # (n, H, W, 3) float32 in [0, 1]
    seconds: float
    guidance_scale: float
    num_inference_steps: int


def generate(
    scorer: Scorer,
    prompt: str,
    *,
    n: int | None = None,
    guidance_scale: float | None = None,
    num_inference_steps: int | None = None,
) -> Generations:
    """The prompt's images from the initial noises the detector scored (its first `n` seeds, default all of them)
    through the checkpoint's own pipeline (`memtest.evidence.generation.generate_images`), with the scorer's guidance
    scale and inference steps unless given."""
    if n is not None and (not isinstance(n, int) or n < 1):
        raise EvidenceError(f"The number of generations must be a positive integer, got {n!r}.")
    seeds = scorer.seeds_for(prompt, n)
    scale = scorer.settings.guidance_scale if guidance_scale is None else float(guidance_scale)
    steps = scorer.settings.num_inference_steps if num_inference_steps is None else int(num_inference_steps)
    started = time.perf_counter()
    images = generate_images(
        scorer.ckpt, scorer.noise(seeds), prompt=prompt, guidance_scale=scale, num_inference_steps=steps
    )
    return Generations(prompt, tuple(int(s) for s in seeds), images, time.perf_counter() - started, scale, steps)


# --------------------------------------------------------------------------------------------------
# confirmation


class ConfirmationEntry(TypedDict):
    """`Confirmation.to_dict()`: plain JSON types only."""

    prompt: str
    seeds: list[int]
    descriptor: dict[str, Any]
    maximum: float
    training_images: int
    similarities: list[list[float]]
    best: list[float]
    closest: list[int]
    similarity: float | None
    agreement: dict[str, float | None]
    threshold: float | None
    threshold_source: str
    copies: int | None
    copied: bool | None
    summary: str
    generation: dict[str, Any]
    seconds: dict[str, float]
    thumbnails: list[str]


@dataclass(frozen=True)
class Confirmation:
    """What confirming one prompt measured (module docstring). `images` are the generations themselves."""

    prompt: str
    seeds: tuple[int, ...]
    images: np.ndarray  # (n, H, W, 3) float32 in [0, 1]
    descriptor: str
    settings: dict[str, Any]
    choice: str
    maximum: float
    #: similarity of each generation (rows) to each training image (columns); no columns without training images
    similarities: np.ndarray
    #: mean and max similarity between two different generations; None for a single generation
    agreement_mean: float | None
    agreement_max: float | None
    threshold: float | None
    threshold_source: str
    generation: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def best(self) -> tuple[float, ...]:
        """Each generation's similarity to its closest training image (empty without training images)."""
        if self.similarities.shape[1] == 0:
            return ()
        return tuple(float(v) for v in self.similarities.max(axis=1))

    @property
    def closest(self) -> tuple[int, ...]:
        """Each generation's closest training image (its index), empty without training images."""
        if self.similarities.shape[1] == 0:
            return ()
        return tuple(int(i) for i in self.similarities.argmax(axis=1))

    @property
    def similarity(self) -> float | None:
        """The prompt's copy similarity: the largest similarity of any generation to any training image."""
        return max(self.best) if self.best else None

    @property
    def copies(self) -> int | None:
        """Generations above the threshold (None without a threshold or training images)."""
        if self.threshold is None or not self.best:
            return None
        return sum(b > self.threshold for b in self.best)

    @property
    def copied(self) -> bool | None:
        """Whether any generation is a copy (None when that cannot be said)."""
        copies = self.copies
        return None if copies is None else copies > 0

    @property
    def summary(self) -> str:
        """One line for a test report: copies against the threshold, the closest training image, the agreement."""
        n = len(self.images)
        agree = "" if self.agreement_mean is None else f"; agreement among generations {self.agreement_mean:.3f}"
        if not self.best:
            return f"no training images to compare with ({self.descriptor}){agree}"
        best = max(range(n), key=lambda i: self.best[i])
        closest = f"best {self.best[best]:.3f} (training image {self.closest[best]})"
        if self.threshold is None:
            return f"{closest} by {self.descriptor}, no copy threshold{agree}"
        return (
            f"{self.copies}/{n} generations above the {self.descriptor} copy threshold {self.threshold:.4g}, "
            f"{closest}{agree}"
        )

    def to_dict(self) -> ConfirmationEntry:
        """Plain JSON; the generations as base64 PNG thumbnails (`memtest.evidence.images.png_thumbnails`)."""
        return {
            "prompt": self.prompt,
            "seeds": list(self.seeds),
            "descriptor": {"name": self.descriptor, "settings": dict(self.settings), "choice": self.choice},
            "maximum": self.maximum,
            "training_images": int(self.similarities.shape[1]),
            "similarities": [[float(v) for v in row] for row in self.similarities],
            "best": list(self.best),
            "closest": list(self.closest),
            "similarity": self.similarity,
            "agreement": {"mean": self.agreement_mean, "max": self.agreement_max},
            "threshold": self.threshold,
            "threshold_source": self.threshold_source,
            "copies": self.copies,
            "copied": self.copied,
            "summary": self.summary,
            "generation": dict(self.generation),
            "seconds": dict(self.seconds),
            "thumbnails": png_thumbnails(self.images) if len(self.images) else [],
        }


def training_similarities(
    descriptor: Descriptor,
    embedded: np.ndarray,
    training: Sequence[np.ndarray],
    reproduced: Sequence[np.ndarray] | None = None,
) -> np.ndarray:
    """Similarity (n, k) of embedded generations to each of k training images: to the image as stored or, given
    `reproduced` (the same k images as the checkpoint's VAE reproduces them), to whichever of the two is closer."""
    if not training:
        return np.zeros((len(embedded), 0), dtype=np.float64)
    sims = np.asarray(descriptor.compare(embedded, descriptor.embed(training)), dtype=np.float64)
    if reproduced is not None:
        if len(reproduced) != len(training):
            raise EvidenceError(
                f"{len(reproduced)} reproduced training images for {len(training)} training images; reproduce each."
            )
        sims = np.maximum(sims, descriptor.compare(embedded, descriptor.embed(reproduced)))
    return sims


def reproduce_training(
    checkpoint: Checkpoint, training: np.ndarray | Sequence[np.ndarray], like: np.ndarray
) -> np.ndarray | None:
    """The training images as the checkpoint's VAE reproduces them (`Family.reproduce`), at the size of the
    generations `like` (n, H, W, 3): a training image of another size is resized to it first (bilinear, as a
    trainer resizes its images to the training resolution). None for a checkpoint without a VAE."""
    if checkpoint.vae is None:
        return None
    height, width = int(np.shape(like)[1]), int(np.shape(like)[2])
    train = [resize_to(img, height, width) for img in as_images(training, "training images")]
    if not train:
        return np.zeros((0, height, width, 3), dtype=np.float32)
    return checkpoint.family.reproduce(checkpoint, np.stack(train).astype(np.float32))


def compare_generations(
    generations: Generations,
    training: np.ndarray | Sequence[np.ndarray] | None = None,
    *,
    descriptor: str | Descriptor = "auto",
    threshold: float | CopyThreshold | None = None,
    reproduced: np.ndarray | Sequence[np.ndarray] | None = None,
) -> Confirmation:
    """Measure `generations` against the training images (if any; with `reproduced`, also against them as the
    checkpoint's VAE reproduces them, `reproduce_training`) and among themselves with one descriptor."""
    started = time.perf_counter()
    images = as_images(generations.images, "generations")
    train = as_images(training, "training images") if training is not None else []
    again = as_images(reproduced, "reproduced training images") if reproduced is not None and train else None
    if not images:
        raise EvidenceError(f"No generations of {generations.prompt!r} to compare.")
    choice = choose_descriptor(descriptor, images, train)
    d = choice.descriptor
    settings = comparison_settings(d, again is not None)
    value, source = resolve_copy_threshold(threshold, d, settings)
    gen = d.embed(images)
    sims = training_similarities(d, gen, train, again)
    mean = peak = None
    if len(images) > 1:
        pairs = d.compare(gen, gen)[np.triu_indices(len(images), k=1)]
        mean, peak = float(pairs.mean()), float(pairs.max())
    compared = time.perf_counter() - started
    return Confirmation(
        prompt=generations.prompt,
        seeds=generations.seeds,
        images=np.asarray(generations.images, dtype=np.float32),
        descriptor=d.name,
        settings=settings,
        choice=choice.reason,
        maximum=d.maximum,
        similarities=np.asarray(sims, dtype=np.float64),
        agreement_mean=mean,
        agreement_max=peak,
        threshold=value,
        threshold_source=source,
        generation={
            "n": len(images),
            "guidance_scale": generations.guidance_scale,
            "num_inference_steps": generations.num_inference_steps,
        },
        seconds={
            "generation": generations.seconds,
            "descriptor": compared,
            "total": generations.seconds + compared,
        },
    )


def confirm(
    scorer: Scorer,
    prompt: str,
    training: np.ndarray | Sequence[np.ndarray] | None = None,
    *,
    descriptor: str | Descriptor = "auto",
    threshold: float | CopyThreshold | None = None,
    n: int | None = None,
    guidance_scale: float | None = None,
    num_inference_steps: int | None = None,
    reproduce: bool = True,
) -> Confirmation:
    """Generate `prompt`'s images from the detector's initial noises on `scorer`'s checkpoint (`generate`) and
    compare them with `training` (the case's training images, (H, W, 3) in [0, 1]; `images.load_images` reads
    them from files), as stored and, unless `reproduce` is False, as the checkpoint's VAE reproduces them, and with
    each other (`compare_generations`)."""
    gens = generate(scorer, prompt, n=n, guidance_scale=guidance_scale, num_inference_steps=num_inference_steps)
    again = reproduce_training(scorer.ckpt, training, gens.images) if reproduce and training is not None else None
    return compare_generations(gens, training, descriptor=descriptor, threshold=threshold, reproduced=again)


# --------------------------------------------------------------------------------------------------
# the canaries' training images


def canary_manifests(checkpoint: Checkpoint | str | Path) -> list[CanaryManifest]:
    """The canary manifests behind a checkpoint: its folder's, and each LoRA adapter's (a shipped LoRA canary's
    manifest sits beside its adapter file). A folder path reads that folder's only; none: []."""
    folders: list[Path] = []
    if isinstance(checkpoint, (str, Path)):
        folders.append(Path(checkpoint))
    else:
        folders.append(Path(checkpoint.path))
        folders += [Path(str(a["path"])).parent for a in checkpoint.adapters if a.get("path")]
    return [load_manifest(f) for f in dict.fromkeys(folders) if (f / MANIFEST_NAME).is_file()]


def canary_planted(checkpoint: Checkpoint | str | Path) -> tuple[tuple[str, ...], np.ndarray]:
    """Every planted caption of the checkpoint's canary manifests and its training image, (P, H, W, 3) in [0, 1]."""
    planted = [p for m in canary_manifests(checkpoint) for p in m.planted]
    if not planted:
        return (), np.zeros((0, 0, 0, 3), dtype=np.float32)
    return tuple(p.caption for p in planted), np.stack([p.image() for p in planted])


def canary_training_images(checkpoint: Checkpoint | str | Path, prompt: str) -> np.ndarray | None:
    """The training image(s) a canary planted for `prompt`, (k, H, W, 3) in [0, 1], or None when no manifest
    behind the checkpoint plants the prompt (an ordinary caption has no single training image to compare with)."""
    captions, images = canary_planted(checkpoint)
    rows = [i for i, c in enumerate(captions) if c == prompt]
    return images[rows] if rows else None


__all__ = [
    "AS_STORED",
    "AS_STORED_OR_REPRODUCED",
    "Confirmation",
    "ConfirmationEntry",
    "CopyThreshold",
    "Generations",
    "calibrate_copy_threshold",
    "canary_manifests",
    "canary_planted",
    "canary_training_images",
    "compare_generations",
    "comparison_settings",
    "confirm",
    "copy_threshold",
    "generate",
    "reproduce_training",
    "resolve_copy_threshold",
    "training_similarities",
]
