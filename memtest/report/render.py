"""Render a results document (`memtest.results/1`) as one self-contained HTML page.

The page has inline CSS and JS, inline SVG plots drawn here by hand, and images as data: URLs; it
loads nothing from the network. Everything from the document is escaped (Jinja autoescape for
HTML, `_esc` for SVG text); a Content-Security-Policy that allows only the page's own scripts (by
hash) is a second line of defence. Rendering is deterministic: the same document gives the same
bytes. No torch here; scikit-learn is imported only when a ROC curve is drawn.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import math
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup, escape

from memtest._resources import data_dir
from memtest.audit.results import (
    atomic_write_text,
    load_results,
    merge_results,
    summarize,
    validate_results,
)
from memtest.errors import MemtestError, ResultsError

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
_MAX_SPECTRA = 12
# Series colours (colour-blind-friendly, Okabe-Ito based).
_C_REFERENCE = "#8c959f"
_C_CLEAN = "#0072b2"
_C_MEMORIZED = "#d55e00"
_C_THRESHOLD = "#cf222e"
_C_AFTER = "#009e73"
_PALETTE = ("#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000", "#f0e442")


# --------------------------------------------------------------------------------------------------
# formatting


def fmt_num(value: object, digits: int = 4) -> str:
    """A number for display: `digits` significant digits, '—' for missing."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return "—"
    if isinstance(value, int):
        return f"{value:,}"
    if value == 0:
        return "0"
    return f"{value:.{digits}g}"


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


def _esc(text: object) -> str:
    return str(escape(str(text)))


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


# --------------------------------------------------------------------------------------------------
# SVG plots (hand-built: no matplotlib import, crisp at any zoom, a few KB, text stays searchable)


def _nice_step(span: float, target: int) -> float:
    raw = span / max(target, 1)
    power = 10.0 ** math.floor(math.log10(raw))
    for mult in (1, 2, 2.5, 5, 10):
        if mult * power >= raw:
            return mult * power
    return 10 * power


def _p(x: float) -> str:
    """A coordinate: 2 decimals, no trailing zeros (small, deterministic SVG)."""
    text = f"{x:.2f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


@dataclass(frozen=True)
class _Scale:
    """Maps data values to pixels: kind is 'linear', 'log' (values > 0) or 'symlog' (constant c)."""

    lo: float
    hi: float
    a: float
    b: float
    kind: str = "linear"
    c: float = 1.0
    integer: bool = False

    def _t(self, v: float) -> float:
        if self.kind == "log":
            return math.log10(max(v, 1e-300))
        if self.kind == "symlog":
            return math.copysign(math.log10(1 + abs(v) / self.c), v)
        return v

    def __call__(self, v: float) -> float:
        lo, hi = self._t(self.lo), self._t(self.hi)
        t = 0.5 if hi == lo else (self._t(v) - lo) / (hi - lo)
        return self.a + t * (self.b - self.a)

    def ticks(self) -> list[float]:
        if self.kind == "log":
            k0, k1 = math.floor(math.log10(self.lo) + 1e-9), math.ceil(math.log10(self.hi) - 1e-9)
            every = max(1, math.ceil((k1 - k0 + 1) / 8))
            return [10.0**k for k in range(k0, k1 + 1, every)]
        if self.kind == "symlog":
            out = [0.0] if self.lo <= 0 <= self.hi else []
            top = max(abs(self.lo), abs(self.hi))
            k_max = math.ceil(math.log10(top / self.c)) if top > self.c else 0
            every = max(1, math.ceil((k_max + 1) / 6))
            for k in range(0, k_max + 1, every):
                v = self.c * 10.0**k
                out.extend(t for t in (v, -v) if self.lo <= t <= self.hi)
            return sorted(out)
        step = _nice_step(self.hi - self.lo, 6)
        if self.integer:
            step = max(1.0, math.ceil(step))
        first = math.ceil(self.lo / step - 1e-9) * step
        out = []
        v = first
        while v <= self.hi + step * 1e-9:
            out.append(0.0 if abs(v) < step * 1e-9 else v)
            v += step
        return out


def _linear_domain(values: Iterable[float], pad: float = 0.05) -> tuple[float, float]:
    vals = list(values)
    lo, hi = min(vals), max(vals)
    if lo == hi:
        span = abs(lo) * 0.1 or 1.0
        return lo - span, hi + span
    span = hi - lo
    return lo - span * pad, hi + span * pad


