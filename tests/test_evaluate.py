"""`memtest evaluate`: the detector comparison table on the tiny canary zoo:finetuned (a few of its planted
captions against a few clean ones), its prefix sharing across n, its outputs, and its errors."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest

from memtest.audit.suites import Suite, resolve_suite
from memtest.detection.settings import METRICS, ScoreSettings
from memtest.errors import ScoringError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: The two detectors cheap enough for a unit test (a full-trajectory detector would run 50 steps per prompt).
CHEAP = ("sharpness", "score_norm")
NS = (1, 4)
STEPS = (1, 2)
#: Relative difference between a prefix of an n=4 run and a separate n=1 run: the n=1 batch has other shapes, so
#: CPU kernels round differently, and the sharpness metric's finite difference amplifies that (measured: at most
#: 1.3e-3 for sharpness, 2e-6 for score_norm on zoo:finetuned; docs/evaluate.md).
PREFIX_RTOL = {"sharpness": 5e-3, "score_norm": 1e-5}


@pytest.fixture(scope="module")
def subset() -> Suite:
    suite = resolve_suite("canary-finetuned")
    planted = [c for c in suite.cases if c.expectation == "memorized"][:4]
    clean = [c for c in suite.cases if c.expectation == "clean"][:6]
    return dataclasses.replace(suite, cases=tuple(planted + clean))


@pytest.fixture(scope="module")
def ckpt() -> Any:
    from memtest.models.checkpoint import load_checkpoint

    return load_checkpoint("zoo:finetuned", device="cpu")


@pytest.fixture(scope="module")
def result(ckpt: Any, subset: Suite) -> Any:
    from memtest.evaluate import evaluate

    return evaluate(ckpt, [subset], [subset], list(CHEAP), NS, STEPS, batch_size=5)


def test_the_table_has_a_row_per_metric_steps_and_n(result: Any) -> None:
    assert [(r.metric, r.steps, r.n) for r in result.rows] == [(m, k, n) for m in CHEAP for k in STEPS for n in NS]
    assert (result.positives, result.negatives) == (4, 6)
    for row in result.rows:
        assert row.applicable, row.reason
        assert row.auc is not None and 0.0 <= row.auc <= 1.0
        assert row.tpr_at_fpr is not None and 0.0 <= row.tpr_at_fpr <= 1.0
        assert len(row.scores) == 10 and all(math.isfinite(s) for s in row.scores)
        assert row.seconds_per_prompt is not None and row.seconds_per_prompt > 0
        assert row.denoiser_rows is not None and row.denoiser_rows > 0
        # the smaller n are prefixes of the largest n's generations, timed as that run scaled by n/N
        assert row.source == ("run" if row.n == max(NS) else f"prefix of n={max(NS)}")
    # SPEC.md §2's count: score_norm n*steps, sharpness (central difference) 3*n*steps
    assert result.row("score_norm", 2, 4).model_evaluations == 8
    assert result.row("sharpness", 1, 4).model_evaluations == 12
    # the rows that ran (a hook on the denoiser): at most both branches of every counted evaluation, fewer where the
    # scorer runs the unconditional branch at x_T once for all prompts of a batch. sharpness and score_norm share one
    # walk, so the rows that ran for both are sharpness's alone: score_norm's forwards are the walk's own.
    for row in result.rows:
        counted = result.row("sharpness", row.steps, row.n) if "shared by" in row.timing else row
        assert counted.model_evaluations < row.denoiser_rows <= 2 * counted.model_evaluations, row.label


def test_sharpness_separates_the_planted_captions(result: Any) -> None:
    """First-step sharpness ranks the 4 planted captions above the 6 clean ones (Jeon et al.'s claim on a model
    with known memorized captions); a metric that did not separate them would fail."""
    row = result.row("sharpness", 1, 4)
    assert row.auc >= 0.95
    assert row.tpr_at_fpr >= 0.75
    positives = [s for s, p in zip(row.scores, result.prompts, strict=True) if p.label == 1]
    assert min(positives) > 0


def test_prefixes_equal_a_separate_run_to_float_noise(ckpt: Any, subset: Suite, result: Any) -> None:
    from memtest.evaluate import evaluate

    alone = evaluate(ckpt, [subset], [subset], list(CHEAP), (1,), (1,), batch_size=5, share=False)
    for metric in CHEAP:
        shared, separate = result.row(metric, 1, 1), alone.row(metric, 1, 1)
        assert separate.source == "run" and separate.timing == "measured"
        assert shared.scores == pytest.approx(separate.scores, rel=PREFIX_RTOL[metric])
        assert shared.auc == separate.auc
    # the first generation's value of the n=4 run is the n=1 row's score, bit for bit
    firsts = [v[0] for v in result.values["sharpness/1"]]
    assert list(result.row("sharpness", 1, 1).scores) == firsts


def test_outputs_are_written_and_escape_their_inputs(result: Any, tmp_path: Path) -> None:
    from memtest.evaluate import SCHEMA, to_html, to_markdown, write_outputs

    paths = write_outputs(result, tmp_path / "out")
    doc = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert doc["schema"] == SCHEMA and len(doc["rows"]) == len(result.rows)
    md = paths["md"].read_text(encoding="utf-8")
    assert "| method | steps | n | AUC | TPR@1%FPR | model evals / prompt | s / prompt |" in md
    assert md.count("\n| sharpness |") == len(STEPS) * len(NS)
    page = paths["html"].read_text(encoding="utf-8")
    assert page.count("<svg") == len(result.rows)
    assert "script-src 'none'" in page.replace("&#39;", "'")

    evil = dataclasses.replace(
        result,
        prompts=tuple(
            dataclasses.replace(p, prompt=f"<script>alert({i})</script>|{p.prompt}", suite="<b>suite|x</b>")
            for i, p in enumerate(result.prompts)
        ),
        positive_suites=("<b>suite|x</b>",),
    )
    page = to_html(evil)
    assert "<script>" not in page and "<b>" not in page
    assert "&lt;script&gt;alert(0)&lt;/script&gt;" in page and "&lt;b&gt;suite|x&lt;/b&gt;" in page
    assert "<b>suite\\|x</b>" in to_markdown(evil)  # a pipe in a name cannot break the table


def test_a_bad_metric_or_list_names_the_flag(ckpt: Any, subset: Suite, capsys: pytest.CaptureFixture[str]) -> None:
    from memtest.cli import main
    from memtest.evaluate import evaluate, resolve_metrics

    assert resolve_metrics("all") == METRICS
    with pytest.raises(ScoringError, match=r"Unknown metric 'sharpnes' \(`metric`\)\. Did you mean 'sharpness'\?"):
        evaluate(ckpt, [subset], [subset], "sharpnes")
    assert main(["evaluate", "--metric", "nope", "--out", "unused"]) == 2
    err = capsys.readouterr().err
    assert "Unknown metric 'nope' (--metric). Choose one of: all, " + ", ".join(METRICS) + "." in err
    assert main(["evaluate", "--steps", "1,x", "--out", "unused"]) == 2
    assert "--steps takes positive integers" in capsys.readouterr().err
    assert main(["evaluate", "--negative", "sd1-memorized", "--out", "unused"]) == 2
    err = capsys.readouterr().err
    assert "No negative prompts" in err and "Pass --negative=SUITE" in err


def test_a_refused_combination_is_reported_not_raised(ckpt: Any) -> None:
    """The scorer's own refusal (here: a flow-matching setting on a DDPM checkpoint) is what makes a row 'not
    applicable'; `refusal` returns its message instead of raising, and accepts what the scorer accepts."""
    from memtest.evaluate import refusal

    assert refusal(ckpt, ScoreSettings(metric="score_norm", steps=2)) is None
    reason = refusal(ckpt, ScoreSettings(flow_steps=1))
    assert reason is not None and "flow" in reason.lower()


