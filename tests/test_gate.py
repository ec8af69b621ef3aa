"""The gate's rules on records, without a model: verdicts, fail-on, the flag budget, the baseline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from memtest.audit import AuditCase, Baseline, CaseRecord, flag_budget, judge, run_budget
from memtest.audit.budget import flags_allowed
from memtest.audit.calibration import quantile_threshold
from memtest.audit.gate import confirm
from memtest.errors import CalibrationError


def case(i: int, expectation: str = "clean", suite: str = "s") -> AuditCase:
    return AuditCase(suite, "1", f"c{i:05d}", f"prompt {i}", expectation)


def test_a_clean_flag_passes_alone_under_fail_on_copy_and_fails_under_fail_on_flag() -> None:
    soft = judge(case(1), 2.0, [2.0], 1.0)
    assert soft["verdict"] == "flagged" and soft["outcome"] == "passed" and soft["flagged"] is True
    assert "counts against the run's flag budget" in soft["message"]
    strict = judge(case(1), 2.0, [2.0], 1.0, fail_on="flag")
    assert strict["verdict"] == "flagged" and strict["outcome"] == "failed"
    clean = judge(case(2), 0.5, [0.5], 1.0)
    assert clean["verdict"] == "clean" and clean["outcome"] == "passed"
    missed = judge(case(3, "memorized"), 0.5, [0.5], 1.0)
    assert missed["verdict"] == "clean" and missed["outcome"] == "failed"
    reference = judge(case(4, "reference"), 0.5, [0.5], None)
    assert "verdict" not in reference


def test_a_confirmed_copy_fails_a_clean_case_whatever_fail_on_says() -> None:
    record = judge(case(1), 2.0, [2.0], 1.0)
    confirm(record, case(1), {"summary": "generation 0 matches train/7.png (0.93 > 0.5)"}, copied=True)
    assert record["verdict"] == "copy" and record["outcome"] == "failed"
    assert "train/7.png" in record["message"]
    unconfirmed = judge(case(2), 2.0, [2.0], 1.0)
    confirm(unconfirmed, case(2), {"summary": "no copy"}, copied=False)
    assert unconfirmed["verdict"] == "flagged" and unconfirmed["outcome"] == "passed"


def test_a_memorized_case_with_training_images_must_be_confirmed() -> None:
    with_images = AuditCase("s", "1", "m1", "a planted caption", "memorized", images=("/data/0.png",))
    record = judge(with_images, 2.0, [2.0], 1.0)
    confirm(record, with_images, {"summary": "best similarity 0.2"}, copied=False)
    assert record["outcome"] == "failed" and "not confirmed" in record["message"]
    without = case(5, "memorized")
    record = judge(without, 2.0, [2.0], 1.0)
    confirm(record, without, {"summary": "agreement 0.1"}, copied=False)
    assert record["outcome"] == "passed"


def test_the_budget_is_the_beta_binomial_quantile() -> None:
    # 110 references at fpr 0.01: the threshold is the 2nd largest score, so p ~ Beta(2, 109).
    assert [flags_allowed(n, 0.01, 110) for n in (0, 110, 1000, 10_000)] == [0, 8, 61, 591]
    # More references pin the rate down: the bound approaches N * fpr from above.
    assert flags_allowed(10_000, 0.01, 100_000) < flags_allowed(10_000, 0.01, 1000) < 591
    assert flags_allowed(10_000, 0.01, 100_000) >= 100


def synthetic_run(n_clean: int, n_ref: int, fpr: float, rng: np.random.Generator, shift: float = 0.0) -> Any:
    """A clean model's run: references and cases drawn from one distribution (`shift` moves the cases up)."""
    refs = rng.standard_normal(n_ref)
    threshold = quantile_threshold(refs, fpr)
    scores = rng.standard_normal(n_clean) + shift
    records = [judge(case(i), float(s), [float(s)], threshold) for i, s in enumerate(scores)]
    return records, {"fpr": fpr, "n_reference": n_ref}


