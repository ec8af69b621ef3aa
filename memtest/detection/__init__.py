"""Scorer → metrics: the scoring settings, seeds and initial noise, the metrics (sharpness, score norm), the
lean forward-mode rules that differentiate through attention, the batched scorer, the Hessian spectrum and
closed-form probes. Built on memtest.models; knows nothing of suites, gates or front ends."""
