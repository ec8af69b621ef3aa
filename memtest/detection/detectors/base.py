"""The one interface every detector implements, the scorer's building blocks it scores with, and its loader.

A detector decides, and nothing outside its module branches on which detector runs:

- which settings change its score (`reads`, from its registry entry; a setting it does not read must stay at
  its default, or `ScoreSettings.validate` refuses it, naming the setting: a number measured under a setting that
  did nothing must not look as if the setting had been applied),
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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from memtest.detection.detectors.registry import DETECTORS
from memtest.detection.settings import ScoreSettings
from memtest.errors import ScoringError

if TYPE_CHECKING:
    import torch

    from memtest.models.families.base import Checkpoint, Cond, Process


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
    #: Whether it measures along the sampler's trajectory like the others that do, so several can be measured on
    #: one walk (`trajectory.walk`; `memtest.detection.scoring.score_together`).
    shares_walk: ClassVar[bool] = False

    @property
    def reads(self) -> frozenset[str]:
        """ScoreSettings fields beyond `settings.ALWAYS_READ` that change this detector's score (its registry
        entry, which `ScoreSettings.validate` enforces before anything loads)."""
        return DETECTORS[self.name].reads

    def check(self, blocks: Blocks) -> None:
        """Refuse what this detector cannot score on this checkpoint (a family, a missing component), with the
        reason. Settings were checked already (`ScoreSettings.check_detector`). By default: nothing more."""
        return None

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
    module = DETECTORS[name].module
    found = getattr(importlib.import_module(module), "DETECTOR", None)
    if not isinstance(found, Detector) or found.name != name:
        raise ScoringError(f"Module {module} does not define the detector {name!r} as DETECTOR.")
    return found


__all__ = ["Batch", "Blocks", "Detector", "load_detector"]
