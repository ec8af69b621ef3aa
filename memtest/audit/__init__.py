"""Calibration → gate. `options` (the option table with neutral names, `AuditConfig`), `suites`, `calibration`,
`gate` (which cases, how each is judged, the run loop, calibration building, mitigation dispatch, the summary),
`engine` (one process's checkpoint, scorer, calibration and results cache; the results document), `records`
(the typed records between them) and `results` (the results file). Both front ends, the pytest plugin and
`memtest audit`, call this package. Importing it costs nothing: names load from their modules on first
use, so a front end that is not auditing stays light."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from memtest.audit.baseline import Baseline
    from memtest.audit.budget import FlagBudget, flag_budget
    from memtest.audit.calibration import CALIBRATION_FILENAME, Calibration, load_calibration, save_calibration
    from memtest.audit.engine import (
        AdapterInfo,
        Engine,
        ProgressFn,
        ResultsCache,
        Subject,
        environment_record,
        results_document,
    )
    from memtest.audit.gate import (
        SUITE_FILENAME,
        SummaryLine,
        calibration_from_records,
        check_runnable,
        checkpoint_suite,
        describe_calibration,
        describe_calibration_file,
        error_record,
        judge,
        mitigate_prompt,
        resolve_suites,
        run_budget,
        run_case,
        run_cases,
        run_mitigation,
        select_cases,
        shard_index,
        suite_cases,
        summary_lines,
        write_outputs,
    )
    from memtest.audit.options import OPTION_NAMES, OPTIONS, AuditConfig, Option, config_from_values, parse_shard
    from memtest.audit.records import AuditCase, CaseRecord, MitigationEntry, ScoreRecord
    from memtest.audit.suites import Suite, is_suite_file, load_suite, resolve_suite
    from memtest.defaults import DEFAULT_CHECKPOINT
    from memtest.threads import describe_threads, describe_waits, passive_waits

_LAZY: dict[str, str] = {
    "AdapterInfo": "memtest.audit.engine",
    "AuditCase": "memtest.audit.records",
    "Baseline": "memtest.audit.baseline",
    "FlagBudget": "memtest.audit.budget",
    "flag_budget": "memtest.audit.budget",
    "AuditConfig": "memtest.audit.options",
    "CALIBRATION_FILENAME": "memtest.audit.calibration",
    "Calibration": "memtest.audit.calibration",
    "CaseRecord": "memtest.audit.records",
    "DEFAULT_CHECKPOINT": "memtest.defaults",
    "Engine": "memtest.audit.engine",
    "MitigationEntry": "memtest.audit.records",
    "OPTIONS": "memtest.audit.options",
    "OPTION_NAMES": "memtest.audit.options",
    "Option": "memtest.audit.options",
    "ProgressFn": "memtest.audit.engine",
    "ResultsCache": "memtest.audit.engine",
    "SUITE_FILENAME": "memtest.audit.gate",
    "ScoreRecord": "memtest.audit.records",
    "Subject": "memtest.audit.engine",
    "Suite": "memtest.audit.suites",
    "SummaryLine": "memtest.audit.gate",
    "calibration_from_records": "memtest.audit.gate",
    "check_runnable": "memtest.audit.gate",
    "checkpoint_suite": "memtest.audit.gate",
    "config_from_values": "memtest.audit.options",
    "describe_calibration": "memtest.audit.gate",
    "describe_calibration_file": "memtest.audit.gate",
    "describe_threads": "memtest.threads",
    "describe_waits": "memtest.threads",
    "environment_record": "memtest.audit.engine",
    "error_record": "memtest.audit.gate",
    "is_suite_file": "memtest.audit.suites",
    "judge": "memtest.audit.gate",
    "load_calibration": "memtest.audit.calibration",
    "load_suite": "memtest.audit.suites",
    "mitigate_prompt": "memtest.audit.gate",
    "parse_shard": "memtest.audit.options",
    "passive_waits": "memtest.threads",
    "resolve_suite": "memtest.audit.suites",
    "resolve_suites": "memtest.audit.gate",
    "results_document": "memtest.audit.engine",
    "run_budget": "memtest.audit.gate",
    "run_case": "memtest.audit.gate",
    "run_cases": "memtest.audit.gate",
    "run_mitigation": "memtest.audit.gate",
    "save_calibration": "memtest.audit.calibration",
    "select_cases": "memtest.audit.gate",
    "shard_index": "memtest.audit.gate",
    "suite_cases": "memtest.audit.gate",
    "summary_lines": "memtest.audit.gate",
    "write_outputs": "memtest.audit.gate",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'memtest.audit' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "CALIBRATION_FILENAME",
    "DEFAULT_CHECKPOINT",
    "OPTIONS",
    "OPTION_NAMES",
    "SUITE_FILENAME",
    "AdapterInfo",
    "AuditCase",
    "AuditConfig",
    "Baseline",
    "Calibration",
    "CaseRecord",
    "Engine",
    "FlagBudget",
    "MitigationEntry",
    "Option",
    "ProgressFn",
    "ResultsCache",
    "ScoreRecord",
    "Subject",
    "Suite",
    "SummaryLine",
    "calibration_from_records",
    "check_runnable",
    "checkpoint_suite",
    "config_from_values",
    "describe_calibration",
    "describe_calibration_file",
    "describe_threads",
    "describe_waits",
    "environment_record",
    "error_record",
    "flag_budget",
    "is_suite_file",
    "judge",
    "load_calibration",
    "load_suite",
    "mitigate_prompt",
    "parse_shard",
    "passive_waits",
    "resolve_suite",
    "resolve_suites",
    "results_document",
    "run_budget",
    "run_case",
    "run_cases",
    "run_mitigation",
    "save_calibration",
    "select_cases",
    "shard_index",
    "suite_cases",
    "summary_lines",
    "write_outputs",
]
