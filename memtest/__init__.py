"""memtest: audit text-to-image diffusion checkpoints for training-data memorization.

The package follows the data: `models` (checkpoint → family) → `detection` (scorer → metrics) → `audit`
(calibration → gate) → `report`, with `mitigation` beside the gate and `zoo` (canary training) on top.

`import memtest` is cheap: torch-backed parts load on first use, so the pytest plugin stays inert
(no torch import) unless it is asked to audit.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

from memtest._version import __version__
from memtest.errors import CalibrationError, CheckpointError, MemtestError, ResultsError, ScoringError, SuiteError

_LAZY = {
    "load_checkpoint": "memtest.models.checkpoint",
    "Checkpoint": "memtest.models.checkpoint",
    "score_prompts": "memtest.detection.scoring",
    "Scorer": "memtest.detection.scoring",
    "ScoreSettings": "memtest.detection.scoring",
    "PromptScore": "memtest.detection.scoring",
}

#: Import paths of the flat layout (0.1) that README and docs named, kept for one release: importing one
#: gives the module at its new place, with a DeprecationWarning naming it.
MOVED: dict[str, str] = {
    "memtest.adapters": "memtest.models.adapters",
    "memtest.calibration": "memtest.audit.calibration",
    "memtest.checkpoint": "memtest.models.checkpoint",
    "memtest.closed_form": "memtest.detection.closed_form",
    "memtest.eigen": "memtest.detection.eigen",
    "memtest.families": "memtest.models.families",
    "memtest.locate": "memtest.models.locate",
    "memtest.metrics": "memtest.detection.metrics",
    "memtest.results": "memtest.audit.results",
    "memtest.scoring": "memtest.detection.scoring",
    "memtest.settings": "memtest.detection.settings",
    "memtest.suites": "memtest.audit.suites",
    "memtest.zoo.manifest": "memtest.models.canaries",
}


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves an old import path as the module at its new place (the same module object)."""

    def __init__(self) -> None:
        self._specs: dict[str, importlib.machinery.ModuleSpec | None] = {}

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        new = MOVED[spec.name]
        warnings.warn(
            f"{spec.name} moved to {new}; the old path goes in the next release.", DeprecationWarning, stacklevel=2
        )
        module = importlib.import_module(new)
        self._specs[new] = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # The import system has just stamped the alias's spec on the module: give it back its own.
        module.__spec__ = self._specs[module.__name__]


if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
    sys.meta_path.append(_MovedFinder())

if TYPE_CHECKING:
    from memtest.detection.scoring import PromptScore, Scorer, ScoreSettings, score_prompts
    from memtest.models.checkpoint import Checkpoint, load_checkpoint


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'memtest' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "CalibrationError",
    "Checkpoint",
    "CheckpointError",
    "MemtestError",
    "PromptScore",
    "ResultsError",
    "ScoreSettings",
    "Scorer",
    "ScoringError",
    "SuiteError",
    "__version__",
    "load_checkpoint",
    "score_prompts",
]
