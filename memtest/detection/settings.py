"""Scoring settings, importable without torch (the plugin reads them at start-up)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from memtest.detection.detectors.registry import DETECTORS
from memtest.errors import ScoringError, option

#: The detectors by name (memtest.detection.detectors.registry); the first is the default.
METRICS: tuple[str, ...] = tuple(DETECTORS)
#: How the Hessian-vector product is taken (ScoreSettings.method). Not memtest.mitigation's methods.
HVP_METHODS: tuple[str, ...] = ("jvp", "fd", "fd-forward")

#: Settings every detector reads: which generations (n, seeds) and how they are batched (never a score).
ALWAYS_READ: frozenset[str] = frozenset({"metric", "n", "seed", "per_prompt_seeds", "batch_size"})
#: ScoreSettings fields that are options of the option table (messages name them through `option`).
_OPTION_FIELDS: frozenset[str] = frozenset(
    {"metric", "method", "n", "seed", "steps", "flow_steps", "batch_size", "variant", "gamma"}
)


def setting_name(name: str) -> str:
    """How a message names the ScoreSettings field `name`: the option when it is one, else the keyword."""
    return option(name) if name in _OPTION_FIELDS else f"`{name}`"


#: Flow-matching checkpoints (SD3, Flux): guided Euler steps taken from x_1 (s = 1) before the metric is
#: measured. At s = 1 the ideal model's sharpness is zero for every prompt (docs/method.md, flow matching), so
#: the default measures at the first noise level s < 1 that the sampler reaches.
DEFAULT_FLOW_STEPS = 1


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
    #: Flow-matching checkpoints only: Euler steps before measuring (None: DEFAULT_FLOW_STEPS; 0 measures at
    #: s = 1). Setting it for a DDPM-family checkpoint is an error.
    flow_steps: int | None = None
    #: `anisotropy` only: (γ1, γ2), the weights of the score-difference norm at t ≈ T and of the cosine at t ≈ 0
    #: (None: the detector's default, Asthana & Belagiannis's SD v1.4 values). Other metrics refuse it.
    gamma: tuple[float, float] | None = None
    #: A detector's variant, for detectors that have several (attention_entropy: "le" or "ae"); None: its
    #: default. Others refuse it.
    variant: str | None = None

    def validate(self) -> ScoreSettings:
        if self.metric not in METRICS:
            raise ScoringError(f"Unknown metric {self.metric!r}. Choose one of: {', '.join(METRICS)}.")
        if self.method not in HVP_METHODS:
            raise ScoringError(f"Unknown method {self.method!r}. Choose one of: {', '.join(HVP_METHODS)}.")
        for name in ("n", "steps", "num_inference_steps", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ScoringError(f"Setting {name} must be a positive integer, got {value!r}.")
        if self.steps > self.num_inference_steps:
            raise ScoringError(
                f"steps={self.steps} exceeds num_inference_steps={self.num_inference_steps}; "
                "the metric averages over the first `steps` sampling steps."
            )
        if self.flow_steps is not None:
            fs = self.flow_steps
            if not isinstance(fs, int) or isinstance(fs, bool) or fs < 0:
                raise ScoringError(f"Setting flow_steps must be a non-negative integer, got {fs!r}.")
            if fs + self.steps > self.num_inference_steps:
                raise ScoringError(
                    f"flow_steps={fs} plus steps={self.steps} exceeds num_inference_steps={self.num_inference_steps}; "
                    "the metric is measured on the `steps` sampling steps after the first `flow_steps`."
                )
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ScoringError(f"seed must be a non-negative integer, got {self.seed!r}.")
        if self.fd_h is not None and not (self.fd_h > 0 and math.isfinite(self.fd_h)):
            raise ScoringError(f"fd_h must be a positive finite number, got {self.fd_h!r}.")
        self.check_detector()
        if self.gamma is not None:
            g = self.gamma
            if not (
                isinstance(g, tuple | list)
                and len(g) == 2
                and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in g)
            ):
                raise ScoringError(f"gamma must be a pair of finite numbers (γ1, γ2), got {g!r}.")
        return self

    def check_detector(self) -> None:
        """Refuse a setting the metric's detector does not read when it is not at its default (a number measured
        under a setting that did nothing must not look as if it had applied), and n or num_inference_steps below
        what the detector needs."""
        spec = DETECTORS[self.metric]
        default = ScoreSettings()
        for f in fields(self):
            if f.name in ALWAYS_READ or f.name in spec.reads:
                continue
            value = getattr(self, f.name)
            if value != getattr(default, f.name):
                raise ScoringError(
                    f"The {self.metric} metric does not use the setting {setting_name(f.name)} (got {value!r}): its "
                    f"score would not change with it. Leave it at its default ({getattr(default, f.name)!r}), or "
                    "choose a metric that reads it."
                )
        if self.variant is not None and self.variant not in spec.variants:
            raise ScoringError(
                f"Unknown variant {self.variant!r} of the {self.metric} metric. "
                f"Choose one of: {', '.join(spec.variants)}."
            )
        if self.n < spec.min_n:
            raise ScoringError(
                f"The {self.metric} metric compares a prompt's generations with one another, so it needs at least "
                f"{spec.min_n}: got n={self.n}. Score with {option('n', max(4, spec.min_n))} (or more)."
            )
        if self.num_inference_steps < spec.min_inference_steps:
            raise ScoringError(
                f"The {self.metric} metric needs at least {spec.min_inference_steps} inference steps, got "
                f"num_inference_steps={self.num_inference_steps}."
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
