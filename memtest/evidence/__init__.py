"""Evidence: what a flag shows. A flagged prompt (first-step sharpness above the calibrated threshold) is confirmed
by generating its images from the initial noises the detector scored and comparing them with the training images,
and with each other, through a copy descriptor.

- `images`: training images read safely (byte and pixel limits, decompression bombs refused, fully decoded);
- `base`, `pixel`, `sscd`, `descriptors`: the copy descriptors behind one interface (`Descriptor`), by name
  (`DESCRIPTORS`: "pixel", a normalised tiled ℓ2; "sscd", Meta's SSCD through ONNX Runtime) or "auto";
- `confirm`: generation from the detector's noises, the comparison (`Confirmation`), copy thresholds calibrated
  like the detector's (`calibrate_copy_threshold`), and the canaries' planted images (`canary_training_images`).

Built on memtest.models, memtest.detection, memtest.mitigation's images and memtest.audit.calibration; torch loads
only when something is generated.
"""

from __future__ import annotations

from memtest.evidence.base import Descriptor
from memtest.evidence.confirm import (
    Confirmation,
    ConfirmationEntry,
    CopyThreshold,
    Generations,
    calibrate_copy_threshold,
    canary_manifests,
    canary_planted,
    canary_training_images,
    compare_generations,
    confirm,
    copy_threshold,
    generate,
    resolve_copy_threshold,
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
    "confirm",
    "copy_threshold",
    "generate",
    "load_image",
    "load_images",
    "make_descriptor",
    "resolve_copy_threshold",
    "sscd_available",
]
