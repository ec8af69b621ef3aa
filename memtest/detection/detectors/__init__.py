"""Detectors: each memorization metric is one module behind `memtest.detection.detectors.base.Detector`.

`registry.DETECTORS` names them (torch-free: `memtest.detection.settings.METRICS` is its keys, and the plugin
reads those at start-up); `base.load_detector` imports the one a scorer uses. Nothing else branches on which
detector runs: the scorer builds a batch (initial noises, conditionings) and hands it to the detector.
"""
