"""Canary checkpoints: tiny text-to-image models with planted memorisation, and the tool that builds them.

Two canaries ship inside the package (`memtest/zoo/canaries/`):

- ``zoo:base``: trained on the digits grammar with no planted captions;
- ``zoo:finetuned``: ``zoo:base`` fine-tuned on data with 10 planted captions, each tied to one image
  that the model reproduces. It is memtest's default checkpoint, so a run that names none shows the
  gate catching real positives.

Importing this package does not import torch; training (`train_canary`) and the alignment classifier
load what they need when called.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from memtest.defaults import DEFAULT_CHECKPOINT  # "zoo:finetuned": audited when no checkpoint is named
from memtest.models.canaries import (
    MANIFEST_NAME,
    ZOO_PREFIX,
    CanaryManifest,
    PlantedCaption,
    adapter_names,
    canaries_dir,
    canary_folder,
    is_zoo_name,
    load_manifest,
    resolve_zoo,
    zoo_names,
)

if TYPE_CHECKING:
    from memtest.zoo.data import CanaryData
    from memtest.zoo.train import Recipe

__all__ = [
    "DEFAULT_CHECKPOINT",
    "MANIFEST_NAME",
    "ZOO_PREFIX",
    "CanaryManifest",
    "PlantedCaption",
    "adapter_names",
    "canaries_dir",
    "canary_folder",
    "is_zoo_name",
    "load_manifest",
    "resolve_zoo",
    "train_canary",
    "zoo_main",
    "zoo_names",
]


def train_canary(
    out: str | Path,
    data: CanaryData | None = None,
    recipe: Recipe | None = None,
    **kwargs: Any,
) -> CanaryManifest:
    """Train a canary checkpoint; see `memtest.zoo.train.train_canary` (imports torch)."""
    from memtest.zoo.train import train_canary as _train

    return _train(out, data=data, recipe=recipe, **kwargs)


def zoo_main(argv: list[str] | None = None) -> int:
    """`memtest zoo ...`: list, show, train and write suites for canary checkpoints."""
    from memtest.zoo.cli import main

    return main(argv)