def test_the_shipped_record_is_consistent() -> None:
    """docs/runs/evaluate-finetuned.json: every applicable row's AUC and TPR follow from its stored scores and
    labels, and each n row's scores are the means of the first n stored per-generation values."""
    from memtest.evaluate import SCHEMA, roc_numbers

    doc = json.loads((Path(__file__).resolve().parent.parent / "docs/runs/evaluate-finetuned.json").read_text("utf-8"))
    assert doc["schema"] == SCHEMA and doc["positives"] == 10 and doc["negatives"] == 220
    labels = [p["label"] for p in doc["prompts"]]
    applicable = [r for r in doc["rows"] if r["applicable"]]
    assert {r["metric"] for r in applicable} >= set(CHEAP)
    for row in applicable:
        auc, at, _, _ = roc_numbers(row["scores"], labels, doc["target_fpr"])
        assert (auc, at) == (row["auc"], row["tpr_at_fpr"]), row
        values = doc["values"][f"{row['metric']}/{row['steps']}"]
        assert row["scores"] == [sum(v[: row["n"]]) / row["n"] for v in values]


def test_the_shipped_detector_tables_hold_their_own_numbers(load_script: Any, tmp_path: Path) -> None:
    """scripts/detector_tables.py's records (docs/runs/detectors/): every applicable row's AUC is the one sklearn
    computes from the scores it recorded with the prompts' labels, and the page rebuilt from them is
    docs/detectors.md."""
    from sklearn.metrics import roc_auc_score

    root = Path(__file__).resolve().parent.parent
    tables = load_script("detector_tables")
    records = sorted((root / "docs" / "runs" / "detectors").glob("*.json"))
    assert {p.stem for p in records} == set(tables.CANARIES)
    for path in records:
        result = json.loads(path.read_text())["result"]
        labels = [p["label"] for p in result["prompts"]]
        rows = [r for r in result["rows"] if r["applicable"]]
        assert {r["metric"] for r in rows} >= {"sharpness", "score_norm"}
        for r in rows:
            assert r["auc"] == pytest.approx(roc_auc_score(labels, r["scores"]), abs=1e-12), (path.stem, r["metric"])
    page = tmp_path / "detectors.md"
    assert tables.main(["--page-only", "--write", str(page)]) == 0
    assert page.read_text() == (root / "docs" / "detectors.md").read_text()


