"""pytest entry point for memtest (registered under `pytest11`).

Module-level hooks are a few lines: with `--memtest`, `pytest_configure` creates the one
`MemtestSession`, stores it in `config.stash` and registers it as a plugin; every other hook is a
method of that object. Nothing here imports torch, so without `--memtest` the plugin is inert.
"""

from __future__ import annotations

from collections.abc import Generator

import pytest

from .fixtures import memtest_case, memtest_checkpoint, memtest_mitigation, parametrize_cases
from .options import add_options
from .session import SESSION_KEY


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "memtest_suite(name): the suite whose cases parametrize the memtest_case fixture"
    )
    config.addinivalue_line("markers", "memtest: a memtest audit case (select with -m memtest)")
    if config.getoption("memtest", False):
        from .session import MemtestSession

        session = MemtestSession(config)
        config.stash[SESSION_KEY] = session
        config.pluginmanager.register(session, "memtest-session")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A memtest error in any phase of any test (a fixture's setup included) reads as its message and
    fix, not as the diffusers/torch frames under it (--memtest-traceback keeps them)."""
    report = yield
    if call.excinfo is not None and report.failed:
        from .items import short_failure

        short = short_failure(item.config, call.excinfo.value)
        if short is not None:
            report.longrepr = short
    return report


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "memtest_case" in metafunc.fixturenames:
        parametrize_cases(metafunc)


__all__ = ["memtest_case", "memtest_checkpoint", "memtest_mitigation"]
