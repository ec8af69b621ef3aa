"""Which detectors exist, by name: the module that implements each and the settings it reads (torch-free:
`memtest.detection.settings` reads it, so a setting a detector ignores is refused before anything loads).

A new detector is a module under `memtest/detection/detectors/` whose `DETECTOR` is a
`memtest.detection.detectors.base.Detector`, and one entry here. The first entry is the default metric.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DetectorSpec:
    """A detector's entry: its module (whose `DETECTOR` implements it), the ScoreSettings fields beyond the ones
    every detector reads that change its score (`reads`), and the smallest n and num_inference_steps it scores."""

    module: str
    reads: frozenset[str]
    min_n: int = 1
    min_inference_steps: int = 1
    #: the values of the `variant` setting it takes, the first the default (none: it has no variants)
    variants: tuple[str, ...] = ()


#: sharpness and score_norm walk the sampler's first `steps` steps (memtest.detection.detectors.trajectory)
TRAJECTORY_READS = frozenset({"method", "steps", "num_inference_steps", "guidance_scale", "fd_h", "flow_steps"})

#: metric name -> its entry
DETECTORS: dict[str, DetectorSpec] = {
    "sharpness": DetectorSpec("memtest.detection.detectors.sharpness", TRAJECTORY_READS),
    "score_norm": DetectorSpec("memtest.detection.detectors.score_norm", TRAJECTORY_READS),
    "tiled_l2": DetectorSpec(
        "memtest.detection.detectors.tiled_l2", frozenset({"num_inference_steps", "guidance_scale"}), min_n=2
    ),
    "anisotropy": DetectorSpec(
        "memtest.detection.detectors.anisotropy", frozenset({"num_inference_steps", "gamma"}), min_inference_steps=3
    ),
    "attention_entropy": DetectorSpec(
        "memtest.detection.detectors.attention_entropy",
        frozenset({"variant", "num_inference_steps", "guidance_scale"}),
        variants=("le", "ae"),
    ),
    "bright_ending": DetectorSpec(
        "memtest.detection.detectors.bright_ending", frozenset({"steps", "num_inference_steps", "guidance_scale"})
    ),
}

__all__ = ["DETECTORS", "TRAJECTORY_READS", "DetectorSpec"]
