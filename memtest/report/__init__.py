"""The HTML audit report: a results document rendered as one self-contained page (render.py), with its
plots drawn as inline SVG (svg.py) and its ROC numbers computed in stats.py. Imports no torch."""

from memtest.report.render import (
    PAGE_ROWS,
    build_context,
    case_priority,
    look_at,
    render_report,
    report_main,
    write_report,
)
from memtest.report.stats import tpr_at_fpr

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
