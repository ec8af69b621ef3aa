"""Collectors and items: each suite case becomes one test item with the id `<suite>::<case-id>`; a case
marked `mitigate: true` or `mitigate: copy` also gets a `<suite>::<case-id>[mitigate]` item when gating (not
calibrating); with `copy` the item also requires the copy to leave (`memtest.mitigation.judge_copy`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pytest

if TYPE_CHECKING:
    from memtest.audit import AuditCase, AuditConfig, CaseRecord, MitigationEntry, Suite


class MemtestSession(Protocol):
    """What items need of the plugin's session (plugins/session.py), without importing it."""

    audit: AuditConfig

    def run_case(self, item: MemtestItem) -> None: ...

    def run_mitigation(self, item: MitigationItem) -> None: ...


class GateFailure(Exception):
    """A case's outcome is `failed`: the message is the full explanation, no traceback needed."""


def wants_traceback(config: pytest.Config) -> bool:
    return bool(config.getoption("memtest_traceback", False) or config.getoption("fulltrace", False))


def short_failure(config: pytest.Config, exc: BaseException) -> str | None:
    """The failure text of a memtest error: its message (what is wrong and the fix), without the frames of
    diffusers and torch that led to it; None for other exceptions, or when the traceback is asked for."""
    if isinstance(exc, GateFailure):
        return str(exc)
    from memtest.errors import MemtestError

    if not isinstance(exc, MemtestError) or wants_traceback(config):
        return None
    from .options import message

    text = f"{type(exc).__name__}: {message(exc)}"
    if exc.__cause__ is not None:
        text += f"\n(caused by {type(exc.__cause__).__name__}; --memtest-traceback shows its traceback)"
    return text


class MemtestItem(pytest.Item):
    """One suite case. `runtest` asserts on the case's (batch-scored, cached) result."""

    case: AuditCase
    memtest: MemtestSession

    def __init__(self, *, case: AuditCase, memtest: MemtestSession, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.case = case
        self.memtest = memtest
        self.memtest_record: CaseRecord | None = None
        self.memtest_mitigation: MitigationEntry | None = None
        self.add_marker(pytest.mark.memtest)  # `-m memtest` / `-m "not memtest"` select the audit

    def runtest(self) -> None:
        self.memtest.run_case(self)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        short = short_failure(self.config, excinfo.value)
        return short if short is not None else str(super().repr_failure(excinfo, style))

    def reportinfo(self) -> tuple[Path | str, int | None, str]:
        source = self.case.source or self.case.suite
        return source, (self.case.line - 1 if self.case.line else None), f"memtest {self.case.id}"


class MitigationItem(MemtestItem):
    """SAIL on a `mitigate: true` case: flat initial noise below the threshold and below the unmitigated score
    (or resample: ordinary draws below its level, --memtest-mitigation-method); on a `mitigate: copy` case the
    copy must leave too."""

    def runtest(self) -> None:
        self.memtest.run_mitigation(self)

    def reportinfo(self) -> tuple[Path | str, int | None, str]:
        source, line, _ = super().reportinfo()
        return source, line, f"memtest mitigate {self.case.id}"


def _items(parent: pytest.Collector, suite: Suite, memtest: MemtestSession) -> Iterator[MemtestItem]:
    from memtest.audit import shard_index, suite_cases

    shard = memtest.audit.shard

    for case in suite_cases(suite, memtest.audit.calibrate):
        if shard is not None and shard_index(case.id, shard[1]) != shard[0]:
            continue
        yield MemtestItem.from_parent(parent, name=case.case_id, case=case, memtest=memtest)
        if case.mitigate and not memtest.audit.calibrate:
            yield MitigationItem.from_parent(parent, name=f"{case.case_id}[mitigate]", case=case, memtest=memtest)


class SuiteCollector(pytest.Collector):
    """A suite given by name (or the checkpoint's own suite); its node id is the suite name."""

    def __init__(self, *, suite: Suite, memtest: MemtestSession, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.suite = suite
        self.memtest = memtest

    def collect(self) -> list[pytest.Item | pytest.Collector]:
        return list(_items(self, self.suite, self.memtest))

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        short = short_failure(self.config, excinfo.value)
        return short if short is not None else super().repr_failure(excinfo)


class SuiteFile(pytest.File):
    """A suite YAML file found among the test paths."""

    memtest: MemtestSession

    def collect(self) -> list[pytest.Item | pytest.Collector]:
        from memtest.audit import load_suite

        suite = load_suite(self.path)  # a SuiteError here is a collection error, never a silent skip
        return list(_items(self, suite, self.memtest))

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        short = short_failure(self.config, excinfo.value)
        return short if short is not None else super().repr_failure(excinfo)
