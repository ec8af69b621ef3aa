"""Render a results document (`memtest.results/1`) as one self-contained HTML page: the page model, the
Jinja environment, the Content-Security-Policy and the `memtest report` command.

The page has inline CSS and JS, inline SVG plots (drawn by svg.py; the ROC numbers come from stats.py),
and images as data: URLs; it loads nothing from the network. Everything from the document is escaped
(Jinja autoescape for HTML, svg.py's writer for SVG text); a Content-Security-Policy that allows only the
page's own scripts (by hash) is a second line of defence. Rendering is deterministic: the same document
gives the same bytes. No torch here; scikit-learn is imported only when a ROC curve is drawn.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup

from memtest._io import atomic_write_text
from memtest._resources import data_dir
from memtest.audit.results import (
    load_results,
    merge_results,
    summarize,
    validate_results,
)
from memtest.errors import MemtestError, ResultsError, neutral_spelling
from memtest.report.stats import roc_stats
from memtest.report.svg import (
    C_CLEAN,
    C_MEMORIZED,
    C_REFERENCE,
    fmt_num,
    histogram_svg,
    mitigation_svg,
    roc_svg,
    spectra_svg,
    truncate,
)

TEMPLATE = "report.html.j2"
# Our own inline scripts, in page order. The CSP allows exactly these (by hash).
_SCRIPTS: tuple[tuple[str, str], ...] = (
    ("memtest-guard", "guard.js"),
    ("memtest-report", "report.js"),
    ("memtest-selftest", "selftest.js"),
)
_OUTCOME_ORDER = {"error": 0, "failed": 1, "passed": 2}
_MAX_VALUES_SHOWN = 8
# Rows laid out when the page opens; the rest wait in a <template> until sorted/filtered/shown.
PAGE_ROWS = 200
# Spectra drawn in the plot (the rest are counted, not drawn).
_MAX_SPECTRA = 12


# --------------------------------------------------------------------------------------------------
# formatting


def fmt_signed(value: object, digits: int = 3) -> str:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return "—"
    return f"{value:+.{digits}g}"


def _sort_key(value: object) -> str:
    """A machine-readable number for the table's data-v attribute ('' for missing)."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return ""
    return repr(float(value))