def test_trajectory_detectors_share_one_walk_with_their_own_scores(ckpt: Any, subset: Suite, result: Any) -> None:
    """sharpness and score_norm scored together walk the trajectory once: each gets the scores its own run gives,
    bit for bit, on a DDPM canary and on a flow-matching one (lead Euler steps), and evaluate's rows say they
    shared it; a detector that does not walk the trajectory is refused."""
    from memtest.detection.scoring import Scorer, score_together
    from memtest.models.checkpoint import load_checkpoint

    prompts = [c.prompt for c in subset.cases][:5]
    for model in (ckpt, load_checkpoint("zoo:flow-base", device="cpu")):
        settings = ScoreSettings(n=2, steps=2, batch_size=4)
        scorers = [Scorer(model, dataclasses.replace(settings, metric=m)) for m in CHEAP]
        together = score_together(scorers, prompts)
        alone = [Scorer(model, dataclasses.replace(settings, metric=m)).score(prompts) for m in CHEAP]
        assert [[(p.values, p.settings) for p in r] for r in together] == [
            [(p.values, p.settings) for p in r] for r in alone
        ]
    tiled = Scorer(ckpt, ScoreSettings(metric="tiled_l2", n=2, batch_size=4))
    with pytest.raises(ScoringError, match="cannot share a walk"):
        score_together([Scorer(ckpt, ScoreSettings(n=2, batch_size=4)), tiled], prompts)
    top = [r for r in result.rows if r.n == max(NS)]
    assert all("one walk shared by sharpness, score_norm" in r.timing for r in top)
    by = {(r.metric, r.steps): r for r in top}
    for k in STEPS:  # one walk: the same time and model rows on both rows
        assert by[("sharpness", k)].seconds_per_prompt == by[("score_norm", k)].seconds_per_prompt
        assert by[("sharpness", k)].denoiser_rows == by[("score_norm", k)].denoiser_rows