def _tick_label(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e4 or abs(v) < 1e-3:
        mantissa, exp = f"{v:.0e}".split("e")
        return f"{mantissa}e{int(exp)}"
    return f"{v:.3g}"


class _Svg:
    """A tiny SVG writer: every text goes through _esc, every number through _p."""

    def __init__(self, width: int, height: int, title: str, css_class: str = "plot") -> None:
        self.width, self.height = width, height
        self.parts: list[str] = [
            f'<svg class="{css_class}" viewBox="0 0 {width} {height}" role="img" '
            f'aria-label="{_esc(title)}" preserveAspectRatio="xMidYMid meet">',
            f"<title>{_esc(title)}</title>",
        ]

    def add(self, raw: str) -> None:
        self.parts.append(raw)

    def line(self, x1: float, y1: float, x2: float, y2: float, cls: str, tip: str | None = None) -> None:
        body = f'<line class="{cls}" x1="{_p(x1)}" y1="{_p(y1)}" x2="{_p(x2)}" y2="{_p(y2)}"'
        self.parts.append(f"{body}><title>{_esc(tip)}</title></line>" if tip else f"{body}/>")

    def text(self, x: float, y: float, content: str, cls: str = "tick", anchor: str = "middle") -> None:
        self.parts.append(f'<text class="{cls}" x="{_p(x)}" y="{_p(y)}" text-anchor="{anchor}">{_esc(content)}</text>')

    def rect(self, x: float, y: float, w: float, h: float, fill: str, opacity: float = 1.0) -> None:
        self.parts.append(
            f'<rect x="{_p(x)}" y="{_p(y)}" width="{_p(max(w, 0.0))}" height="{_p(max(h, 0.0))}" '
            f'fill="{fill}" fill-opacity="{_p(opacity)}"/>'
        )

    def path(self, points: Sequence[tuple[float, float]], stroke: str, fill: str = "none", **extra: str) -> None:
        if not points:
            return
        d = "M" + "L".join(f"{_p(x)},{_p(y)}" for x, y in points)
        attrs = "".join(f' {k.replace("_", "-")}="{v}"' for k, v in extra.items())
        self.parts.append(f'<path d="{d}" stroke="{stroke}" fill="{fill}"{attrs}/>')

    def circle(self, x: float, y: float, r: float, fill: str, tip: str | None = None) -> None:
        body = f'<circle cx="{_p(x)}" cy="{_p(y)}" r="{_p(r)}" fill="{fill}"'
        self.parts.append(f"{body}><title>{_esc(tip)}</title></circle>" if tip else f"{body}/>")

    def legend(self, x: float, y: float, items: Sequence[tuple[str, str]], tips: Sequence[str] = ()) -> None:
        """A legend; lays items out in a row from (x, y), wrapping at the right edge."""
        xx, yy = x, y
        for i, (label, colour) in enumerate(items):
            width = 20 + 6.4 * len(label)
            if xx > x and xx + width > self.width - 8:
                xx, yy = x, yy + 16
            self.rect(xx, yy - 9, 10, 10, colour, 0.85)
            title = f"<title>{_esc(tips[i])}</title>" if i < len(tips) else ""
            self.parts.append(
                f'<text class="legend" x="{_p(xx + 14)}" y="{_p(yy)}" text-anchor="start">{_esc(label)}{title}</text>'
            )
            xx += width + 14

    def legend_column(self, x: float, y: float, items: Sequence[tuple[str, str]], tips: Sequence[str] = ()) -> None:
        for i, (label, colour) in enumerate(items):
            yy = y + i * 16
            self.rect(x, yy - 9, 10, 10, colour, 0.85)
            title = f"<title>{_esc(tips[i])}</title>" if i < len(tips) else ""
            self.parts.append(
                f'<text class="legend" x="{_p(x + 14)}" y="{_p(yy)}" text-anchor="start">{_esc(label)}{title}</text>'
            )

    def xaxis(self, xs: _Scale, y0: float, y1: float, xlabel: str) -> None:
        for t in xs.ticks():
            x = xs(t)
            self.line(x, y0, x, y1, "grid")
            self.line(x, y0, x, y0 + 4, "axis")
            self.text(x, y0 + 16, _tick_label(t))
        self.line(xs.a, y0, xs.b, y0, "axis")
        self.text((xs.a + xs.b) / 2, self.height - 6, xlabel, cls="label")

    def axes(self, xs: _Scale, ys: _Scale, xlabel: str, ylabel: str, *, xgrid: bool = False) -> None:
        x0, x1, y0, y1 = xs.a, xs.b, ys.a, ys.b
        last = math.inf
        for t in ys.ticks():
            y = ys(t)
            self.line(x0, y, x1, y, "grid")
            if abs(y - last) >= 12:  # skip labels that would overlap (symlog near zero)
                self.text(x0 - 6, y + 3.5, _tick_label(t), anchor="end")
                last = y
        for t in xs.ticks():
            x = xs(t)
            if xgrid:
                self.line(x, y0, x, y1, "grid")
            self.line(x, y0, x, y0 + 4, "axis")
            self.text(x, y0 + 16, _tick_label(t))
        self.line(x0, y0, x1, y0, "axis")
        self.line(x0, y0, x0, y1, "axis")
        self.text((x0 + x1) / 2, self.height - 6, xlabel, cls="label")
        self.parts.append(
            f'<text class="label" x="12" y="{_p((y0 + y1) / 2)}" text-anchor="middle" '
            f'transform="rotate(-90 12 {_p((y0 + y1) / 2)})">{_esc(ylabel)}</text>'
        )

    def render(self) -> Markup:
        return Markup("".join([*self.parts, "</svg>"]))


def _wants_log(values: Sequence[float]) -> bool:
    positive = [v for v in values if v > 0]
    return len(positive) == len(values) and len(values) > 1 and max(values) / min(values) >= 100


def _histogram_svg(
    series: Sequence[tuple[str, str, Sequence[float]]],
    threshold: float | None,
    ci: Sequence[float] | None,
) -> Markup | None:
    """Overlaid step histograms of several score series (share of each series per bin)."""
    series = [s for s in series if s[2]]
    if not series:
        return None
    every = [v for _, _, vals in series for v in vals]
    marks = [threshold] if threshold is not None else []
    log = _wants_log(every + [m for m in marks if m > 0]) and all(m > 0 for m in marks)
    w, h, left, right, top, bottom = 760, 300, 56, 16, 34, 44
    if log:
        lo = 10.0 ** math.floor(math.log10(min(every + marks)))
        hi = 10.0 ** math.ceil(math.log10(max(every + marks)))
    else:
        lo, hi = _linear_domain(every + marks)
    xs = _Scale(lo, hi, left, w - right, "log" if log else "linear")
    n_bins = 40
    edges = (
        [10.0 ** (math.log10(lo) + i * (math.log10(hi) - math.log10(lo)) / n_bins) for i in range(n_bins + 1)]
        if log
        else [lo + i * (hi - lo) / n_bins for i in range(n_bins + 1)]
    )

    def bin_of(v: float) -> int:
        t = (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)) if log else (v - lo) / (hi - lo)
        return min(n_bins - 1, max(0, int(t * n_bins)))

    shares: list[list[float]] = []
    for _, _, vals in series:
        counts = [0] * n_bins
        for v in vals:
            counts[bin_of(v)] += 1
        shares.append([c / len(vals) for c in counts])
    ymax = max(max(s) for s in shares)
    ys = _Scale(0.0, ymax * 1.1, h - bottom, top)
    svg = _Svg(w, h, "Histogram of sharpness scores with the threshold")
    if threshold is not None and ci is not None and len(ci) == 2:
        a, b = sorted((xs(max(ci[0], lo)), xs(min(ci[1], hi))))
        svg.rect(a, top, max(b - a, 1.0), h - bottom - top, _C_THRESHOLD, 0.08)
    svg.axes(xs, ys, "sharpness score" + (" (log scale)" if log else ""), "share of series")
    for (_label, colour, _vals), share in zip(series, shares, strict=True):
        pts: list[tuple[float, float]] = [(xs(edges[0]), ys(0))]
        for i, s in enumerate(share):
            pts += [(xs(edges[i]), ys(s)), (xs(edges[i + 1]), ys(s))]
        pts.append((xs(edges[-1]), ys(0)))
        svg.path(pts, colour, colour, fill_opacity="0.18", stroke_width="1.5")
    if threshold is not None:
        x = xs(threshold)
        svg.line(x, top, x, h - bottom, "threshold", tip=f"threshold {fmt_num(threshold)}")
        svg.text(x + 4, top + 10, f"threshold {fmt_num(threshold)}", cls="thr", anchor="start")
    svg.legend(left, 14, [(f"{label} (n={len(vals)})", colour) for label, colour, vals in series])
    return svg.render()


