"""The report's plots, drawn as inline SVG by hand: no matplotlib import, crisp at any zoom, a few KB, text
stays searchable. A drawing kit (`Scale`, `Svg`, tick helpers, the palette) and the four plots the page
shows. The plots take plain numbers and labels, not results documents; the page model (render.py) picks
what to draw. Every text goes through Markup escaping, every coordinate through `coord`, so the same input
gives the same bytes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

# Series colours (colour-blind-friendly, Okabe-Ito based).
C_REFERENCE = "#8c959f"
C_CLEAN = "#0072b2"
C_MEMORIZED = "#d55e00"
C_THRESHOLD = "#cf222e"
C_AFTER = "#009e73"
PALETTE = ("#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000", "#f0e442")


# --------------------------------------------------------------------------------------------------
# text: the number format the plots share with the page


def fmt_num(value: object, digits: int = 4) -> str:
    """A number for display: `digits` significant digits, '—' for missing."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return "—"
    if isinstance(value, int):
        return f"{value:,}"
    if value == 0:
        return "0"
    return f"{value:.{digits}g}"


def truncate(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, the last one an ellipsis where it was cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _esc(text: object) -> str:
    return str(escape(str(text)))


# --------------------------------------------------------------------------------------------------
# the kit: scales, ticks, a tiny SVG writer


def nice_step(span: float, target: int) -> float:
    """A round tick step (1, 2, 2.5 or 5 times a power of ten) giving about `target` ticks over `span`."""
    raw = span / max(target, 1)
    power = 10.0 ** math.floor(math.log10(raw))
    for mult in (1, 2, 2.5, 5, 10):
        if mult * power >= raw:
            return mult * power
    return 10 * power


def coord(x: float) -> str:
    """A coordinate: 2 decimals, no trailing zeros (small, deterministic SVG)."""
    text = f"{x:.2f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


@dataclass(frozen=True)
class Scale:
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
        step = nice_step(self.hi - self.lo, 6)
        if self.integer:
            step = max(1.0, math.ceil(step))
        first = math.ceil(self.lo / step - 1e-9) * step
        out = []
        v = first
        while v <= self.hi + step * 1e-9:
            out.append(0.0 if abs(v) < step * 1e-9 else v)
            v += step
        return out


def linear_domain(values: Iterable[float], pad: float = 0.05) -> tuple[float, float]:
    """The [lo, hi] of a linear axis over `values`, padded by `pad` of the span (or widened when flat)."""
    vals = list(values)
    lo, hi = min(vals), max(vals)
    if lo == hi:
        span = abs(lo) * 0.1 or 1.0
        return lo - span, hi + span
    span = hi - lo
    return lo - span * pad, hi + span * pad


def tick_label(v: float) -> str:
    """A tick's label: 3 significant digits, or a short exponent form for very large or small values."""
    if v == 0:
        return "0"
    if abs(v) >= 1e4 or abs(v) < 1e-3:
        mantissa, exp = f"{v:.0e}".split("e")
        return f"{mantissa}e{int(exp)}"
    return f"{v:.3g}"


def wants_log(values: Sequence[float]) -> bool:
    """Whether an axis over `values` should be logarithmic: all positive, spanning two orders or more."""
    positive = [v for v in values if v > 0]
    return len(positive) == len(values) and len(values) > 1 and max(values) / min(values) >= 100


class Svg:
    """A tiny SVG writer: every text is escaped, every number goes through `coord`."""

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
        body = f'<line class="{cls}" x1="{coord(x1)}" y1="{coord(y1)}" x2="{coord(x2)}" y2="{coord(y2)}"'
        self.parts.append(f"{body}><title>{_esc(tip)}</title></line>" if tip else f"{body}/>")

    def text(self, x: float, y: float, content: str, cls: str = "tick", anchor: str = "middle") -> None:
        self.parts.append(
            f'<text class="{cls}" x="{coord(x)}" y="{coord(y)}" text-anchor="{anchor}">{_esc(content)}</text>'
        )

    def rect(self, x: float, y: float, w: float, h: float, fill: str, opacity: float = 1.0) -> None:
        self.parts.append(
            f'<rect x="{coord(x)}" y="{coord(y)}" width="{coord(max(w, 0.0))}" height="{coord(max(h, 0.0))}" '
            f'fill="{fill}" fill-opacity="{coord(opacity)}"/>'
        )

    def path(self, points: Sequence[tuple[float, float]], stroke: str, fill: str = "none", **extra: str) -> None:
        if not points:
            return
        d = "M" + "L".join(f"{coord(x)},{coord(y)}" for x, y in points)
        attrs = "".join(f' {k.replace("_", "-")}="{v}"' for k, v in extra.items())
        self.parts.append(f'<path d="{d}" stroke="{stroke}" fill="{fill}"{attrs}/>')

    def circle(self, x: float, y: float, r: float, fill: str, tip: str | None = None) -> None:
        body = f'<circle cx="{coord(x)}" cy="{coord(y)}" r="{coord(r)}" fill="{fill}"'
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
                f'<text class="legend" x="{coord(xx + 14)}" y="{coord(yy)}" text-anchor="start">'
                f"{_esc(label)}{title}</text>"
            )
            xx += width + 14

    def legend_column(self, x: float, y: float, items: Sequence[tuple[str, str]], tips: Sequence[str] = ()) -> None:
        for i, (label, colour) in enumerate(items):
            yy = y + i * 16
            self.rect(x, yy - 9, 10, 10, colour, 0.85)
            title = f"<title>{_esc(tips[i])}</title>" if i < len(tips) else ""
            self.parts.append(
                f'<text class="legend" x="{coord(x + 14)}" y="{coord(yy)}" text-anchor="start">'
                f"{_esc(label)}{title}</text>"
            )

    def xaxis(self, xs: Scale, y0: float, y1: float, xlabel: str) -> None:
        for t in xs.ticks():
            x = xs(t)
            self.line(x, y0, x, y1, "grid")
            self.line(x, y0, x, y0 + 4, "axis")
            self.text(x, y0 + 16, tick_label(t))
        self.line(xs.a, y0, xs.b, y0, "axis")
        self.text((xs.a + xs.b) / 2, self.height - 6, xlabel, cls="label")

    def axes(self, xs: Scale, ys: Scale, xlabel: str, ylabel: str, *, xgrid: bool = False) -> None:
        x0, x1, y0, y1 = xs.a, xs.b, ys.a, ys.b
        last = math.inf
        for t in ys.ticks():
            y = ys(t)
            self.line(x0, y, x1, y, "grid")
            if abs(y - last) >= 12:  # skip labels that would overlap (symlog near zero)
                self.text(x0 - 6, y + 3.5, tick_label(t), anchor="end")
                last = y
        for t in xs.ticks():
            x = xs(t)
            if xgrid:
                self.line(x, y0, x, y1, "grid")
            self.line(x, y0, x, y0 + 4, "axis")
            self.text(x, y0 + 16, tick_label(t))
        self.line(x0, y0, x1, y0, "axis")
        self.line(x0, y0, x0, y1, "axis")
        self.text((x0 + x1) / 2, self.height - 6, xlabel, cls="label")
        self.parts.append(
            f'<text class="label" x="12" y="{coord((y0 + y1) / 2)}" text-anchor="middle" '
            f'transform="rotate(-90 12 {coord((y0 + y1) / 2)})">{_esc(ylabel)}</text>'
        )

    def render(self) -> Markup:
        return Markup("".join([*self.parts, "</svg>"]))


