"""Shared fixtures: tiny real diffusers checkpoints built offline, once per test process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

CAPTIONS = [
    "zorblax poster of 3",
    "a photo of a red digit",
    "a sketch of an even number",
    "a painting of a small number",
    "a drawing of an odd number",
    "a render of a large number",
]


def _build(root: Path, prediction_type: str) -> Path:
    from memtest.zoo.tiny import TinyConfig, build_pipeline, save_pipeline

    pipe = build_pipeline(CAPTIONS * 4, TinyConfig(prediction_type=prediction_type), seed=0)
    return save_pipeline(pipe, root / f"tiny-{prediction_type}")


@pytest.fixture(scope="session")
def tiny_eps_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp("ckpt"), "epsilon")


@pytest.fixture(scope="session")
def tiny_v_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp("ckpt"), "v_prediction")


@pytest.fixture(scope="session")
def tiny_eps(tiny_eps_path: Path) -> Any:
    import memtest

    return memtest.load_checkpoint(tiny_eps_path, device="cpu")
