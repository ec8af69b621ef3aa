"""The one interface every detector implements, the scorer's building blocks it scores with, and its loader.

A detector decides, and nothing outside its module branches on which detector runs:

- which settings change its score (`reads`; a setting it does not read must stay at its default, or scoring
  refuses it, naming the setting: a number measured under a setting that did nothing must not look as if the
  setting had been applied),
- what else it refuses (a family, a noise process, n = 1, ...), with the reason (`check`),
- the keys it adds to the calibration identity (`identity`; the scorer adds the ones every score shares),
- how it scores a batch of generations (`score`): given the scorer's building blocks (`Blocks`: noises,
  conditionings, the model's two branches, the sampler's process and steps) and the batch the scorer prepared
  (`Batch`), one value per generation, higher = more memorized; the scorer averages them per prompt.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from memtest.detection.detectors.registry import DETECTORS
from memtest.detection.settings import ScoreSettings
from memtest.errors import ScoringError, option

if TYPE_CHECKING:
    import torch

    from memtest.models.families.base import Checkpoint, Cond, Process

#: Settings every detector reads: which generations (n, seeds) and how they are batched (never a score).
ALWAYS_READ: frozenset[str] = frozenset({"metric", "n", "seed", "per_prompt_seeds", "batch_size"})
#: ScoreSettings fields that are options of the option table (messages name them through `option`).
_OPTIONS: frozenset[str] = frozenset({"metric", "method", "n", "seed", "steps", "flow_steps", "batch_size"})


def setting_name(name: str) -> str:
    """How a message names the ScoreSettings field `name`: the option when it is one, else the keyword."""
    return option(name) if name in _OPTIONS else f"`{name}`"


class Blocks(Protocol):
    """What a detector may use of the scorer (memtest.detection.scoring.Scorer): its settings, checkpoint,
    noise process and measured timesteps, and the building blocks that batch, cache and run the model."""

    settings: ScoreSettings
    ckpt: Checkpoint
    process: Process
    timesteps: list[Any]

    @property
    def fd_h(self) -> float: ...

    def embed(self, prompts: Sequence[str]) -> Cond: ...

    def null(self, rows: int = 1) -> Cond: ...

    def outputs(
        self, x: torch.Tensor, t: Any, c_c: Cond, c_0: Cond, x_0: torch.Tensor | None = None
    ) -> torch.Tensor: ...

    def branches(
        self, x: torch.Tensor, t: Any, c_c: Cond, c_0: Cond, *, first: bool, prompts: int
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def s_delta_fn(self, t: Any, c_c: Cond, c_0: Cond) -> Callable[[torch.Tensor], torch.Tensor]: ...


@dataclass(frozen=True)
class Batch:
    """One batch the scorer prepared: `prompts` (padded to the batch size), each with its seeds; the initial
    noises x (one row per generation, a prompt's n generations in a row) and both branches' conditionings with
    one row per generation."""

    prompts: tuple[str, ...]
    seeds: tuple[tuple[int, ...], ...]
    x: torch.Tensor
    c_c: Cond
    c_0: Cond


class Detector(ABC):
    """One memorization metric (module docstring). Instances are stateless; the module's `DETECTOR` is the one."""

    #: The registry name (`registry.DETECTORS`), the value of the `metric` setting.
    name: ClassVar[str]
    #: Where the metric comes from, one line (records and docs).
    source: ClassVar[str]
    #: ScoreSettings fields beyond `ALWAYS_READ` that change this detector's score.
    reads: ClassVar[frozenset[str]]

    def check(self, blocks: Blocks) -> None:
        """Refuse what this detector cannot score: by default, any setting it does not read that is not at its
        default. Subclasses add their own refusals (and call this)."""
        s, default = blocks.settings, ScoreSettings()
        for f in fields(ScoreSettings):
            if f.name in ALWAYS_READ or f.name in self.reads:
                continue
            value = getattr(s, f.name)
            if value != getattr(default, f.name):
                raise ScoringError(
                    f"The {self.name} metric does not use the setting {setting_name(f.name)} (got {value!r}): its "
                    f"score would not change with it. Leave it at its default ({getattr(default, f.name)!r}), or "
                    f"choose a metric that reads it."
                )

    @abstractmethod
    def identity(self, blocks: Blocks) -> dict[str, Any]:
        """This detector's keys of the calibration identity: every setting and constant that changes its score."""

    @abstractmethod
    def score(self, blocks: Blocks, batch: Batch) -> torch.Tensor:
        """One value per generation of `batch` (shape (rows,), float64, on any device), higher = more memorized."""


def load_detector(name: str) -> Detector:
    """The detector registered as `name` (`registry.DETECTORS`)."""
    if name not in DETECTORS:
        raise ScoringError(f"Unknown metric {name!r}. Choose one of: {', '.join(DETECTORS)}.")
    found = getattr(importlib.import_module(DETECTORS[name]), "DETECTOR", None)
    if not isinstance(found, Detector) or found.name != name:
        raise ScoringError(f"Module {DETECTORS[name]} does not define the detector {name!r} as DETECTOR.")
    return found


__all__ = ["ALWAYS_READ", "Batch", "Blocks", "Detector", "load_detector", "setting_name"]
