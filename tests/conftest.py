"""Shared fixtures: tiny real diffusers checkpoints built offline, once per test process."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Iterator
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


SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Torch on one thread for a module of tiny models: more threads only add synchronisation, and on a
    shared machine they were 40x slower. Use with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def load_script() -> Callable[[str], Any]:
    """Import scripts/<name>.py as a module (scripts are not a package; they import their siblings)."""

    def load(name: str) -> Any:
        spec = importlib.util.spec_from_file_location(f"_memtest_script_{name}", SCRIPTS / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        return module

    return load


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
def tiny_sdxl_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from memtest.zoo.tiny import TinyConfig, build_sdxl_pipeline, save_pipeline

    pipe = build_sdxl_pipeline(CAPTIONS * 4, TinyConfig(), seed=0)
    return save_pipeline(pipe, tmp_path_factory.mktemp("ckpt") / "tiny-sdxl")


@pytest.fixture(scope="session")
def tiny_eps(tiny_eps_path: Path) -> Any:
    import memtest

    return memtest.load_checkpoint(tiny_eps_path, device="cpu")


POOL = [
    f"a {style} of a {what}"
    for style in ("photo", "sketch", "print")
    for what in ("digit", "red digit", "blue digit", "small number", "large number", "even number", "odd number")
]
POOL += ["zorblax poster of 3", "quux poster of 8", "a render of 7"]


@pytest.fixture(scope="session")
def gate_env(tiny_eps_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny checkpoint, a suite and a calibration whose outcomes are known in advance.

    Scores are deterministic, so the fixture scores candidates directly and builds a suite where a
    clean case passes, a clean case fails (above the threshold) and a memorized case is flagged.
    """
    import torch

    import memtest
    from memtest.audit.calibration import calibrate, save_calibration
    from memtest.detection.scoring import Scorer, ScoreSettings
    from memtest.threads import apply_threads

    root = tmp_path_factory.mktemp("gate")
    ckpt = memtest.load_checkpoint(tiny_eps_path, device="cpu")
    scorer = Scorer(ckpt, ScoreSettings(n=1))
    # Score on the threads a memtest run uses (scores depend on the count), whatever a module's
    # `one_torch_thread` left set in this xdist worker when the fixture is first asked for.
    threads = torch.get_num_threads()
    apply_threads()
    try:
        ranked = sorted(scorer.score(POOL), key=lambda r: r.score)
    finally:
        torch.set_num_threads(threads)
    assert len({r.score for r in ranked}) == len(ranked)
    # The two lowest-scoring prompts lie below every reference, the highest ones above all of them:
    # the outcomes follow whatever the random weights are.
    refs = ranked[2:16]
    cal = calibrate(
        [r.score for r in refs], 0.1, scorer.identity(), reference_suite="mini", reference_version="1",
        checkpoint=str(tiny_eps_path),
    )  # fmt: skip
    cal_path = save_calibration(cal, root / "cal.json")
    cases = [
        ("clean-ok", ranked[0], "clean", "passed"),
        ("clean-bad", ranked[-2], "clean", "failed"),
        ("mem-caught", ranked[-1], "memorized", "passed"),
        ("mem-missed", ranked[1], "memorized", "failed"),
    ]
    lines = [
        "memtest_suite: 1", "name: mini", 'version: "1"', "card:", "  description: plugin test suite",
        "cases:",
    ]  # fmt: skip
    for cid, r, exp, _ in cases:
        lines.append(f'  - {{id: {cid}, prompt: "{r.prompt}", expectation: {exp}}}')
    for i, r in enumerate(refs):
        lines.append(f'  - {{id: ref-{i:02d}, prompt: "{r.prompt}", expectation: reference}}')
    suite = root / "mini.yaml"
    suite.write_text("\n".join(lines) + "\n")
    return {
        "checkpoint": tiny_eps_path,
        "suite": suite,
        "calibration": cal_path,
        "threshold": cal.threshold,
        "expected": {cid: outcome for cid, _, _, outcome in cases},
        "scores": {cid: r.score for cid, r, _, _ in cases},
        "reference_scores": [r.score for r in refs],
    }