# --------------------------------------------------------------------------------------------------
# the plots


def histogram_svg(
    series: Sequence[tuple[str, str, Sequence[float]]],
    threshold: float | None,
    ci: Sequence[float] | None,
) -> Markup | None:
    """Overlaid step histograms of several (label, colour, scores) series (share of each series per bin),
    with the threshold and its confidence interval; None when no series has a score."""
    series = [s for s in series if s[2]]
    if not series:
        return None
    every = [v for _, _, vals in series for v in vals]
    marks = [threshold] if threshold is not None else []
    log = wants_log(every + [m for m in marks if m > 0]) and all(m > 0 for m in marks)
    w, h, left, right, top, bottom = 760, 300, 56, 16, 34, 44
    if log:
        lo = 10.0 ** math.floor(math.log10(min(every + marks)))
        hi = 10.0 ** math.ceil(math.log10(max(every + marks)))
    else:
        lo, hi = linear_domain(every + marks)
    xs = Scale(lo, hi, left, w - right, "log" if log else "linear")
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
    ys = Scale(0.0, ymax * 1.1, h - bottom, top)
    svg = Svg(w, h, "Histogram of sharpness scores with the threshold")
    if threshold is not None and ci is not None and len(ci) == 2:
        a, b = sorted((xs(max(ci[0], lo)), xs(min(ci[1], hi))))
        svg.rect(a, top, max(b - a, 1.0), h - bottom - top, C_THRESHOLD, 0.08)
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


def roc_svg(
    fpr: Sequence[float], tpr: Sequence[float], auc: float, target: float | None, at_target: float | None
) -> Markup:
    """The ROC curve through (fpr, tpr), the chance diagonal, and the TPR reached at the target FPR."""
    size, left, bottom, top, right = 340, 52, 44, 14, 14
    xs = Scale(0.0, 1.0, left, size - right)
    ys = Scale(0.0, 1.0, size - bottom, top)
    svg = Svg(size, size, f"ROC curve, AUC {auc:.3f}", css_class="plot plot-square")
    svg.axes(xs, ys, "false positive rate", "true positive rate", xgrid=True)
    svg.line(xs(0), ys(0), xs(1), ys(1), "diag")
    svg.path([(xs(float(f)), ys(float(t))) for f, t in zip(fpr, tpr, strict=True)], C_CLEAN, stroke_width="2")
    if target is not None and at_target is not None:
        svg.line(xs(target), ys(0), xs(target), ys(1), "target")
        svg.circle(
            xs(target),
            ys(at_target),
            4.5,
            C_MEMORIZED,
            tip=f"TPR {at_target:.3f} at FPR ≤ {fmt_num(target, 3)}",
        )
    svg.text(xs(0.97), ys(0.06), f"AUC = {auc:.3f}", cls="annot", anchor="end")
    return svg.render()