@dataclass(frozen=True)
class RocResult:
    auc: float
    tpr_at_target: float | None
    target_fpr: float | None
    n_positive: int
    n_negative: int
    negatives_from: str
    svg: Markup


def tpr_at_fpr(fpr: Sequence[float], tpr: Sequence[float], target: float) -> float:
    """The largest TPR whose FPR does not exceed `target` (0 when none does)."""
    best = 0.0
    for f, t in zip(fpr, tpr, strict=True):
        if f <= target + 1e-12 and t > best:
            best = float(t)
    return best


def _roc(doc: Mapping[str, Any]) -> RocResult | None:
    cases = [c for c in doc["cases"] if c["score"] is not None]
    pos = [float(c["score"]) for c in cases if c["expectation"] == "memorized"]
    neg = [float(c["score"]) for c in cases if c["expectation"] in ("clean", "reference")]
    n_clean = sum(1 for c in cases if c["expectation"] == "clean")
    n_ref_cases = len(neg) - n_clean
    parts = []
    if n_clean:
        parts.append(f"{n_clean} clean cases")
    if n_ref_cases:
        parts.append(f"{n_ref_cases} reference cases")
    calibration = doc["calibration"]
    # Calibration reference scores are negatives too, unless the run scored the reference suite
    # itself (then they would be counted twice).
    if calibration is not None and n_ref_cases == 0 and calibration["reference_scores"]:
        neg += [float(v) for v in calibration["reference_scores"]]
        parts.append(f"{len(calibration['reference_scores'])} calibration reference scores")
    if not pos or not neg:
        return None
    from sklearn.metrics import roc_auc_score, roc_curve  # lazy: ~0.5 s import, only when needed

    y_true = [1] * len(pos) + [0] * len(neg)
    scores = pos + neg
    auc = float(roc_auc_score(y_true, scores))
    fpr_all, tpr_all, _ = roc_curve(y_true, scores, drop_intermediate=False)
    target = float(calibration["fpr"]) if calibration is not None else None
    at_target = tpr_at_fpr(list(fpr_all), list(tpr_all), target) if target is not None else None
    fpr_pl, tpr_pl, _ = roc_curve(y_true, scores, drop_intermediate=True)

    size, left, bottom, top, right = 340, 52, 44, 14, 14
    xs = _Scale(0.0, 1.0, left, size - right)
    ys = _Scale(0.0, 1.0, size - bottom, top)
    svg = _Svg(size, size, f"ROC curve, AUC {auc:.3f}", css_class="plot plot-square")
    svg.axes(xs, ys, "false positive rate", "true positive rate", xgrid=True)
    svg.line(xs(0), ys(0), xs(1), ys(1), "diag")
    svg.path([(xs(float(f)), ys(float(t))) for f, t in zip(fpr_pl, tpr_pl, strict=True)], _C_CLEAN, stroke_width="2")
    if target is not None and at_target is not None:
        svg.line(xs(target), ys(0), xs(target), ys(1), "target")
        svg.circle(
            xs(target),
            ys(at_target),
            4.5,
            _C_MEMORIZED,
            tip=f"TPR {at_target:.3f} at FPR ≤ {fmt_num(target, 3)}",
        )
    svg.text(xs(0.97), ys(0.06), f"AUC = {auc:.3f}", cls="annot", anchor="end")
    return RocResult(auc, at_target, target, len(pos), len(neg), ", ".join(parts), svg.render())


