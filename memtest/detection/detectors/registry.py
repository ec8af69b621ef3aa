"""Which detectors exist, by name, and the module that implements each (torch-free: settings reads it).

A new detector is a module under `memtest/detection/detectors/` whose `DETECTOR` is a
`memtest.detection.detectors.base.Detector`, and one line here. The first entry is the default metric.
"""

from __future__ import annotations

#: metric name -> the module whose `DETECTOR` implements it
DETECTORS: dict[str, str] = {
    "sharpness": "memtest.detection.detectors.sharpness",
    "score_norm": "memtest.detection.detectors.score_norm",
    "tiled_l2": "memtest.detection.detectors.tiled_l2",
    "anisotropy": "memtest.detection.detectors.anisotropy",
}

__all__ = ["DETECTORS"]
