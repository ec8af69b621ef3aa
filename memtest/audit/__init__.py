"""Calibration → gate: the option table and `AuditConfig` (options), suites, calibration, the gate that judges
cases and runs an audit (gate), the engine that scores them once per process (engine), and the results file
(results). The pytest plugin and `memtest audit` both call this package; it imports no torch itself."""

from memtest.audit.engine import (
    DEFAULT_CHECKPOINT,
    AuditCase,
    AuditConfig,
    Engine,
    ResultsCache,
    checkpoint_suite,
    judge,
    parse_shard,
    reproduce_command,
    resolve_suites,
    results_document,
    select_cases,
    shard_index,
    suite_cases,
)

__all__ = [
    "DEFAULT_CHECKPOINT",
    "AuditCase",
    "AuditConfig",
    "Engine",
    "ResultsCache",
    "checkpoint_suite",
    "judge",
    "parse_shard",
    "reproduce_command",
    "resolve_suites",
    "results_document",
    "select_cases",
    "shard_index",
    "suite_cases",
]