def _spectra_svg(spectra: Sequence[Mapping[str, Any]]) -> Markup | None:
    shown = [s for s in spectra if s["eigenvalues"]][:_MAX_SPECTRA]
    if not shown:
        return None
    values = [float(v) for s in shown for v in s["eigenvalues"]]
    nonzero = [abs(v) for v in values if v != 0]
    w, h, left, right, top, bottom = 720, 300, 64, 220, 16, 44
    lo, hi = min([*values, 0.0]), max([*values, 0.0])
    kind, c = "linear", 1.0
    if nonzero and max(nonzero) / min(nonzero) >= 1000:
        kind, c = "symlog", 10.0 ** math.floor(math.log10(min(nonzero)))
    else:
        lo, hi = _linear_domain([lo, hi])
    n_max = max(len(s["eigenvalues"]) for s in shown)
    xs = _Scale(1.0, float(max(n_max, 2)), left, w - right, integer=True)
    ys = _Scale(lo, hi, h - bottom, top, kind, c)
    svg = _Svg(w, h, "Eigenvalue spectra, sorted from most negative")
    svg.axes(xs, ys, "eigenvalue rank", "eigenvalue" + (" (symmetric log)" if kind == "symlog" else ""))
    legend: list[tuple[str, str]] = []
    tips: list[str] = []
    for i, entry in enumerate(shown):
        colour = _PALETTE[i % len(_PALETTE)]
        ev = sorted(float(v) for v in entry["eigenvalues"])
        pts = [(xs(float(j + 1)), ys(v)) for j, v in enumerate(ev)]
        svg.path(pts, colour, stroke_width="1.6")
        if len(pts) <= 64:
            for (x, y), v in zip(pts, ev, strict=True):
                svg.circle(x, y, 2.2, colour, tip=f"{entry['id']}: {fmt_num(v)}")
        legend.append((_truncate(str(entry["id"]), 30), colour))
        tips.append(f"{entry['id']} — {entry['prompt']}")
    svg.legend_column(w - right + 14, top + 10, legend, tips)
    return svg.render()


