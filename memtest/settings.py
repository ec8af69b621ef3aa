"""Scoring settings, importable without torch (the plugin reads them at start-up)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from .errors import ScoringError

METRICS: tuple[str, ...] = ("sharpness", "score_norm")
METHODS: tuple[str, ...] = ("jvp", "fd", "fd-forward")


@dataclass(frozen=True)
class ScoreSettings:
    """Everything a user chooses about scoring. `batch_size` never changes a score."""

    metric: str = "sharpness"
    method: str = "fd"
    n: int = 4
    seed: int = 0
    per_prompt_seeds: bool = False
    steps: int = 1
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    batch_size: int = 8
    fd_h: float | None = None

    def validate(self) -> ScoreSettings:
        if self.metric not in METRICS:
            raise ScoringError(f"Unknown metric {self.metric!r}. Choose one of: {', '.join(METRICS)}.")
        if self.method not in METHODS:
            raise ScoringError(f"Unknown method {self.method!r}. Choose one of: {', '.join(METHODS)}.")
        for name in ("n", "steps", "num_inference_steps", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ScoringError(f"Setting {name} must be a positive integer, got {value!r}.")
        if self.steps > self.num_inference_steps:
            raise ScoringError(
                f"steps={self.steps} exceeds num_inference_steps={self.num_inference_steps}; "
                "the metric averages over the first `steps` sampling steps."
            )
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ScoringError(f"seed must be a non-negative integer, got {self.seed!r}.")
        if self.fd_h is not None and not (self.fd_h > 0 and math.isfinite(self.fd_h)):
            raise ScoringError(f"fd_h must be a positive finite number, got {self.fd_h!r}.")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