def _fmt_value(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        return fmt_num(value, 6)
    if value is None:
        return "—"
    if isinstance(value, (list, tuple)):
        return " × ".join(_fmt_value(v) for v in value) if value else "[]"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={_fmt_value(v)}" for k, v in sorted(value.items()))
    return str(value)


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


# --------------------------------------------------------------------------------------------------
# the page model


def _doc_threshold(doc: Mapping[str, Any]) -> float | None:
    if doc["calibration"] is not None:
        return float(doc["calibration"]["threshold"])
    thresholds = {float(c["threshold"]) for c in doc["cases"] if c["threshold"] is not None}
    return thresholds.pop() if len(thresholds) == 1 else None


def _margin(case: Mapping[str, Any]) -> float | None:
    margin = case.get("margin")
    return float(margin) if isinstance(margin, (int, float)) and not isinstance(margin, bool) else None


def case_priority(case: Mapping[str, Any]) -> tuple[int, float, str]:
    """Where a case sits in the report's opening order: errors, failures, flagged cases (those nearest the
    threshold, the weakest detections, first), the other judged cases from the closest to the threshold
    down, then the rest; ties by id."""
    outcome, cid, margin = case["outcome"], str(case["id"]), _margin(case)
    if outcome in _OUTCOME_ORDER and outcome != "passed":
        return (_OUTCOME_ORDER[outcome], 0.0, cid)
    if case.get("flagged") is True:
        return (2, abs(margin) if margin is not None else math.inf, cid)
    if margin is not None:
        return (3, -margin, cid)
    return (4, 0.0, cid)


def _case_label(case: Mapping[str, Any], sep: str = " (margin {})") -> str:
    margin = _margin(case)
    return str(case["id"]) + (sep.format(fmt_signed(margin)) if margin is not None else "")


def look_at(cases: Sequence[Mapping[str, Any]]) -> str:
    """One line saying what to look at first in this run."""
    if not cases:
        return "This results file contains no cases."
    errors = [c for c in cases if c["outcome"] not in ("passed", "failed")]
    failed = [c for c in cases if c["outcome"] == "failed"]
    parts: list[str] = []
    if errors:
        causes = list(dict.fromkeys(str(c.get("message") or "no message") for c in errors))
        others = f" and {len(causes) - 1} other cause(s)" if len(causes) > 1 else ""
        parts.append(f"{len(errors)} case(s) could not be judged: {truncate(causes[0], 160)}{others}")
    above = sorted((c for c in failed if c["kind"] == "detect" and c.get("flagged") is True), key=case_priority)
    missed = sorted((c for c in failed if c["kind"] == "detect" and c.get("flagged") is not True), key=case_priority)
    mitigations = [c for c in failed if c["kind"] != "detect"]
    if above:
        worst = max(above, key=lambda c: _margin(c) or 0.0)
        parts.append(
            f"{len(above)} clean prompt(s) scored above the threshold (worst: {_case_label(worst, ', margin {}')})"
        )
    if missed:
        closest = max(missed, key=lambda c: _margin(c) or -math.inf)
        parts.append(
            f"{len(missed)} memorized prompt(s) were not flagged (closest: {_case_label(closest, ', margin {}')})"
        )
    if mitigations:
        parts.append(f"{len(mitigations)} mitigation(s) did not reach flat noise ({mitigations[0]['id']} first)")
    if parts:
        return "Look at: " + "; ".join(parts) + "."
    judged = [c for c in cases if c["kind"] == "detect" and _margin(c) is not None]
    clean = [c for c in judged if c.get("flagged") is not True]
    flagged = [c for c in judged if c.get("flagged") is True]
    line = f"Nothing failed: all {len(cases)} cases passed."
    if clean:
        line += f" Closest to the threshold: {_case_label(max(clean, key=lambda c: _margin(c) or -math.inf))}."
    if flagged:
        line += f" Weakest flagged case: {_case_label(min(flagged, key=lambda c: _margin(c) or math.inf))}."
    return line


def _case_rows(cases: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    ordered = sorted(cases, key=case_priority)
    rows = []
    for case in ordered:
        values = [float(v) for v in case["values"]]
        shown = ", ".join(fmt_num(v, 3) for v in values[:_MAX_VALUES_SHOWN])
        if len(values) > _MAX_VALUES_SHOWN:
            shown += f" … (+{len(values) - _MAX_VALUES_SHOWN})"
        seeds = case.get("seeds") or []
        tip = "; ".join(
            f"seed {seeds[i]}: {fmt_num(v, 6)}" if i < len(seeds) else fmt_num(v, 6) for i, v in enumerate(values)
        )
        flagged = case["flagged"]
        rows.append(
            {
                "id": case["id"],
                "prompt": case["prompt"],
                "suite": case["suite"],
                "suite_version": case.get("suite_version") or "",
                "tags": ", ".join(case.get("tags") or []),
                "kind": case["kind"],
                "expectation": case["expectation"],
                "outcome": case["outcome"],
                "message": case.get("message") or "",
                "score": fmt_num(case["score"]),
                "score_v": _sort_key(case["score"]),
                "threshold": fmt_num(case["threshold"]),
                "threshold_v": _sort_key(case["threshold"]),
                "margin": fmt_signed(case["margin"]),
                "margin_v": _sort_key(case["margin"]),
                "flagged": "—" if flagged is None else ("yes" if flagged else "no"),
                "verdict": case.get("verdict") or "",
                "inherited": bool(case.get("inherited")),
                "flagged_key": "" if flagged is None else ("1" if flagged else "0"),
                "vals": shown or "—",
                "vals_tip": tip,
                "vals_v": _sort_key(_mean(values)),
            }
        )
    return rows


def _copies(before: object, after: object) -> str | None:
    """ "4/4 → 1/4" from a mitigation entry's copy counts; None where copies are not counted."""

    def count(c: object) -> str:
        if not isinstance(c, Mapping) or not isinstance(c.get("copies"), int) or not isinstance(c.get("images"), int):
            return "—"
        return f"{c['copies']}/{c['images']}"

    if not isinstance(before, Mapping) or not isinstance(before.get("copies"), int):
        return None
    return f"{count(before)} → {count(after)}"


def _mitigation_model(entries: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for e in sorted(entries, key=lambda e: str(e["id"])):
        before, after = [float(v) for v in e["sharpness_before"]], [float(v) for v in e["sharpness_after"]]
        out.append(
            {
                "id": e["id"],
                "prompt": e["prompt"],
                "succeeded": e["succeeded"],
                "steps": fmt_num(e.get("steps")),
                "threshold": fmt_num(e.get("threshold")),
                "before_mean": fmt_num(_mean(before)),
                "after_mean": fmt_num(_mean(after)),
                "before_values": ", ".join(fmt_num(v, 3) for v in before),
                "after_values": ", ".join(fmt_num(v, 3) for v in after),
                "copy_before": fmt_num(e.get("copy_distance_before")),
                "copy_after": fmt_num(e.get("copy_distance_after")),
                "copies": _copies(e.get("copy_before"), e.get("copy_after")),
                "copy_required": bool(e.get("copy_required")),
                "copy_verdict": str(e.get("copy_verdict") or "—"),
                # validated as base64 PNG by memtest.audit.results; escaped again by autoescape
                "images_before": [f"data:image/png;base64,{img}" for img in e["images_before"]],
                "images_after": [f"data:image/png;base64,{img}" for img in e["images_after"]],
            }
        )
    return out


def _kv(mapping: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    if not mapping:
        return []
    return [(str(k), _fmt_value(v)) for k, v in sorted(mapping.items())]


def _adapter_rows(adapters: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """One row per LoRA adapter applied on the checkpoint, in the order they were applied."""
    return [
        {
            "path": str(a.get("path", "")),
            "scale": fmt_num(a.get("scale"), 4),
            "sha256": str(a.get("sha256", ""))[:16],
            "detail": f"{a.get('format', '?')}, rank {a.get('rank', '?')}, "
            + ", ".join(str(t) for t in a.get("targets") or []),
        }
        for a in adapters
    ]


def _verdict(summary: Mapping[str, int], budget: Mapping[str, Any] | None = None) -> str:
    if summary["total"] == 0:
        return "EMPTY"
    exceeded = bool(budget and budget.get("exceeded"))
    return "PASS" if summary["failed"] == 0 and summary["errors"] == 0 and not exceeded else "FAIL"


#: At most this many cases show their evidence images, and the images of all of them together take at most
#: EVIDENCE_BYTES of base64: the report stays one file that opens quickly (the rest are listed without images).
EVIDENCE_CASES = 40
EVIDENCE_BYTES = 1_500_000
_VERDICT_ORDER = {"copy": 0, "flagged": 1, "clean": 2}


#: Shade levels of a word in the attribution section (classes aw0..aw5 in report.css).
ATTRIBUTION_LEVELS = 5


def _attribution_model(cases: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Cases with an attribution, copies first: each word with its share and a shade level relative to the prompt's
    largest word share (0 = none, ATTRIBUTION_LEVELS = the largest)."""
    found = [c for c in cases if c.get("attribution")]
    found.sort(key=lambda c: (_VERDICT_ORDER.get(str(c.get("verdict")), 3), str(c["id"])))
    out = []
    for case in found:
        att = case["attribution"]
        words = [(str(w["word"]), float(w["weight"])) for w in att.get("words") or []]
        top = max((v for _, v in words), default=0.0)
        out.append(
            {
                "id": case["id"],
                "prompt": case["prompt"],
                "verdict": case.get("verdict") or "—",
                "words": [
                    {
                        "word": w,
                        "share": fmt_num(v, 3),
                        "level": round(ATTRIBUTION_LEVELS * v / top) if top > 0 else 0,
                    }
                    for w, v in words
                ],
                "top": att.get("top") or "—",
                "special": fmt_num(float(att.get("special", 0.0)), 3),
                "padding": fmt_num(float(att.get("padding", 0.0)), 3),
                "signal": str(att.get("signal", "")),
            }
        )
    return out


def _evidence_model(cases: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """Copies first, then unconfirmed flags, then the rest, each with its generations (and, when the run kept
    them, the closest training images), every pair's similarity against the copy threshold. Returns the shown
    cases and how many had their images left out by the bounds."""
    confirmed = [c for c in cases if c.get("evidence")]
    confirmed.sort(
        key=lambda c: (_VERDICT_ORDER.get(str(c.get("verdict")), 3), -float(c["evidence"].get("similarity") or 0.0))
    )
    shown: list[dict[str, Any]] = []
    left_out = 0
    used = 0
    for case in confirmed:
        ev = case["evidence"]
        thumbs = [str(t) for t in ev.get("thumbnails") or []]
        training = {str(k): str(v) for k, v in (ev.get("training_thumbnails") or {}).items()}
        size = sum(len(t) for t in thumbs) + sum(len(t) for t in training.values())
        with_images = len(shown) < EVIDENCE_CASES and used + size <= EVIDENCE_BYTES
        if with_images:
            used += size
        elif thumbs or training:
            left_out += 1
        best, closest = ev.get("best") or [], ev.get("closest") or []
        threshold = ev.get("threshold")
        generations = [
            {
                "src": f"data:image/png;base64,{thumbs[i]}" if with_images and i < len(thumbs) else None,
                "similarity": fmt_num(best[i], 3) if i < len(best) else "—",
                "closest": str(closest[i]) if i < len(closest) else "",
                "above": threshold is not None and i < len(best) and float(best[i]) > float(threshold),
            }
            for i in range(max(len(thumbs), len(best)))
        ]
        shown.append(
            {
                "id": case["id"],
                "prompt": case["prompt"],
                "verdict": case.get("verdict") or "—",
                "inherited": bool(case.get("inherited")),
                "outcome": case["outcome"],
                "descriptor": str((ev.get("descriptor") or {}).get("name", "")),
                "threshold": fmt_num(threshold, 4) if threshold is not None else "none",
                "threshold_source": str(ev.get("threshold_source", "")),
                "agreement": fmt_num((ev.get("agreement") or {}).get("mean"), 3),
                "summary": str(ev.get("summary", "")),
                "generations": generations,
                "training": [
                    {"index": k, "src": f"data:image/png;base64,{v}" if with_images else None}
                    for k, v in sorted(training.items(), key=lambda kv: int(kv[0]))
                ],
                "training_images": int(ev.get("training_images") or 0),
                # how they were taken (memtest.evidence.comparison_settings); absent in results before it was named
                "taken": str(((ev.get("descriptor") or {}).get("settings") or {}).get("training_images", "")),
            }
        )
    return shown, left_out


#: The duplication tags `memtest suite from-dataset` puts on a case (docs/datasets.md), and how many at-risk cases the
#: "Training-data risk" section lists (the rest are counted).
RISK_TAGS = ("repeats", "images", "dup-cluster", "dup-caption")
RISK_ROWS = 200


def _risk_tags(tags: Sequence[object]) -> tuple[dict[str, int], bool] | None:
    """A case's duplication counts (`repeats:N`, `images:K`, `dup-cluster:M`, `dup-caption:R`) and whether it is
    `at-risk`; None when it carries none of these tags (it does not come from a training set)."""
    counts: dict[str, int] = {}
    at_risk = False
    for tag in tags:
        name, sep, value = str(tag).partition(":")
        if sep and name in RISK_TAGS and value.isdigit():
            counts[name] = int(value)
        elif str(tag) == "at-risk":
            at_risk = True
    return (counts, at_risk) if counts or at_risk else None


def _risk_model(cases: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The "Training-data risk" section: the at-risk cases with their duplication counts and verdicts (copies first,
    then the most exposed), and the verdicts of the at-risk and the other training-set cases; None when no case
    carries the tags."""
    found = []
    for case in cases:
        risk = _risk_tags(case.get("tags") or [])
        if risk is not None:
            found.append((case, *risk))
    if not found:
        return None

    def verdicts(rows: Sequence[Mapping[str, Any]]) -> str:
        counted: dict[str, int] = {}
        for c in rows:
            key = str(c.get("verdict") or c["outcome"])
            counted[key] = counted.get(key, 0) + 1
        order = sorted(counted, key=lambda k: (_VERDICT_ORDER.get(k, 3), k))
        return ", ".join(f"{counted[k]} {k}" for k in order) or "none"

    risky = [(c, n) for c, n, at_risk in found if at_risk]
    risky.sort(
        key=lambda cn: (
            _VERDICT_ORDER.get(str(cn[0].get("verdict")), 3),
            -max(cn[1].get("repeats", 1), cn[1].get("dup-cluster", 1)),
            -cn[1].get("dup-cluster", 1),
            str(cn[0]["id"]),
        )
    )
    rows = [
        {
            "id": c["id"],
            "prompt": c["prompt"],
            "verdict": c.get("verdict") or "—",
            "outcome": c["outcome"],
            "repeats": str(n.get("repeats", "—")),
            "images": str(n.get("images", "—")),
            "cluster": str(n.get("dup-cluster", "—")),
            "caption_rows": str(n.get("dup-caption", 1)),
        }
        for c, n in risky[:RISK_ROWS]
    ]
    return {
        "cases": len(found),
        "at_risk": len(risky),
        "rows": rows,
        "left_out": max(0, len(risky) - RISK_ROWS),
        "verdicts_at_risk": verdicts([c for c, _ in risky]),
        "verdicts_other": verdicts([c for c, _, at_risk in found if not at_risk]),
    }


def _csp(scripts: Sequence[str]) -> str:
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(s.encode("utf-8")).digest()).decode("ascii") + "'" for s in scripts
    )
    return (
        "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
        f"script-src {hashes}; base-uri 'none'; form-action 'none'"
    )


def _environment() -> Environment:
    return Environment(
        loader=FileSystemLoader(str(data_dir("reports"))),
        autoescape=True,
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _asset(env: Environment, name: str) -> str:
    assert env.loader is not None
    source, _, _ = env.loader.get_source(env, name)
    # A "</" inside an inline <script>/<style> would end it early; our assets never contain one.
    if "</script" in source.lower() or "</style" in source.lower():
        raise ResultsError(f"Report asset {name} contains a closing tag; reinstall memtest.")
    return source


def build_context(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The template's variables for `doc` (validated first)."""
    validate_results(doc)
    cases = doc["cases"]
    summary = summarize(cases)
    calibration = doc["calibration"]
    threshold = _doc_threshold(doc)
    scored = [c for c in cases if c["score"] is not None]
    series: list[tuple[str, str, Sequence[float]]] = []
    if calibration is not None:
        series.append(("reference (calibration)", C_REFERENCE, [float(v) for v in calibration["reference_scores"]]))
    for expectation, label, colour in (
        ("clean", "audited: expected clean", C_CLEAN),
        ("memorized", "audited: expected memorized", C_MEMORIZED),
        ("reference", "audited: reference", "#6e7781"),
    ):
        series.append((label, colour, [float(c["score"]) for c in scored if c["expectation"] == expectation]))
    histogram = histogram_svg(series, threshold, calibration["ci"] if calibration is not None else None)
    roc = roc_stats(doc)
    mitigation = sorted(doc.get("mitigation") or [], key=lambda e: str(e["id"]))
    spectra = sorted(doc.get("spectra") or [], key=lambda s: str(s["id"]))
    drawn = [s for s in spectra if s["eigenvalues"]]
    checkpoint = doc["checkpoint"]
    environment = dict(doc["environment"])
    evidence, evidence_left_out = _evidence_model(cases)
    return {
        "doc": doc,
        "verdict": _verdict(summary, doc.get("budget")),
        "budget": doc.get("budget"),
        "evidence": evidence,
        "evidence_left_out": evidence_left_out,
        "evidence_limits": (EVIDENCE_CASES, EVIDENCE_BYTES),
        "attribution": _attribution_model(cases),
        "risk": _risk_model(cases),
        "summary": summary,
        "checkpoint": checkpoint,
        "config": _kv({k: v for k, v in (checkpoint.get("config") or {}).items() if k != "adapters"}),
        "adapters": _adapter_rows((checkpoint.get("config") or {}).get("adapters") or []),
        "calibration": calibration,
        "calibration_other_fingerprint": (
            calibration is not None
            and bool(calibration.get("fingerprint"))
            and calibration.get("fingerprint") != checkpoint["fingerprint"]
        ),
        "threshold": fmt_num(threshold),
        "settings": _kv(doc["settings"]),
        "rows": _case_rows(cases),
        "look": look_at(cases),
        "page": PAGE_ROWS,
        "suites": sorted({str(c["suite"]) for c in cases}),
        "histogram": histogram,
        "roc": roc,
        "roc_svg": roc_svg(roc.fpr, roc.tpr, roc.auc, roc.target_fpr, roc.tpr_at_target) if roc else None,
        "spectra": spectra,
        "spectra_svg": spectra_svg([(str(s["id"]), str(s["prompt"]), s["eigenvalues"]) for s in drawn[:_MAX_SPECTRA]]),
        "spectra_hidden": max(0, len(drawn) - _MAX_SPECTRA),
        "mitigation": _mitigation_model(mitigation),
        "mitigation_svg": mitigation_svg(
            [
                (str(e["id"]), _mean(e["sharpness_before"]), _mean(e["sharpness_after"]))
                for e in mitigation
                if e["sharpness_before"] or e["sharpness_after"]
            ],
            threshold,
        ),
        "environment": _kv(environment),
        "fmt": fmt_num,
    }


def render_report(doc: Mapping[str, Any]) -> str:
    """Render `doc` (a results document) as one self-contained HTML page; deterministic."""
    env = _environment()
    scripts = [(script_id, _asset(env, name)) for script_id, name in _SCRIPTS]
    context = build_context(doc)
    context["css"] = Markup(_asset(env, "report.css"))
    context["scripts"] = {script_id: Markup(source) for script_id, source in scripts}
    context["csp"] = _csp([source for _, source in scripts])
    return env.get_template(TEMPLATE).render(context)


def write_report(doc: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Render `doc` and write it atomically to `path`; return the path."""
    out = Path(path)
    atomic_write_text(out, render_report(doc))
    return out


# --------------------------------------------------------------------------------------------------
# CLI: memtest report RESULTS.json [RESULTS2.json ...] -o PATH


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="memtest report",
        description="Render memtest results as one self-contained HTML page. "
        "Several results files (the shards of one run) are merged first.",
    )
    parser.add_argument("results", nargs="+", metavar="RESULTS.json", help="results file(s) to render")
    parser.add_argument("-o", "--output", default="memtest-report.html", metavar="PATH", help="HTML file to write")
    return parser


def report_main(
    argv: Sequence[str] | None = None,
    *,
    out: Callable[[str], None] | None = None,
    spell: Callable[[str, str | None], str] = neutral_spelling,
) -> int:
    """`memtest report`: returns 0 when the page was written, 2 on bad arguments or input. An error names
    options as `spell` (the calling front end's spelling, memtest.errors.render_options) writes them."""
    say = out or (lambda line: print(line))
    try:
        args = _parser().parse_args(list(argv) if argv is not None else None)
    except SystemExit as exc:  # --help or a usage error; argparse already printed the message
        return exc.code if isinstance(exc.code, int) else 2
    try:
        docs = [load_results(path) for path in args.results]
        doc = docs[0] if len(docs) == 1 else merge_results(docs, sources=list(args.results))
        path = write_report(doc, args.output)
    except MemtestError as exc:
        print(f"memtest report: error: {exc.render(spell)}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"memtest report: error: cannot write {args.output}: {exc}", file=sys.stderr)
        return 2
    summary = summarize(doc["cases"])
    say(
        f"memtest report: wrote {path} ({_verdict(summary)}: {summary['passed']} passed, "
        f"{summary['failed']} failed, {summary['errors']} errors, {summary['flagged']} flagged)"
    )
    return 0
