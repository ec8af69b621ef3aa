"""Collectors and items: each suite case becomes one test item with the id `<suite>::<case-id>`; a case
marked `mitigate: true` also gets a `<suite>::<case-id>[mitigate]` item when gating (not calibrating)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from memtest.audit import AuditCase
    from memtest.suites import Suite

    from .session import MemtestSession


class GateFailure(Exception):
    """A case's outcome is `failed`: the message is the full explanation, no traceback needed."""


class MemtestItem(pytest.Item):
    """One suite case. `runtest` asserts on the case's (batch-scored, cached) result."""

    case: AuditCase
    memtest: MemtestSession

    def __init__(self, *, case: AuditCase, memtest: MemtestSession, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.case = case
        self.memtest = memtest
        self.memtest_record: dict[str, Any] | None = None
        self.memtest_mitigation: dict[str, Any] | None = None
        self.add_marker(pytest.mark.memtest)  # `-m memtest` / `-m "not memtest"` select the audit

    def runtest(self) -> None:
        self.memtest.run_case(self)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        from memtest.errors import MemtestError

        if isinstance(excinfo.value, GateFailure | MemtestError):
            return str(excinfo.value)
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Path | str, int | None, str]:
        source = self.case.source or self.case.suite
        return source, (self.case.line - 1 if self.case.line else None), f"memtest {self.case.id}"


class MitigationItem(MemtestItem):
    """SAIL on a `mitigate: true` case: flat initial noise below the threshold and below the unmitigated score."""

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


class SuiteFile(pytest.File):
    """A suite YAML file found among the test paths."""

    memtest: MemtestSession

    def collect(self) -> list[pytest.Item | pytest.Collector]:
        from memtest.suites import load_suite

        suite = load_suite(self.path)  # a SuiteError here is a collection error, never a silent skip
        return list(_items(self, suite, self.memtest))
