"""Evidence: what a flag shows. A flagged prompt (first-step sharpness above the calibrated threshold) is confirmed
by generating its images from the initial noises the detector scored and comparing them with the training images,
and with each other, through a copy descriptor.

- `images`: training images read safely (byte and pixel limits, decompression bombs refused, fully decoded);
- `base`, `pixel`, `sscd`, `descriptors`: the copy descriptors behind one interface (`Descriptor`), by name
  (`DESCRIPTORS`: "pixel", a normalised tiled ℓ2; "sscd", Meta's SSCD through ONNX Runtime) or "auto";
- `confirm`: generation from the detector's noises, the comparison (`Confirmation`; training images as stored or
  as the checkpoint's VAE reproduces them, `reproduce_training`), copy thresholds calibrated like the detector's
  (`calibrate_copy_threshold`), and the canaries' planted images (`canary_training_images`). The mitigation's
  copy counts (`memtest.mitigation.CopyReference`) use the same comparison and threshold.

- `generation`: a prompt's images from given initial noises through the checkpoint's pipeline (shared with the
  mitigations).

Built on memtest.models, memtest.detection and memtest.audit.calibration (memtest.mitigation is built on it); torch
loads only when something is generated.
"""

from __future__ import annotations

from memtest.evidence.base import Descriptor
from memtest.evidence.confirm import (
    AS_STORED,
    AS_STORED_OR_REPRODUCED,
    Confirmation,
    ConfirmationEntry,
    CopyThreshold,
    Generations,
    calibrate_copy_threshold,
    canary_manifests,
    canary_planted,
    canary_training_images,
    compare_generations,
    comparison_settings,
    confirm,
    copy_threshold,
    generate,
    reproduce_training,
    resolve_copy_threshold,
    training_similarities,
)
from memtest.evidence.descriptors import (
    CHOICES,
    DESCRIPTORS,
    SSCD_MIN_SIDE,
    Choice,
    choose_descriptor,
    make_descriptor,
)
from memtest.evidence.errors import EvidenceError
from memtest.evidence.images import MAX_BYTES, MAX_PIXELS, load_image, load_images
from memtest.evidence.pixel import PixelDescriptor
from memtest.evidence.sscd import SSCDDescriptor, sscd_available

__all__ = [
    "AS_STORED",
    "AS_STORED_OR_REPRODUCED",
    "CHOICES",
    "DESCRIPTORS",
    "MAX_BYTES",
    "MAX_PIXELS",
    "SSCD_MIN_SIDE",
    "Choice",
    "Confirmation",
    "ConfirmationEntry",
    "CopyThreshold",
    "Descriptor",
    "EvidenceError",
    "Generations",
    "PixelDescriptor",
    "SSCDDescriptor",
    "calibrate_copy_threshold",
    "canary_manifests",
    "canary_planted",
    "canary_training_images",
    "choose_descriptor",
    "compare_generations",
    "comparison_settings",
    "confirm",
    "copy_threshold",
    "generate",
    "load_image",
    "load_images",
    "make_descriptor",
    "reproduce_training",
    "resolve_copy_threshold",
    "sscd_available",
    "training_similarities",
]
