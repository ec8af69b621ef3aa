"""The HTML audit report: a results document rendered as one self-contained page (render.py), with its
plots drawn as inline SVG (svg.py). Imports no torch."""

from memtest.report.render import (
    PAGE_ROWS,
    build_context,
    case_priority,
    look_at,
    render_report,
    report_main,
    tpr_at_fpr,
    write_report,
)

__all__ = [
    "PAGE_ROWS",
    "build_context",
    "case_priority",
    "look_at",
    "render_report",
    "report_main",
    "tpr_at_fpr",
    "write_report",
]