def _mitigation_svg(entries: Sequence[Mapping[str, Any]], threshold: float | None) -> Markup | None:
    rows = [
        (e, _mean(e["sharpness_before"]), _mean(e["sharpness_after"]))
        for e in entries
        if e["sharpness_before"] or e["sharpness_after"]
    ]
    if not rows:
        return None
    values = [v for _, b, a in rows for v in (b, a) if v is not None]
    thr = [threshold] if threshold is not None else []
    log = _wants_log(values + thr) and all(t > 0 for t in thr)
    row_h, left, right, top, bottom, w = 22, 200, 24, 30, 44, 760
    h = top + bottom + row_h * len(rows)
    if log:
        lo = 10.0 ** math.floor(math.log10(min(values + thr)))
        hi = 10.0 ** math.ceil(math.log10(max(values + thr)))
    else:
        lo, hi = _linear_domain(values + thr)
    xs = _Scale(lo, hi, left, w - right, "log" if log else "linear")
    ys = _Scale(0.0, float(len(rows)), top, h - bottom)
    svg = _Svg(w, h, "Mean sharpness before and after mitigation")
    svg.xaxis(xs, h - bottom, top, "mean sharpness over generations" + (" (log scale)" if log else ""))
    for i, (entry, before, after) in enumerate(rows):
        y = ys(i + 0.5)
        svg.text(left - 8, y + 4, _truncate(str(entry["id"]), 28), cls="rowlabel", anchor="end")
        if before is not None and after is not None:
            svg.line(xs(before), y, xs(after), y, "dumbbell")
        if before is not None:
            svg.circle(xs(before), y, 5, _C_MEMORIZED, tip=f"{entry['id']} before: {fmt_num(before)}")
        if after is not None:
            svg.circle(xs(after), y, 5, _C_AFTER, tip=f"{entry['id']} after: {fmt_num(after)}")
    if threshold is not None:
        x = xs(threshold)
        svg.line(x, top, x, h - bottom, "threshold", tip=f"threshold {fmt_num(threshold)}")
    svg.legend(left, 14, [("before mitigation", _C_MEMORIZED), ("after mitigation", _C_AFTER)])
    return svg.render()


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
        parts.append(f"{len(errors)} case(s) could not be judged: {_truncate(causes[0], 160)}{others}")
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


def _verdict(summary: Mapping[str, int]) -> str:
    if summary["total"] == 0:
        return "EMPTY"
    return "PASS" if summary["failed"] == 0 and summary["errors"] == 0 else "FAIL"


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
        series.append(("reference (calibration)", _C_REFERENCE, [float(v) for v in calibration["reference_scores"]]))
    for expectation, label, colour in (
        ("clean", "audited: expected clean", _C_CLEAN),
        ("memorized", "audited: expected memorized", _C_MEMORIZED),
        ("reference", "audited: reference", "#6e7781"),
    ):
        series.append((label, colour, [float(c["score"]) for c in scored if c["expectation"] == expectation]))
    histogram = _histogram_svg(series, threshold, calibration["ci"] if calibration is not None else None)
    mitigation = doc.get("mitigation") or []
    spectra = sorted(doc.get("spectra") or [], key=lambda s: str(s["id"]))
    checkpoint = doc["checkpoint"]
    environment = dict(doc["environment"])
    return {
        "doc": doc,
        "verdict": _verdict(summary),
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
        "roc": _roc(doc),
        "spectra": spectra,
        "spectra_svg": _spectra_svg(spectra),
        "spectra_hidden": max(0, len([s for s in spectra if s["eigenvalues"]]) - _MAX_SPECTRA),
        "mitigation": _mitigation_model(mitigation),
        "mitigation_svg": _mitigation_svg(sorted(mitigation, key=lambda e: str(e["id"])), threshold),
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


def report_main(argv: Sequence[str] | None = None, *, out: Callable[[str], None] | None = None) -> int:
    """`memtest report`: returns 0 when the page was written, 2 on bad arguments or input."""
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
        print(f"memtest report: error: {exc}", file=sys.stderr)
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
