"""Fixtures for custom assertions: the loaded checkpoint/scorer and suite cases.

@pytest.mark.memtest_suite("canary-finetuned")
def test_my_rule(memtest_case):
    result = memtest_case.score()
    assert result["score"] < 2 * memtest_case.threshold
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from memtest.audit import AuditCase, Engine


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
    def threshold(self) -> float:
        cal, _ = self.engine.calibration()
        return cal.threshold

    def score(self) -> dict[str, Any]:
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
    from memtest.audit import suite_cases
    from memtest.errors import MemtestError
    from memtest.suites import resolve_suite

    marker = metafunc.definition.get_closest_marker("memtest_suite")
    if marker is None or not marker.args:
        raise pytest.UsageError(
            f"{metafunc.definition.nodeid} uses the memtest_case fixture but has no "
            "@pytest.mark.memtest_suite('<suite name or path>') marker naming the suite."
        )
    try:
        suite = resolve_suite(str(marker.args[0]))
    except MemtestError as exc:
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: {exc}") from None
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
