"""The report's "Training-data risk" section: cases from `memtest suite from-dataset` carry duplication tags
(`repeats:N`, `images:K`, `dup-cluster:M`, `dup-caption:R`, `at-risk`); the report lists the at-risk ones with
those counts and their verdicts, and shows nothing when no case carries the tags. Rendered from results documents,
no model."""

from __future__ import annotations

import html as htmllib
import re
from typing import Any

from test_report import IMG_PAYLOAD, SCRIPT_PAYLOAD, assert_no_injection, parse
from test_results import make_results

from memtest.audit.results import summarize
from memtest.report import render_report


def _risk_doc() -> dict[str, Any]:
    """Ten clean cases from a training set: two copies at risk (one by kohya repeats, one by a near-duplicate cluster),
    an at-risk case that stayed clean, a copy not at risk, the rest ordinary."""
    doc = make_results(10, expectations=("clean",), seed=2)
    for case in doc["cases"]:
        case.update(tags=["repeats:1", "images:1", "dup-cluster:1"], verdict="clean", flagged=False, outcome="passed")
    c = doc["cases"]
    c[0].update(tags=["repeats:10", "images:1", "dup-cluster:1", "at-risk"], verdict="copy", outcome="failed")
    c[1].update(tags=["repeats:3", "images:1", "dup-cluster:3", "dup-caption:3", "at-risk"], verdict="copy")
    c[1].update(outcome="failed", prompt=f"lagoon {SCRIPT_PAYLOAD}")
    c[2].update(tags=["repeats:2", "images:2", "dup-cluster:3", "dup-caption:2", "at-risk"], prompt=IMG_PAYLOAD)
    c[3].update(verdict="copy", outcome="failed")
    for case in c[:4]:
        case["flagged"] = case["verdict"] == "copy"
    doc["summary"] = summarize(doc["cases"])
    return doc


def _risk_rows(page_html: str) -> list[list[str]]:
    """The risk table's rows, each as its cells' text."""
    body = page_html.split('id="risk-table"', 1)[1].split("</table>", 1)[0].split("<tbody>", 1)[1]
    rows = []
    for tr in body.split("</tr>")[:-1]:
        cells = re.findall(r"<td[^>]*>(.*?)</td>", tr, flags=re.S)
        rows.append([htmllib.unescape(re.sub(r"<[^>]+>", " ", cell)).split("  ")[0].strip() for cell in cells])
    return rows


def test_the_section_lists_at_risk_cases_with_their_counts_and_verdicts() -> None:
    doc = _risk_doc()
    html = render_report(doc)
    page = assert_no_injection(html)  # prompts are escaped like everywhere else on the page
    assert 'href="#risk"' in html and "risk-table" in {a.get("id") for _, a in page.tags}
    summary = re.sub(r"\s+", " ", page.by_id["risk-summary"]).strip()
    assert summary == (
        "3 of 10 training-set cases at risk. Verdicts at risk: 2 copy, 1 clean; not at risk: 1 copy, 6 clean."
    )
    rows = [a["data-id"] for t, a in page.tags if t == "tr" and "data-id" in a and "data-outcome" not in a]
    c = doc["cases"]
    assert rows == [c[0]["id"], c[1]["id"], c[2]["id"]]  # copies first (most exposed first), then the clean one
    # verdict, outcome, prompt, repeats, images, cluster rows, caption rows; the payloads shown as text
    assert _risk_rows(html) == [
        ["copy", "failed", c[0]["prompt"], "10", "1", "1", "1"],
        ["copy", "failed", f"lagoon {SCRIPT_PAYLOAD}", "3", "1", "3", "3"],
        ["clean", "passed", IMG_PAYLOAD, "2", "2", "3", "2"],
    ]
    assert c[3]["id"] not in page.by_id["risk-table"]  # a copy that is not at risk is counted, not listed


def test_no_section_without_training_set_tags() -> None:
    doc = make_results(12)  # the canary's tags ("planted"), no duplication tags
    html = render_report(doc)
    assert 'id="risk"' not in html and 'href="#risk"' not in html
    # tags that only look alike (a case's own tag named "repeats" without a count) do not make a section
    doc["cases"][0]["tags"] = ["repeats", "dup-cluster:x"]
    assert 'id="risk"' not in render_report(doc)


def test_tagged_cases_without_risk_say_so() -> None:
    doc = _risk_doc()
    for case in doc["cases"]:
        case["tags"] = [t for t in case["tags"] if t != "at-risk"]
    page = parse(render_report(doc))
    summary = re.sub(r"\s+", " ", page.by_id["risk-summary"]).strip()
    assert summary.startswith("0 of 10 training-set cases at risk. Verdicts at risk: none; not at risk: 3 copy, 7")
    assert "risk-table" not in {a.get("id") for _, a in page.tags}