def spectra_svg(spectra: Sequence[tuple[str, str, Sequence[float]]]) -> Markup | None:
    """One line per (id, prompt, eigenvalues) spectrum, sorted from the most negative eigenvalue; a
    symmetric-log axis when the magnitudes span three orders or more. None when no spectrum has values."""
    shown = [s for s in spectra if s[2]]
    if not shown:
        return None
    values = [float(v) for _, _, eigenvalues in shown for v in eigenvalues]
    nonzero = [abs(v) for v in values if v != 0]
    w, h, left, right, top, bottom = 720, 300, 64, 220, 16, 44
    lo, hi = min([*values, 0.0]), max([*values, 0.0])
    kind, c = "linear", 1.0
    if nonzero and max(nonzero) / min(nonzero) >= 1000:
        kind, c = "symlog", 10.0 ** math.floor(math.log10(min(nonzero)))
    else:
        lo, hi = linear_domain([lo, hi])
    n_max = max(len(eigenvalues) for _, _, eigenvalues in shown)
    xs = Scale(1.0, float(max(n_max, 2)), left, w - right, integer=True)
    ys = Scale(lo, hi, h - bottom, top, kind, c)
    svg = Svg(w, h, "Eigenvalue spectra, sorted from most negative")
    svg.axes(xs, ys, "eigenvalue rank", "eigenvalue" + (" (symmetric log)" if kind == "symlog" else ""))
    legend: list[tuple[str, str]] = []
    tips: list[str] = []
    for i, (ident, prompt, eigenvalues) in enumerate(shown):
        colour = PALETTE[i % len(PALETTE)]
        ev = sorted(float(v) for v in eigenvalues)
        pts = [(xs(float(j + 1)), ys(v)) for j, v in enumerate(ev)]
        svg.path(pts, colour, stroke_width="1.6")
        if len(pts) <= 64:
            for (x, y), v in zip(pts, ev, strict=True):
                svg.circle(x, y, 2.2, colour, tip=f"{ident}: {fmt_num(v)}")
        legend.append((truncate(ident, 30), colour))
        tips.append(f"{ident} — {prompt}")
    svg.legend_column(w - right + 14, top + 10, legend, tips)
    return svg.render()


def mitigation_svg(rows: Sequence[tuple[str, float | None, float | None]], threshold: float | None) -> Markup | None:
    """A dumbbell per (id, mean sharpness before, mean sharpness after) row, with the threshold; None when
    there are no rows."""
    if not rows:
        return None
    values = [v for _, b, a in rows for v in (b, a) if v is not None]
    thr = [threshold] if threshold is not None else []
    log = wants_log(values + thr) and all(t > 0 for t in thr)
    row_h, left, right, top, bottom, w = 22, 200, 24, 30, 44, 760
    h = top + bottom + row_h * len(rows)
    if log:
        lo = 10.0 ** math.floor(math.log10(min(values + thr)))
        hi = 10.0 ** math.ceil(math.log10(max(values + thr)))
    else:
        lo, hi = linear_domain(values + thr)
    xs = Scale(lo, hi, left, w - right, "log" if log else "linear")
    ys = Scale(0.0, float(len(rows)), top, h - bottom)
    svg = Svg(w, h, "Mean sharpness before and after mitigation")
    svg.xaxis(xs, h - bottom, top, "mean sharpness over generations" + (" (log scale)" if log else ""))
    for i, (ident, before, after) in enumerate(rows):
        y = ys(i + 0.5)
        svg.text(left - 8, y + 4, truncate(ident, 28), cls="rowlabel", anchor="end")
        if before is not None and after is not None:
            svg.line(xs(before), y, xs(after), y, "dumbbell")
        if before is not None:
            svg.circle(xs(before), y, 5, C_MEMORIZED, tip=f"{ident} before: {fmt_num(before)}")
        if after is not None:
            svg.circle(xs(after), y, 5, C_AFTER, tip=f"{ident} after: {fmt_num(after)}")
    if threshold is not None:
        x = xs(threshold)
        svg.line(x, top, x, h - bottom, "threshold", tip=f"threshold {fmt_num(threshold)}")
    svg.legend(left, 14, [("before mitigation", C_MEMORIZED), ("after mitigation", C_AFTER)])
    return svg.render()
