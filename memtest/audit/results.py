"""The results file (`memtest.results/1`): load, validate, merge, summarize and write it.

This module is the single place that knows the format (see docs/results-format.md). The pytest
plugin, `memtest audit`, `memtest merge` and `memtest report` all go through it. It imports no torch.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from memtest._io import atomic_write_text
from memtest.audit.suites import EXPECTATIONS  # a case's expectation is its suite item's: one vocabulary
from memtest.errors import ResultsError, option

RESULTS_SCHEMA = "memtest.results/2"
#: Schemas this version reads: /1 (before verdicts) is a /2 document without them.
READ_SCHEMAS: tuple[str, ...] = ("memtest.results/1", RESULTS_SCHEMA)
VERDICTS: tuple[str, ...] = ("copy", "flagged", "clean")
BUDGET_KEYS: tuple[str, ...] = (
    "clean",
    "flagged",
    "allowed",
    "expected",
    "fpr",
    "n_reference",
    "confidence",
    "exceeded",
)

#: Top-level keys every results document has (`mitigation` and `spectra` are optional lists).
REQUIRED_KEYS: tuple[str, ...] = (
    "schema",
    "memtest_version",
    "created",
    "command",
    "environment",
    "checkpoint",
    "settings",
    "calibration",
    "shard",
    "cases",
    "summary",
)
OPTIONAL_LIST_KEYS: tuple[str, ...] = ("mitigation", "spectra")

CASE_REQUIRED_KEYS: tuple[str, ...] = (
    "id",
    "suite",
    "prompt",
    "kind",
    "expectation",
    "score",
    "values",
    "threshold",
    "margin",
    "flagged",
    "outcome",
)
CALIBRATION_REQUIRED_KEYS: tuple[str, ...] = (
    "path",
    "threshold",
    "ci",
    "fpr",
    "reference_suite",
    "reference_version",
    "n_reference",
    "reference_scores",
    "accepted_from_base",
)
MITIGATION_REQUIRED_KEYS: tuple[str, ...] = (
    "id",
    "prompt",
    "succeeded",
    "sharpness_before",
    "sharpness_after",
    "images_before",
    "images_after",
)
SPECTRUM_REQUIRED_KEYS: tuple[str, ...] = ("id", "prompt", "eigenvalues")

OUTCOMES: tuple[str, ...] = ("passed", "failed", "error")
KINDS: tuple[str, ...] = ("detect", "mitigate")
SUMMARY_KEYS: tuple[str, ...] = ("passed", "failed", "errors", "flagged", "total")

#: Settings that may legitimately differ between shards of one run (each worker picks its device).
SHARD_VARIANT_SETTINGS: frozenset[str] = frozenset({"device"})

_FIX = f"Regenerate it with an audit ({option('json', 'PATH')}), or see docs/results-format.md for the format."
# Base64 of a PNG file starts with the encoded PNG signature "\x89PNG\r\n\x1a\n".
_PNG_B64_PREFIX = "iVBORw0KGgo"
_BASE64_RE = re.compile(r"[A-Za-z0-9+/]*={0,2}")


# --------------------------------------------------------------------------------------------------
# validation


def _fail(source: str, where: str, problem: str) -> ResultsError:
    return ResultsError(f"Invalid results file {source}: {where} {problem}. {_FIX}")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_keys(obj: object, keys: Iterable[str], source: str, where: str) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise _fail(source, where, f"must be a JSON object, got {type(obj).__name__}")
    missing = [key for key in keys if key not in obj]
    if missing:
        raise _fail(source, where, f"is missing required key(s) {', '.join(repr(k) for k in missing)}")
    return obj


def _check_str(value: object, source: str, where: str) -> None:
    if not isinstance(value, str):
        raise _fail(source, where, f"must be a string, got {value!r}")


def _check_number(value: object, source: str, where: str, *, nullable: bool = False) -> None:
    if value is None and nullable:
        return
    if not _is_number(value):
        kind = "a finite number or null" if nullable else "a finite number"
        raise _fail(source, where, f"must be {kind}, got {value!r}")


def _check_numbers(value: object, source: str, where: str) -> None:
    if not isinstance(value, list):
        raise _fail(source, where, f"must be a list of numbers, got {type(value).__name__}")
    for i, item in enumerate(value):
        _check_number(item, source, f"{where}[{i}]")


def _check_choice(value: object, choices: Sequence[str], source: str, where: str) -> None:
    if value not in choices:
        raise _fail(source, where, f"must be one of {', '.join(choices)}; got {value!r}")


def _check_images(value: object, source: str, where: str) -> None:
    if not isinstance(value, list):
        raise _fail(source, where, "must be a list of base64-encoded PNG strings")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item.startswith(_PNG_B64_PREFIX) or _BASE64_RE.fullmatch(item) is None:
            raise _fail(source, f"{where}[{i}]", "must be a base64-encoded PNG (no data: prefix)")


def _validate_case(case: object, source: str, where: str) -> None:
    obj = _check_keys(case, CASE_REQUIRED_KEYS, source, where)
    for key in ("id", "suite", "prompt"):
        _check_str(obj[key], source, f"{where}.{key}")
    where = f"case {obj['id']!r}"
    _check_choice(obj["kind"], KINDS, source, f"{where}.kind")
    _check_choice(obj["expectation"], EXPECTATIONS, source, f"{where}.expectation")
    _check_choice(obj["outcome"], OUTCOMES, source, f"{where}.outcome")
    # An errored case may have no score at all (it failed before scoring); a scored one has numbers.
    errored = obj["outcome"] == "error"
    _check_number(obj["score"], source, f"{where}.score", nullable=errored)
    _check_number(obj["threshold"], source, f"{where}.threshold", nullable=True)
    _check_number(obj["margin"], source, f"{where}.margin", nullable=True)
    _check_numbers(obj["values"], source, f"{where}.values")
    if obj["flagged"] is not None and not isinstance(obj["flagged"], bool):
        raise _fail(source, f"{where}.flagged", f"must be true, false or null, got {obj['flagged']!r}")
    for key in ("suite_version", "case_id", "nodeid", "message"):
        if key in obj and obj[key] is not None:
            _check_str(obj[key], source, f"{where}.{key}")
    if "tags" in obj and not (isinstance(obj["tags"], list) and all(isinstance(tag, str) for tag in obj["tags"])):
        raise _fail(source, f"{where}.tags", "must be a list of strings")
    if obj.get("verdict") is not None:
        _check_choice(obj["verdict"], VERDICTS, source, f"{where}.verdict")
    if "inherited" in obj and not isinstance(obj["inherited"], bool):
        raise _fail(source, f"{where}.inherited", f"must be true or false, got {obj['inherited']!r}")
    if obj.get("evidence") is not None:
        _check_keys(obj["evidence"], (), source, f"{where}.evidence")
    if obj.get("attribution") is not None:
        keys = ("signal", "words", "special", "padding")
        found = _check_keys(obj["attribution"], keys, source, f"{where}.attribution")
        if not isinstance(found["words"], list) or not all(
            isinstance(w, Mapping) and isinstance(w.get("word"), str) and _is_number(w.get("weight"))
            for w in found["words"]
        ):
            raise _fail(source, f"{where}.attribution.words", "must be a list of {word, weight} objects")
    if "seeds" in obj and not (
        isinstance(obj["seeds"], list) and all(isinstance(s, int) and not isinstance(s, bool) for s in obj["seeds"])
    ):
        raise _fail(source, f"{where}.seeds", "must be a list of integers")


def _validate_calibration(calibration: object, source: str) -> None:
    obj = _check_keys(calibration, CALIBRATION_REQUIRED_KEYS, source, "calibration")
    _check_str(obj["path"], source, "calibration.path")
    _check_number(obj["threshold"], source, "calibration.threshold")
    ci = obj["ci"]
    if not (isinstance(ci, list) and len(ci) == 2 and all(_is_number(x) for x in ci)):
        raise _fail(source, "calibration.ci", f"must be a list [low, high] of two numbers, got {ci!r}")
    _check_number(obj["fpr"], source, "calibration.fpr")
    _check_str(obj["reference_suite"], source, "calibration.reference_suite")
    _check_str(obj["reference_version"], source, "calibration.reference_version")
    n_ref = obj["n_reference"]
    if not isinstance(n_ref, int) or isinstance(n_ref, bool) or n_ref < 0:
        raise _fail(source, "calibration.n_reference", f"must be a non-negative integer, got {n_ref!r}")
    _check_numbers(obj["reference_scores"], source, "calibration.reference_scores")
    if not isinstance(obj["accepted_from_base"], bool):
        raise _fail(source, "calibration.accepted_from_base", "must be true or false")


def _validate_mitigation(entry: object, source: str, where: str) -> None:
    obj = _check_keys(entry, MITIGATION_REQUIRED_KEYS, source, where)
    _check_str(obj["id"], source, f"{where}.id")
    _check_str(obj["prompt"], source, f"{where}.prompt")
    where = f"mitigation {obj['id']!r}"
    if not isinstance(obj["succeeded"], bool):
        raise _fail(source, f"{where}.succeeded", "must be true or false")
    _check_numbers(obj["sharpness_before"], source, f"{where}.sharpness_before")
    _check_numbers(obj["sharpness_after"], source, f"{where}.sharpness_after")
    _check_images(obj["images_before"], source, f"{where}.images_before")
    _check_images(obj["images_after"], source, f"{where}.images_after")
    for key in ("threshold", "copy_distance_before", "copy_distance_after"):
        if key in obj:
            _check_number(obj[key], source, f"{where}.{key}", nullable=True)
    if (
        "steps" in obj
        and obj["steps"] is not None
        and (not isinstance(obj["steps"], int) or isinstance(obj["steps"], bool))
    ):
        raise _fail(source, f"{where}.steps", "must be an integer or null")


def _validate_spectrum(entry: object, source: str, where: str) -> None:
    obj = _check_keys(entry, SPECTRUM_REQUIRED_KEYS, source, where)
    _check_str(obj["id"], source, f"{where}.id")
    _check_str(obj["prompt"], source, f"{where}.prompt")
    _check_numbers(obj["eigenvalues"], source, f"spectrum {obj['id']!r}.eigenvalues")


def validate_results(doc: object, source: str = "<results document>") -> None:
    """Check that `doc` is a well-formed `memtest.results/1` document; raise ResultsError if not.

    `source` names the document in error messages (usually its file path).
    """
    if not isinstance(doc, Mapping):
        raise _fail(source, "the document", f"must be a JSON object, got {type(doc).__name__}")
    schema = doc.get("schema")
    if schema not in READ_SCHEMAS:
        raise ResultsError(
            f"Invalid results file {source}: schema is {schema!r}, expected one of {', '.join(READ_SCHEMAS)}. "
            f"Is this a memtest results file? Write one with an audit ({option('json', 'PATH')}); "
            "a file from another memtest version needs that version to read it."
        )
    _check_keys(doc, REQUIRED_KEYS, source, "the document")
    for key in ("memtest_version", "created", "command"):
        _check_str(doc[key], source, key)
    for key in ("environment", "settings"):
        _check_keys(doc[key], (), source, key)
    checkpoint = _check_keys(doc["checkpoint"], ("name", "path", "fingerprint"), source, "checkpoint")
    for key in ("name", "path", "fingerprint"):
        _check_str(checkpoint[key], source, f"checkpoint.{key}")
    if "config" in checkpoint and checkpoint["config"] is not None:
        _check_keys(checkpoint["config"], (), source, "checkpoint.config")
    if doc["calibration"] is not None:
        _validate_calibration(doc["calibration"], source)
    shard = doc["shard"]
    if shard is not None:
        _check_keys(shard, ("index", "count"), source, "shard")
        index, count = shard["index"], shard["count"]
        if not (isinstance(index, int) and isinstance(count, int) and count >= 1 and 0 <= index <= count):
            raise _fail(source, "shard", f"must be {{'index': i, 'count': N}} with N >= 1, got {shard!r}")
    cases = doc["cases"]
    if not isinstance(cases, list):
        raise _fail(source, "cases", "must be a list")
    seen: set[str] = set()
    for i, case in enumerate(cases):
        _validate_case(case, source, f"cases[{i}]")
        if case["id"] in seen:
            raise _fail(source, "cases", f"contain the id {case['id']!r} more than once")
        seen.add(case["id"])
    summary = _check_keys(doc["summary"], SUMMARY_KEYS, source, "summary")
    for key in SUMMARY_KEYS:
        if not isinstance(summary[key], int) or isinstance(summary[key], bool):
            raise _fail(source, f"summary.{key}", f"must be an integer, got {summary[key]!r}")
    budget = doc.get("budget")
    if budget is not None:
        obj = _check_keys(budget, BUDGET_KEYS, source, "budget")
        for key in ("clean", "flagged", "allowed", "n_reference"):
            if not isinstance(obj[key], int) or isinstance(obj[key], bool):
                raise _fail(source, f"budget.{key}", f"must be an integer, got {obj[key]!r}")
        if not isinstance(obj["exceeded"], bool):
            raise _fail(source, "budget.exceeded", f"must be true or false, got {obj['exceeded']!r}")
    for key, check in (("mitigation", _validate_mitigation), ("spectra", _validate_spectrum)):
        entries = doc.get(key)
        if entries is None:
            continue
        if not isinstance(entries, list):
            raise _fail(source, key, "must be a list (or absent)")
        for i, entry in enumerate(entries):
            check(entry, source, f"{key}[{i}]")


# --------------------------------------------------------------------------------------------------
# load / write


def _reject_constant(name: str) -> float:
    raise ValueError(f"non-finite number {name} (the format allows only finite numbers)")


def load_results(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a results file; raise ResultsError naming the file and the fix."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ResultsError(
            f"Results file {p} not found. Write one with an audit ({option('json', p)}), or check the path."
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ResultsError(f"Cannot read results file {p}: {exc}. Check the path and permissions.") from exc
    try:
        doc = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise ResultsError(
            f"Results file {p} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}). "
            f"The file may be truncated; regenerate it with an audit ({option('json', 'PATH')})."
        ) from exc
    except ValueError as exc:
        raise ResultsError(f"Invalid results file {p}: {exc}. {_FIX}") from exc
    validate_results(doc, str(p))
    assert isinstance(doc, dict)
    return doc


def write_results(doc: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Validate `doc` and write it as JSON (sorted keys, no NaN) atomically to `path`."""
    p = Path(path)
    validate_results(doc, str(p))
    try:
        text = json.dumps(doc, allow_nan=False, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
    except (TypeError, ValueError) as exc:
        raise ResultsError(
            f"Cannot write results file {p}: {exc}. Every value must be a plain finite JSON value."
        ) from exc
    atomic_write_text(p, text)


# --------------------------------------------------------------------------------------------------
# summary / merge


def summarize(cases: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Count outcomes: {"passed", "failed", "errors", "flagged", "total"}."""
    summary = dict.fromkeys(SUMMARY_KEYS, 0)
    for case in cases:
        summary["total"] += 1
        outcome = case["outcome"]
        if outcome == "passed":
            summary["passed"] += 1
        elif outcome == "failed":
            summary["failed"] += 1
        else:
            summary["errors"] += 1
        if case.get("flagged") is True:
            summary["flagged"] += 1
    return summary


def _comparable_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in settings.items() if k not in SHARD_VARIANT_SETTINGS}


def _calibration_threshold(doc: Mapping[str, Any]) -> float | None:
    calibration = doc["calibration"]
    if calibration is None:
        return None
    threshold = calibration["threshold"]
    assert isinstance(threshold, (int, float))
    return float(threshold)


def _describe_threshold(threshold: float | None) -> str:
    return "none" if threshold is None else repr(threshold)


def _describe(value: object) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def merge_results(docs: Sequence[Mapping[str, Any]], sources: Sequence[str] | None = None) -> dict[str, Any]:
    """Merge the results of several shards of one run into one document.

    Every input must have the same checkpoint fingerprint, settings (except `device`) and
    calibration threshold; a case id may appear in only one input. The merged document has its cases
    sorted by id, a recomputed summary and `shard: null`. `sources` names the inputs in errors.
    """
    if not docs:
        raise ResultsError("Nothing to merge: pass at least one results file.")
    names = list(sources) if sources is not None else [f"results #{i + 1}" for i in range(len(docs))]
    if len(names) != len(docs):
        raise ValueError("merge_results: sources must name every document")
    for doc, name in zip(docs, names, strict=True):
        validate_results(doc, name)

    first, first_name = docs[0], names[0]
    for doc, name in zip(docs[1:], names[1:], strict=True):
        fp_a, fp_b = first["checkpoint"]["fingerprint"], doc["checkpoint"]["fingerprint"]
        if fp_a != fp_b:
            raise ResultsError(
                f"Cannot merge {name} with {first_name}: they audit different checkpoints "
                f"(fingerprint {fp_b[:16]}... vs {fp_a[:16]}...). Merge only the shards of one run."
            )
        set_a, set_b = _comparable_settings(first["settings"]), _comparable_settings(doc["settings"])
        if set_a != set_b:
            keys = sorted(k for k in set(set_a) | set(set_b) if set_a.get(k) != set_b.get(k))
            diffs = "; ".join(
                f"{k}: {_describe(set_b.get(k, '<missing>'))} vs {_describe(set_a.get(k, '<missing>'))}" for k in keys
            )
            raise ResultsError(
                f"Cannot merge {name} with {first_name}: their scoring settings differ ({diffs}). "
                "Shards of one run must use identical settings; rerun the odd shard."
            )
        thr_a, thr_b = _calibration_threshold(first), _calibration_threshold(doc)
        if thr_a != thr_b:
            raise ResultsError(
                f"Cannot merge {name} with {first_name}: their calibration thresholds differ "
                f"({_describe_threshold(thr_b)} vs {_describe_threshold(thr_a)}). "
                "Shards of one run must use the same calibration file."
            )

    shards = [doc["shard"] for doc in docs]
    if any(shard is not None for shard in shards):
        if any(shard is None for shard in shards):
            unsharded = [name for name, shard in zip(names, shards, strict=True) if shard is None]
            raise ResultsError(
                f"Cannot merge shard results with unsharded results ({', '.join(unsharded)}). "
                "Merge the shard files of one run only."
            )
        counts = {shard["count"] for shard in shards}
        if len(counts) != 1:
            raise ResultsError(
                f"Cannot merge shards of different splits (shard counts {sorted(counts)}). "
                "Merge the shard files of one run only."
            )
        (count,) = counts
        seen: dict[int, str] = {}
        for name, shard in zip(names, shards, strict=True):
            if shard["index"] in seen:
                raise ResultsError(
                    f"Shard {shard['index']} appears twice ({seen[shard['index']]} and {name}). "
                    "Pass each shard file once."
                )
            seen[shard["index"]] = name
        if len(seen) != count:
            raise ResultsError(
                f"Only {len(seen)} of {count} shards given (indices {sorted(seen)}). "
                "Pass every shard file of the run, or the merged verdict would miss cases."
            )

    owner: dict[str, str] = {}
    cases: list[dict[str, Any]] = []
    for doc, name in zip(docs, names, strict=True):
        for case in doc["cases"]:
            if case["id"] in owner:
                raise ResultsError(
                    f"Case {case['id']!r} appears in both {owner[case['id']]} and {name}. "
                    "Shards must not overlap: merge each shard file once, and only shards of one run."
                )
            owner[case["id"]] = name
            cases.append(dict(case))
    cases.sort(key=lambda case: str(case["id"]))

    merged: dict[str, Any] = {key: first[key] for key in REQUIRED_KEYS}
    merged["created"] = max(str(doc["created"]) for doc in docs)
    merged["shard"] = None
    merged["schema"] = RESULTS_SCHEMA
    merged["cases"] = cases
    merged["summary"] = summarize(cases)
    calibration = merged["calibration"]
    if calibration is not None and any(case.get("verdict") for case in cases):
        from memtest.audit.budget import flag_budget

        merged["budget"] = flag_budget(cases, float(calibration["fpr"]), int(calibration["n_reference"])).to_dict()
    for key in OPTIONAL_LIST_KEYS:
        if any(key in doc for doc in docs):
            entries = [dict(entry) for doc in docs for entry in (doc.get(key) or [])]
            entries.sort(key=lambda entry: str(entry["id"]))
            merged[key] = entries
    return merged
