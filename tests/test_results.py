"""memtest.audit.results: load/validate/merge/summarize/write of the `memtest.results/1` format.

`make_results` builds synthetic, valid results documents (seeded random scores, tiny PIL PNGs); the
report tests import it too.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import random
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from memtest.audit.results import (
    RESULTS_SCHEMA,
    load_results,
    merge_results,
    summarize,
    validate_results,
    write_results,
)
from memtest.errors import MemtestError, ResultsError

THRESHOLD = 0.004
FINGERPRINT = "3f" * 32


def tiny_png(seed: int, size: int = 16) -> str:
    """A base64 PNG of random colour blocks (deterministic for a seed)."""
    rng = random.Random(seed)
    image = Image.new("RGB", (size, size))
    pixels = [(rng.randrange(256), rng.randrange(256), rng.randrange(256)) for _ in range((size // 4) ** 2)]
    image.putdata([pixels[(y // 4) * (size // 4) + x // 4] for y in range(size) for x in range(size)])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def make_results(
    n_cases: int = 24,
    *,
    seed: int = 0,
    calibration: bool = True,
    mitigation: int = 0,
    spectra: int = 0,
    n_values: int = 4,
    errors: int = 0,
    prompts: list[str] | None = None,
    expectations: tuple[str, ...] = ("memorized", "clean", "clean"),
    wide_scores: bool = True,
) -> dict[str, Any]:
    """A valid results document with `n_cases` cases (memorized scores high, clean low, a few misses)."""
    rng = random.Random(seed)
    cases: list[dict[str, Any]] = []
    for i in range(n_cases):
        expectation = expectations[i % len(expectations)]
        suite = "canary" if expectation == "memorized" else "clean-coco"
        prompt = prompts[i % len(prompts)] if prompts else f"{suite} prompt number {i} with a red fox"
        case: dict[str, Any] = {
            "id": f"{suite}::case-{i:04d}",
            "suite": suite,
            "suite_version": "1",
            "case_id": f"case-{i:04d}",
            "nodeid": f"memtest::{suite}::case-{i:04d}",
            "kind": "detect",
            "prompt": prompt,
            "expectation": expectation,
            "tags": ["planted"] if expectation == "memorized" else [],
            "seeds": list(range(n_values)),
            "message": "",
        }
        if i < errors:
            case.update(score=None, values=[], threshold=THRESHOLD, margin=None, flagged=None, outcome="error")
            case["message"] = "CheckpointError: weights unreadable"
        else:
            centre = 0.03 if expectation == "memorized" else 0.0008
            spread = 1.2 if wide_scores else 0.2
            values = [centre * rng.lognormvariate(0, spread) for _ in range(n_values)]
            score = sum(values) / len(values)
            flagged = score > THRESHOLD
            passed = flagged if expectation == "memorized" else not flagged
            case.update(
                score=score,
                values=values,
                threshold=THRESHOLD,
                margin=score - THRESHOLD,
                flagged=flagged,
                outcome="passed" if passed else "failed",
            )
            if not passed:
                case["message"] = f"score {score:.4g} vs threshold {THRESHOLD}"
        cases.append(case)
    doc: dict[str, Any] = {
        "schema": RESULTS_SCHEMA,
        "memtest_version": "0.1.0",
        "created": "2026-11-29T05:00:00+00:00",
        "command": "pytest --memtest --memtest-checkpoint zoo:finetuned",
        "environment": {
            "python": "3.11.7",
            "torch": "2.13.0",
            "diffusers": "0.42.1",
            "platform": "Linux-6.1-x86_64",
            "device": "cpu",
        },
        "checkpoint": {
            "name": "zoo:finetuned",
            "path": "/models/finetuned",
            "fingerprint": FINGERPRINT,
            "config": {
                "prediction_type": "epsilon",
                "scheduler": "DDIMScheduler",
                "latent_shape": [4, 16, 16],
                "unet_parameters": 990000,
                "text_encoder": "CLIPTextModel",
                "has_vae": True,
            },
        },
        "settings": {
            "metric": "sharpness",
            "method": "fd",
            "n": n_values,
            "seed": 0,
            "per_prompt_seeds": False,
            "timestep": 981,
            "num_inference_steps": 50,
            "steps": 1,
            "guidance_scale": 7.5,
            "resolution": [16, 16],
            "dtype": "float32",
            "fd_h": 0.001,
            "device": "cpu",
        },
        "calibration": None,
        "shard": None,
        "cases": cases,
        "summary": summarize(cases),
    }
    if calibration:
        doc["calibration"] = {
            "path": "/models/finetuned/memtest-calibration.json",
            "threshold": THRESHOLD,
            "ci": [0.0035, 0.0047],
            "fpr": 0.05,
            "reference_suite": "reference-coco",
            "reference_version": "2",
            "n_reference": 200,
            "reference_scores": [0.0008 * rng.lognormvariate(0, 1.0) for _ in range(200)],
            "fingerprint": FINGERPRINT,
            "settings": {"metric": "sharpness", "n": n_values},
            "accepted_from_base": False,
            "created": "2026-11-28T12:00:00+00:00",
        }
    if mitigation:
        doc["mitigation"] = [
            {
                "id": f"canary::case-{i:04d}",
                "prompt": prompts[i % len(prompts)] if prompts else f"mitigated prompt {i}",
                "threshold": THRESHOLD,
                "succeeded": i % 3 != 2,
                "steps": 5 + i,
                "sharpness_before": [0.02 + 0.01 * rng.random() for _ in range(2)],
                "sharpness_after": [0.001 + 0.002 * rng.random() for _ in range(2)],
                "images_before": [tiny_png(100 * i + k) for k in range(2)],
                "images_after": [tiny_png(100 * i + 50 + k) for k in range(2)],
                "copy_distance_before": 0.1,
                "copy_distance_after": 0.6,
            }
            for i in range(mitigation)
        ]
    if spectra:
        doc["spectra"] = [
            {
                "id": f"canary::case-{i:04d}",
                "prompt": prompts[i % len(prompts)] if prompts else f"spectrum prompt {i}",
                "eigenvalues": sorted(-(10 ** rng.uniform(-1, 2.5)) for _ in range(16)),
            }
            for i in range(spectra)
        ]
    return doc


def split_shards(doc: dict[str, Any], count: int) -> list[dict[str, Any]]:
    """Split a document into `count` shard documents (round-robin over cases)."""
    shards = []
    for index in range(count):
        shard = copy.deepcopy(doc)
        shard["cases"] = [c for i, c in enumerate(doc["cases"]) if i % count == index]
        shard["summary"] = summarize(shard["cases"])
        shard["shard"] = {"index": index, "count": count}
        for key in ("mitigation", "spectra"):
            if key in doc:
                shard[key] = [e for i, e in enumerate(doc[key]) if i % count == index]
        shards.append(shard)
    return shards


# ---------------------------------------------------------------------------------------------
# builder sanity


def test_builder_makes_valid_documents() -> None:
    for doc in (
        make_results(),
        make_results(5, calibration=False, errors=2),
        make_results(6, mitigation=2, spectra=3),
    ):
        validate_results(doc)
    doc = make_results(30, errors=3)
    assert doc["summary"]["errors"] == 3
    assert doc["summary"]["total"] == 30
    assert doc["summary"]["failed"] > 0, "builder should produce some misses to render"


# ---------------------------------------------------------------------------------------------
# summarize


def test_summarize_counts_outcomes_and_flags() -> None:
    cases = [
        {"outcome": "passed", "flagged": True},
        {"outcome": "passed", "flagged": False},
        {"outcome": "failed", "flagged": True},
        {"outcome": "error", "flagged": None},
    ]
    assert summarize(cases) == {"passed": 2, "failed": 1, "errors": 1, "flagged": 2, "total": 4}
    assert summarize([]) == {"passed": 0, "failed": 0, "errors": 0, "flagged": 0, "total": 0}


# ---------------------------------------------------------------------------------------------
# write / load round trip


def test_write_then_load_round_trips(tmp_path: Path) -> None:
    doc = make_results(10, mitigation=1, spectra=1)
    path = tmp_path / "sub" / "results.json"
    write_results(doc, path)
    assert load_results(path) == doc
    text = path.read_text(encoding="utf-8")
    top_keys = [line.split('"')[1] for line in text.splitlines() if line.startswith('  "')]
    assert top_keys == sorted(top_keys), "keys must be sorted"
    assert not list(tmp_path.glob("sub/.*tmp")), "temporary file left behind"


def test_written_files_get_umask_permissions_not_mkstemps(tmp_path: Path) -> None:
    """Results, reports and calibrations are shared: 0666 less the umask, as open() would give, not 0600."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        write_results(make_results(2), tmp_path / "r.json")
        assert stat.S_IMODE((tmp_path / "r.json").stat().st_mode) == 0o644
        os.umask(0o077)
        write_results(make_results(2), tmp_path / "private.json")
        assert stat.S_IMODE((tmp_path / "private.json").stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_write_rejects_nan_and_leaves_no_file(tmp_path: Path) -> None:
    doc = make_results(3)
    doc["settings"]["fd_h"] = float("nan")
    path = tmp_path / "results.json"
    with pytest.raises(ResultsError, match="finite"):
        write_results(doc, path)
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_write_keeps_old_file_when_invalid(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    write_results(make_results(3), path)
    before = path.read_text()
    bad = make_results(3)
    bad["cases"][0]["outcome"] = "maybe"
    with pytest.raises(ResultsError):
        write_results(bad, path)
    assert path.read_text() == before


# ---------------------------------------------------------------------------------------------
# load errors


def test_load_missing_file_names_file_and_fix(tmp_path: Path) -> None:
    path = tmp_path / "nope.json"
    with pytest.raises(ResultsError) as info:
        load_results(path)
    message = str(info.value)
    assert str(path) in message
    assert f"`json={path}`" in message  # the option, for the front end to spell (--memtest-json, --json)
    assert isinstance(info.value, MemtestError)


def test_load_invalid_json_reports_position(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"schema": "memtest.results/1", "cases": [', encoding="utf-8")
    with pytest.raises(ResultsError, match=r"not valid JSON \(line 1, column \d+") as info:
        load_results(path)
    assert str(path) in str(info.value)


def test_load_rejects_nan_literal(tmp_path: Path) -> None:
    doc = make_results(2)
    text = json.dumps(doc).replace(json.dumps(doc["cases"][0]["score"]), "NaN", 1)
    path = tmp_path / "nan.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ResultsError, match="non-finite number NaN"):
        load_results(path)


def test_load_wrong_schema(tmp_path: Path) -> None:
    doc = make_results(2)
    doc["schema"] = "memtest.results/3"
    path = tmp_path / "future.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(
        ResultsError, match=r"schema is 'memtest.results/3', expected one of memtest.results/1, memtest.results/2"
    ):
        load_results(path)


def test_schema_1_files_are_still_read_and_schema_2_carries_verdicts_and_the_budget(tmp_path: Path) -> None:
    doc = make_results(2)
    doc["schema"] = "memtest.results/1"
    path = tmp_path / "old.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    assert load_results(path)["schema"] == "memtest.results/1"
    doc["schema"] = "memtest.results/2"
    doc["cases"][0]["verdict"] = "copy"
    doc["cases"][0]["evidence"] = {"similarity": 0.9}
    doc["budget"] = {"clean": 1, "flagged": 0, "allowed": 0, "expected": 0.01, "fpr": 0.01, "n_reference": 110,
                     "confidence": 0.99, "exceeded": False}  # fmt: skip
    path.write_text(json.dumps(doc), encoding="utf-8")
    assert load_results(path)["cases"][0]["verdict"] == "copy"
    doc["cases"][0]["verdict"] = "copied"
    path.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(ResultsError, match=r"verdict"):
        load_results(path)
    doc["cases"][0]["verdict"] = "copy"
    doc["budget"]["exceeded"] = "no"
    path.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(ResultsError, match=r"budget.exceeded"):
        load_results(path)


def test_load_not_an_object(tmp_path: Path) -> None:
    path = tmp_path / "list.json"
    path.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ResultsError, match="must be a JSON object, got list"):
        load_results(path)


@pytest.mark.parametrize(
    ("mutate", "pattern"),
    [
        (lambda d: d.pop("checkpoint"), r"missing required key\(s\) 'checkpoint'"),
        (lambda d: d.pop("summary"), r"missing required key\(s\) 'summary'"),
        (lambda d: d["cases"][0].pop("score"), r"cases\[0\] is missing required key\(s\) 'score'"),
        (lambda d: d["cases"][1].update(outcome="skipped"), r"outcome must be one of passed, failed, error"),
        (lambda d: d["cases"][1].update(expectation="x"), r"expectation must be one of clean"),
        (lambda d: d["cases"][1].update(score="high"), r"score must be a finite number"),
        (lambda d: d["cases"][1].update(score=None), r"score must be a finite number, got None"),
        (lambda d: d["cases"][1].update(values=[1, "a"]), r"values\[1\] must be a finite number"),
        (lambda d: d["cases"][1].update(flagged="yes"), r"flagged must be true, false or null"),
        (lambda d: d["cases"].append(dict(d["cases"][0])), r"more than once"),
        (lambda d: d["calibration"].pop("threshold"), r"calibration is missing required key\(s\) 'threshold'"),
        (lambda d: d["calibration"].update(ci=[1]), r"calibration.ci must be a list \[low, high\]"),
        (lambda d: d.update(shard={"index": 0}), r"shard is missing required key\(s\) 'count'"),
        (lambda d: d.update(mitigation={}), r"mitigation must be a list"),
        (lambda d: d["checkpoint"].update(fingerprint=5), r"checkpoint.fingerprint must be a string"),
    ],
)
def test_validate_rejects_malformed(mutate: Any, pattern: str, tmp_path: Path) -> None:
    doc = make_results(4)
    mutate(doc)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(ResultsError, match=pattern) as info:
        load_results(path)
    assert str(path) in str(info.value)
    assert "docs/results-format.md" in str(info.value)


def test_validate_rejects_non_png_images() -> None:
    doc = make_results(2, mitigation=1)
    doc["mitigation"][0]["images_after"] = ["PHN2ZyBvbmxvYWQ9YWxlcnQoMSk+"]  # base64 of an <svg onload=...>
    with pytest.raises(ResultsError, match="must be a base64-encoded PNG"):
        validate_results(doc, "x.json")
    doc["mitigation"][0]["images_after"] = ['iVBORw0KGgo" onerror="alert(1)']
    with pytest.raises(ResultsError, match="must be a base64-encoded PNG"):
        validate_results(doc, "x.json")


def test_error_case_may_have_no_score() -> None:
    doc = make_results(3, errors=1)
    assert doc["cases"][0]["score"] is None
    validate_results(doc)


# ---------------------------------------------------------------------------------------------
# merge


def test_merge_of_shards_equals_single_run() -> None:
    doc = make_results(25, mitigation=3, spectra=2, errors=1)
    shards = split_shards(doc, 3)
    assert [s["shard"] for s in shards] == [{"index": i, "count": 3} for i in range(3)]
    merged = merge_results(list(reversed(shards)))
    expected = copy.deepcopy(doc)
    expected["cases"].sort(key=lambda c: c["id"])
    expected["mitigation"].sort(key=lambda e: e["id"])
    expected["spectra"].sort(key=lambda e: e["id"])
    assert merged == expected
    assert merged["shard"] is None
    assert merged["summary"] == summarize(doc["cases"])
    validate_results(merged)


def test_merge_recomputes_summary_and_sorts_cases() -> None:
    doc = make_results(10)
    shards = split_shards(doc, 2)
    shards[0]["summary"] = {"passed": 99, "failed": 0, "errors": 0, "flagged": 0, "total": 99}
    merged = merge_results(shards)
    assert merged["summary"] == summarize(doc["cases"])
    ids = [c["id"] for c in merged["cases"]]
    assert ids == sorted(ids)
    assert len(ids) == 10


def test_merge_different_fingerprint_is_error() -> None:
    shards = split_shards(make_results(6), 2)
    shards[1]["checkpoint"]["fingerprint"] = "ab" * 32
    with pytest.raises(ResultsError, match="different checkpoints") as info:
        merge_results(shards, sources=["a.json", "b.json"])
    assert "b.json" in str(info.value) and "a.json" in str(info.value)
    assert "abababab" in str(info.value)


def test_merge_different_settings_names_the_setting() -> None:
    shards = split_shards(make_results(6), 2)
    shards[1]["settings"]["n"] = 8
    with pytest.raises(ResultsError, match=r"settings differ \(n: 8 vs 4\)"):
        merge_results(shards, sources=["a.json", "b.json"])


def test_merge_ignores_device_setting() -> None:
    shards = split_shards(make_results(6), 2)
    shards[1]["settings"]["device"] = "cuda:1"
    assert merge_results(shards)["settings"]["device"] == "cpu"


def test_merge_different_calibration_threshold_is_error() -> None:
    shards = split_shards(make_results(6), 2)
    shards[1]["calibration"]["threshold"] = 0.005
    with pytest.raises(ResultsError, match=r"calibration thresholds differ \(0.005 vs 0.004\)"):
        merge_results(shards)
    shards[1]["calibration"] = None
    with pytest.raises(ResultsError, match=r"calibration thresholds differ \(none vs 0.004\)"):
        merge_results(shards)


def test_merge_duplicate_case_id_is_error() -> None:
    doc = make_results(6)
    a, b = copy.deepcopy(doc), copy.deepcopy(doc)
    a["cases"] = doc["cases"][:4]
    b["cases"] = doc["cases"][3:]
    for part in (a, b):
        part["summary"] = summarize(part["cases"])
    dup = doc["cases"][3]["id"]
    with pytest.raises(ResultsError, match=f"Case '{dup}' appears in both a.json and b.json"):
        merge_results([a, b], sources=["a.json", "b.json"])


def test_merge_shard_bookkeeping_errors() -> None:
    shards = split_shards(make_results(9), 3)
    with pytest.raises(ResultsError, match=r"Only 2 of 3 shards given"):
        merge_results(shards[:2])
    shards[2]["shard"] = {"index": 1, "count": 3}
    with pytest.raises(ResultsError, match="Shard 1 appears twice"):
        merge_results(shards)
    with pytest.raises(ResultsError, match="Nothing to merge"):
        merge_results([])


def test_merge_validates_inputs_with_their_names() -> None:
    shards = split_shards(make_results(4), 2)
    shards[1]["schema"] = "other"
    with pytest.raises(ResultsError, match=r"shard-1\.json"):
        merge_results(shards, sources=["shard-0.json", "shard-1.json"])