def test_a_clean_model_passes_ten_thousand_prompts_and_a_leaky_one_does_not() -> None:
    rng = np.random.default_rng(0)
    exceeded = 0
    for _ in range(50):
        records, calibration = synthetic_run(10_000, 110, 0.01, rng)
        budget = run_budget(records, calibration)
        assert budget is not None and budget.clean == 10_000
        exceeded += budget.exceeded
        assert all(r["outcome"] == "passed" for r in records)
    assert exceeded <= 3  # 1% of runs by construction; 50 runs
    leaky, calibration = synthetic_run(10_000, 110, 0.01, rng, shift=1.5)
    budget = run_budget(leaky, calibration)
    assert budget is not None and budget.exceeded and budget.flagged > budget.allowed
    assert "unconfirmed flag(s) among 10000 clean case(s)" in budget.describe()


def test_the_budget_counts_only_unconfirmed_new_flags_of_clean_cases() -> None:
    records: list[CaseRecord] = [judge(case(i), 2.0, [2.0], 1.0) for i in range(5)]
    records.append(judge(case(9, "memorized"), 2.0, [2.0], 1.0))
    confirm(records[0], case(0), {}, copied=True)
    records[1]["inherited"] = True
    budget = flag_budget(records, 0.01, 110)
    assert (budget.clean, budget.flagged) == (4, 3)
    assert run_budget(records, None) is None


def write_results(path: Path, cases: list[dict[str, Any]], **settings: Any) -> Path:
    doc = {
        "schema": "memtest.results/2", "memtest_version": "0", "created": "now", "command": "x",
        "environment": {}, "checkpoint": {"name": "base", "path": "/base", "fingerprint": "f"},
        "settings": {"metric": "sharpness", "method": "fd", "n": 4, "seed": 0, "steps": 1, **settings},
        "calibration": None, "shard": None, "cases": cases,
        "summary": {"passed": 0, "failed": 0, "errors": 0, "flagged": 0, "total": len(cases)},
    }  # fmt: skip
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def base_case(i: int, flagged: bool, verdict: str | None = None) -> dict[str, Any]:
    record = dict(judge(case(i), 2.0 if flagged else 0.5, [0.0], 1.0))
    if verdict:
        record["verdict"] = verdict
    return record


def test_the_baseline_marks_inherited_flags_and_keeps_new_copies(tmp_path: Path) -> None:
    path = write_results(tmp_path / "base.json", [base_case(1, True), base_case(2, False), base_case(3, True, "copy")])
    baseline = Baseline.load(path, {"metric": "sharpness", "method": "fd", "n": 4, "seed": 0, "steps": 1})
    strict = [judge(case(i), 2.0, [2.0], 1.0, fail_on="flag") for i in (1, 2, 3)]
    inherited, new, _ = (baseline.apply(case(i), r) for i, r in zip((1, 2, 3), strict, strict=True))
    assert inherited["inherited"] is True and inherited["outcome"] == "passed"
    assert "Inherited" in inherited["message"]
    assert "inherited" not in new and new["outcome"] == "failed"
    # A copy is inherited only from a base that copies too.
    copy_1 = judge(case(1), 2.0, [2.0], 1.0)
    confirm(copy_1, case(1), {}, copied=True)
    assert "inherited" not in baseline.apply(case(1), copy_1) and copy_1["outcome"] == "failed"
    copy_3 = judge(case(3), 2.0, [2.0], 1.0)
    confirm(copy_3, case(3), {}, copied=True)
    assert baseline.apply(case(3), copy_3)["inherited"] is True and copy_3["outcome"] == "passed"


def test_the_baseline_refuses_other_settings_and_other_suites(tmp_path: Path) -> None:
    path = write_results(tmp_path / "base.json", [base_case(1, True)], n=8)
    with pytest.raises(CalibrationError, match=r"n: 8 there, 4 here"):
        Baseline.load(path, {"metric": "sharpness", "method": "fd", "n": 4, "seed": 0, "steps": 1})
    path = write_results(tmp_path / "base2.json", [base_case(1, True)])
    baseline = Baseline.load(path, {"n": 4})
    with pytest.raises(CalibrationError, match=r"no cases of suite other v1"):
        baseline.apply(case(1, suite="other"), judge(case(1, suite="other"), 2.0, [2.0], 1.0))
