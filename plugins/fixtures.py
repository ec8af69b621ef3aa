"""Fixtures for custom assertions: the loaded checkpoint/scorer, suite cases and mitigation.

@pytest.mark.memtest_suite("canary-finetuned")
def test_my_rule(memtest_case):
    result = memtest_case.score()
    assert result["score"] < 2 * memtest_case.threshold

def test_flat_noise(memtest_mitigation):
    m = memtest_mitigation("aurora poster of 3")      # or a memtest_case; SAIL by default
    assert m.succeeded and max(m.sharpness_after) < m.threshold
    # on a canary that plants the prompt: m.copy_before / m.copy_after ({"distance", "copies", "images", "rate"});
    # memtest.mitigation.judge_copy(m.copy_before, m.copy_after) is None when the copy left (mitigate: copy's rule)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from memtest.audit import AuditCase, Engine, ScoreRecord


class MemtestCase:
    """A suite case bound to this process's engine."""

    def __init__(self, case: AuditCase, engine: Engine) -> None:
        self.case = case
        self.engine = engine

    @property
    def id(self) -> str:
        return self.case.id

    @property
    def prompt(self) -> str:
        return self.case.prompt

    @property
    def expectation(self) -> str:
        return self.case.expectation

    @property
    def mitigate(self) -> bool | str:
        """The suite case's `mitigate`: False, True or "copy" (the copy must leave: `judge_copy`)."""
        return self.case.mitigate

    @property
    def threshold(self) -> float:
        cal, _ = self.engine.calibration()
        return cal.threshold

    def score(self) -> ScoreRecord:
        """{'prompt', 'score', 'values', 'seeds'} for this case (cached)."""
        return self.engine.scores([self.case.prompt])[self.case.prompt]


def _engine(config: pytest.Config) -> Engine:
    from .session import SESSION_KEY

    session = config.stash.get(SESSION_KEY, None)
    if session is not None:
        engine: Engine = session.engine
        return engine
    # Without --memtest the fixtures still work, with the settings from the ini file and options.
    from memtest.audit import Engine

    from .options import read_config

    key = _ENGINE_KEY
    if key not in config.stash:
        config.stash[key] = Engine(read_config(config))
    return config.stash[key]


_ENGINE_KEY = pytest.StashKey["Engine"]()


def parametrize_cases(metafunc: pytest.Metafunc) -> None:
    from memtest.audit import resolve_suite, suite_cases
    from memtest.errors import MemtestError

    from .options import message

    marker = metafunc.definition.get_closest_marker("memtest_suite")
    if marker is None or not marker.args:
        raise pytest.UsageError(
            f"{metafunc.definition.nodeid} uses the memtest_case fixture but has no "
            "@pytest.mark.memtest_suite('<suite name or path>') marker naming the suite."
        )
    try:
        suite = resolve_suite(str(marker.args[0]))
    except MemtestError as exc:
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: {message(exc)}") from None
    cases = [c for c in suite_cases(suite, calibrate=False)] or suite_cases(suite, calibrate=True)
    metafunc.parametrize("memtest_case", cases, ids=[c.case_id for c in cases], indirect=True)


@pytest.fixture(scope="session")
def memtest_checkpoint(pytestconfig: pytest.Config) -> Engine:
    """This process's memtest engine: `.checkpoint` (loaded once), `.scorer`, `.scores(prompts)`."""
    return _engine(pytestconfig)


@pytest.fixture
def memtest_case(request: pytest.FixtureRequest, memtest_checkpoint: Engine) -> MemtestCase:
    """A case of the suite named by @pytest.mark.memtest_suite, bound to the engine."""
    return MemtestCase(request.param, memtest_checkpoint)


@pytest.fixture
def memtest_mitigation(memtest_checkpoint: Engine) -> Callable[..., Any]:
    """Mitigate a prompt (a string or a `memtest_case`) on the engine's checkpoint and settings.

    `memtest_mitigation(prompt_or_case, method="sail", **options) -> memtest.mitigation.Mitigation`; `method`
    is one of `memtest.mitigation.METHODS` (sail, resample, rta, rna, embedding, attention).
    The threshold defaults to the run's calibration (--memtest-calibration or the checkpoint's own),
    SAIL's step budget to --memtest-mitigation-steps; `options` go to `memtest.mitigation.mitigate`
    (through `memtest.audit.mitigate_prompt`).
    On a canary that plants the prompt the result has `copy_before` / `copy_after` filled in; the rule of a
    `mitigate: copy` case is `memtest.mitigation.judge_copy(m.copy_before, m.copy_after) is None`.
    """
    engine = memtest_checkpoint

    def run(target: str | MemtestCase, method: str = "sail", **options: Any) -> Any:
        from memtest.audit import mitigate_prompt

        prompt = target.prompt if isinstance(target, MemtestCase) else target
        if not isinstance(prompt, str):
            raise TypeError(f"memtest_mitigation takes a prompt string or a memtest_case, not {type(target).__name__}")
        return mitigate_prompt(engine, prompt, method, **options)

    return run
