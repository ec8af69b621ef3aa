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

import difflib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memtest.defaults import DEFAULT_CHECKPOINT  # "zoo:finetuned": audited when no checkpoint is named
from memtest.errors import ZooError
from memtest.zoo.manifest import MANIFEST_NAME, CanaryManifest, PlantedCaption, load_manifest

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
    "is_zoo_name",
    "load_manifest",
    "resolve_checkpoint",
    "resolve_zoo",
    "train_canary",
    "zoo_main",
    "zoo_names",
]

ZOO_PREFIX = "zoo:"


def canaries_dir() -> Path:
    """The folder of shipped canaries (inside the installed package)."""
    return Path(__file__).resolve().parent / "canaries"


def zoo_names() -> list[str]:
    """Names of the shipped canaries (folders with a model_index.json)."""
    root = canaries_dir()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "model_index.json").is_file())


def adapter_names() -> list[str]:
    """Names of the shipped LoRA canaries: folders with a manifest but no model_index.json (each holds one
    adapter file, loaded on the base its manifest names, e.g. `--memtest-lora zoo:lora`)."""
    root = canaries_dir()
    if not root.is_dir():
        return []
    return sorted(
        p.name for p in root.iterdir() if (p / MANIFEST_NAME).is_file() and not (p / "model_index.json").is_file()
    )


def is_zoo_name(name: str) -> bool:
    return name.startswith(ZOO_PREFIX)


def resolve_zoo(name: str) -> Path:
    """`zoo:base`, `zoo:finetuned`, `zoo:lora` (or the bare names) -> the shipped canary's folder."""
    bare = name[len(ZOO_PREFIX) :] if is_zoo_name(name) else name
    names = sorted(zoo_names() + adapter_names())
    if bare in names:
        return canaries_dir() / bare
    close = difflib.get_close_matches(bare, names, n=1)
    hint = f" Did you mean '{ZOO_PREFIX}{close[0]}'?" if close else ""
    available = ", ".join(ZOO_PREFIX + n for n in names) or "none (the package was installed without them)"
    raise ZooError(f"Unknown canary '{name}'.{hint} Available: {available}")


def resolve_checkpoint(name_or_path: str | Path) -> Path:
    """A `zoo:` name or a path to a checkpoint folder -> the folder (which must exist)."""
    if isinstance(name_or_path, str) and is_zoo_name(name_or_path):
        return resolve_zoo(name_or_path)
    p = Path(name_or_path)
    if not (p / "model_index.json").is_file():
        raise ZooError(
            f"{p} is not a diffusers checkpoint folder (no model_index.json); pass a folder saved with "
            f"save_pretrained or one of {', '.join(ZOO_PREFIX + n for n in zoo_names())}"
        )
    return p


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
