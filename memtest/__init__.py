"""memtest: audit text-to-image diffusion checkpoints for training-data memorization.

`import memtest` is cheap: torch-backed parts load on first use, so the pytest plugin stays inert
(no torch import) unless `--memtest` is given.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import CalibrationError, CheckpointError, MemtestError, ResultsError, ScoringError, SuiteError

__version__ = "0.1.0"

_LAZY = {
    "load_checkpoint": "memtest.checkpoint",
    "Checkpoint": "memtest.checkpoint",
    "score_prompts": "memtest.scoring",
    "Scorer": "memtest.scoring",
    "ScoreSettings": "memtest.scoring",
    "PromptScore": "memtest.scoring",
}

if TYPE_CHECKING:
    from .checkpoint import Checkpoint, load_checkpoint
    from .scoring import PromptScore, Scorer, ScoreSettings, score_prompts


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'memtest' has no attribute {name!r}")
    import importlib

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
