"""End-to-end runs of `pytest --memtest` through pytester, each without xdist and with `-n 2`."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

XDIST = [pytest.param(False, id="single"), pytest.param(True, id="xdist")]


def run(pytester: pytest.Pytester, xdist: bool, *args: str) -> pytest.RunResult:
    args = ("-p", "no:cacheprovider", *args)
    if xdist:
        return pytester.runpytest_subprocess("-n", "2", *args)
    return pytester.runpytest(*args)


def base_args(env: dict[str, Any], *extra: str, fail_on: str = "flag", confirm: str = "off") -> list[str]:
    """The gate suite's run. These tests check the strict rule (every flag fails its case: fail-on=flag), where
    the outcome of each case is known in advance, without generating (confirm=off: the tiny model has no training
    images, and generation costs seconds per run); test_the_default_rule_... checks fail-on=copy with
    confirmation."""
    return [
        "--memtest",
        f"--memtest-checkpoint={env['checkpoint']}",
        f"--memtest-suite={env['suite']}",
        "--memtest-n=1",
        "--memtest-fpr=0.1",
        f"--memtest-fail-on={fail_on}",
        f"--memtest-confirm={confirm}",
        *extra,
    ]


def outcomes(doc: dict[str, Any]) -> dict[str, str]:
    return {c["case_id"]: c["outcome"] for c in doc["cases"]}


@pytest.mark.parametrize("xdist", XDIST)
def test_gate_gives_expected_outcome_per_case(pytester: pytest.Pytester, gate_env: dict[str, Any], xdist: bool) -> None:
    result = run(
        pytester,
        xdist,
        *base_args(gate_env, f"--memtest-calibration={gate_env['calibration']}", "--memtest-json=r.json"),
        "--junitxml=junit.xml",
        "-rA",
    )
    result.assert_outcomes(passed=2, failed=2)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    doc = json.loads((pytester.path / "r.json").read_text())
    assert outcomes(doc) == gate_env["expected"]
    # Same scores as scoring directly in one process, bit for bit (xdist included).
    assert {c["case_id"]: c["score"] for c in doc["cases"]} == gate_env["scores"]
    assert all(c["threshold"] == gate_env["threshold"] for c in doc["cases"])
    assert doc["summary"] == {"passed": 2, "failed": 2, "errors": 0, "flagged": 2, "total": 4} | {
        k: v for k, v in doc["summary"].items() if k not in ("passed", "failed", "errors", "flagged", "total")
    }
    out = result.stdout.str()
    assert "mini::clean-bad scored" in out and "above the threshold" in out
    assert "reproduce:  pytest --memtest" in out and "-k clean-bad" in out
    assert "mem-missed is a known memorized prompt" in out
    junit = (pytester.path / "junit.xml").read_text()
    assert 'name="memtest_score"' in junit and 'name="memtest_threshold"' in junit
    if xdist:
        assert "xdist workers (checkpoint loads): {'gw0': 1, 'gw1': 1}" in out


@pytest.mark.parametrize("xdist", XDIST)
def test_the_default_rule_passes_an_unconfirmed_flag_within_the_budget(
    pytester: pytest.Pytester, gate_env: dict[str, Any], xdist: bool
) -> None:
    """fail-on=copy (the default): the clean case above the threshold is flagged, confirmation finds nothing to
    compare with (no training images on this tiny model), so it passes alone and counts against the flag budget:
    1 flag among 2 clean cases, with 2 allowed (14 references at fpr 0.1). The missed memorized case still fails."""
    args = base_args(
        gate_env,
        f"--memtest-calibration={gate_env['calibration']}",
        "--memtest-json=r.json",
        "--memtest-attribution",
        fail_on="copy",
        confirm="flagged",
    )
    result = run(pytester, xdist, *args, "--junitxml=junit.xml")
    result.assert_outcomes(passed=3, failed=1)
    doc = json.loads((pytester.path / "r.json").read_text())
    verdicts = {c["case_id"]: (c["outcome"], c.get("verdict")) for c in doc["cases"]}
    assert verdicts == {
        "clean-ok": ("passed", "clean"),
        "clean-bad": ("passed", "flagged"),
        "mem-caught": ("passed", "flagged"),
        "mem-missed": ("failed", "clean"),
    }
    evidence = {c["case_id"]: c.get("evidence") for c in doc["cases"]}
    assert evidence["clean-ok"] is None and evidence["clean-bad"]["training_images"] == 0
    # --memtest-attribution: the flagged cases' words carry their shares (computed on the worker that scored them)
    attributed = {c["case_id"]: c.get("attribution") for c in doc["cases"]}
    assert attributed["clean-ok"] is None and attributed["mem-missed"] is None
    for cid in ("clean-bad", "mem-caught"):
        case = next(c for c in doc["cases"] if c["case_id"] == cid)
        words = attributed[cid]["words"]
        assert [w["word"] for w in words] == case["prompt"].split()
        total = sum(w["weight"] for w in words) + attributed[cid]["special"] + attributed[cid]["padding"]
        assert total == pytest.approx(1.0)
    assert evidence["clean-bad"]["agreement"]["mean"] is None  # n=1: nothing to agree with
    assert doc["budget"] == {"clean": 2, "flagged": 1, "allowed": 2, "expected": 0.2, "fpr": 0.1, "n_reference": 14,
                             "confidence": 0.99, "exceeded": False}  # fmt: skip
    out = result.stdout.str()
    assert "flag budget within budget: 1 unconfirmed flag(s) among 2 clean case(s)" in out
    assert "verdicts: 0 copy, 2 flagged (not confirmed), 2 clean" in out
    assert 'name="memtest_verdict" value="flagged"' in (pytester.path / "junit.xml").read_text()


@pytest.mark.parametrize("xdist", XDIST)
def test_calibration_round_trip(pytester: pytest.Pytester, gate_env: dict[str, Any], xdist: bool) -> None:
    result = run(pytester, xdist, *base_args(gate_env, "--memtest-calibrate", "--memtest-calibration=cal.json"))
    result.assert_outcomes(passed=len(gate_env["reference_scores"]))
    cal = json.loads((pytester.path / "cal.json").read_text())
    assert cal["schema"] == "memtest.calibration/1"
    assert sorted(cal["reference_scores"]) == sorted(gate_env["reference_scores"])
    fixture_cal = json.loads(Path(gate_env["calibration"]).read_text())
    assert cal["threshold"] == fixture_cal["threshold"]
    assert cal["ci"][0] <= cal["threshold"] <= cal["ci"][1]
    assert cal["fpr"] == 0.1 and cal["n_reference"] == 14
    assert cal["reference_suite"] == "mini" and cal["reference_version"] == "1"
    assert cal["identity"]["n"] == 1 and cal["identity"]["timesteps"] == [981]
    assert len(cal["fingerprint"]) == 64
    # The gate accepts the fresh calibration ...
    gate = run(pytester, xdist, *base_args(gate_env, "--memtest-calibration=cal.json"))
    gate.assert_outcomes(passed=2, failed=2)
    # ... and refuses it under other settings, failing closed on every case.
    other = run(pytester, xdist, *base_args(gate_env, "--memtest-calibration=cal.json", "--memtest-seed=1"))
    other.assert_outcomes(failed=4)
    other.stdout.fnmatch_lines(["*other scoring settings*seed: calibration 0 != run 1*"])


def test_too_few_references_is_an_error_that_says_how_many(pytester: pytest.Pytester, gate_env: dict[str, Any]) -> None:
    args = base_args(gate_env, "--memtest-calibrate", "--memtest-calibration=cal.json")
    args[-3] = "--memtest-fpr=0.01"
    result = run(pytester, False, *args)
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*needs at least 100 reference prompts*gave 14*"])
    assert not (pytester.path / "cal.json").exists()


@pytest.mark.parametrize("xdist", XDIST)
def test_missing_calibration_fails_closed(pytester: pytest.Pytester, gate_env: dict[str, Any], xdist: bool) -> None:
    result = run(pytester, xdist, *base_args(gate_env))
    result.assert_outcomes(failed=4)
    result.stdout.fnmatch_lines(["*No calibration for checkpoint*--memtest-calibrate*"])


@pytest.mark.parametrize("xdist", XDIST)
def test_calibration_of_another_checkpoint_needs_opt_in(
    pytester: pytest.Pytester, gate_env: dict[str, Any], xdist: bool
) -> None:
    cal = json.loads(Path(gate_env["calibration"]).read_text())
    cal["fingerprint"] = "0" * 64
    cal["checkpoint"] = "base-model"
    (pytester.path / "base.json").write_text(json.dumps(cal))
    refused = run(pytester, xdist, *base_args(gate_env, "--memtest-calibration=base.json"))
    refused.assert_outcomes(failed=4)
    refused.stdout.fnmatch_lines(["*belongs to checkpoint base-model*--memtest-accept-base-calibration*"])
    accepted = run(
        pytester,
        xdist,
        *base_args(
            gate_env, "--memtest-calibration=base.json", "--memtest-accept-base-calibration", "--memtest-json=r.json"
        ),
    )
    accepted.assert_outcomes(passed=2, failed=2)
    doc = json.loads((pytester.path / "r.json").read_text())
    assert doc["calibration"]["accepted_from_base"] is True
    assert doc["calibration"]["fingerprint"] == "0" * 64


@pytest.mark.parametrize("xdist", XDIST)
def test_non_finite_score_fails_closed(
    pytester: pytest.Pytester, gate_env: dict[str, Any], tmp_path: Path, xdist: bool
) -> None:
    from safetensors.torch import load_file, save_file

    broken = Path(shutil.copytree(gate_env["checkpoint"], tmp_path / "nan-ckpt"))
    weights = broken / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    state["conv_out.bias"].fill_(float("nan"))
    save_file(state, weights)
    args = base_args(gate_env, f"--memtest-calibration={gate_env['calibration']}", "--memtest-accept-base-calibration")
    args[1] = f"--memtest-checkpoint={broken}"
    result = run(pytester, xdist, *args)
    result.assert_outcomes(failed=4)
    result.stdout.fnmatch_lines(["*non-finite sharpness*cannot pass the gate*"])


@pytest.mark.parametrize("xdist", XDIST)
def test_unknown_suite_and_unreadable_checkpoint_are_usage_errors(
    pytester: pytest.Pytester, gate_env: dict[str, Any], xdist: bool
) -> None:
    result = run(pytester, xdist, "--memtest", f"--memtest-checkpoint={gate_env['checkpoint']}",
                 "--memtest-suite=sd1-memorised")  # fmt: skip
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*Unknown suite 'sd1-memorised'. Did you mean 'sd1-memorized'?*"])
    missing = run(pytester, xdist, "--memtest", "--memtest-checkpoint=./no/such/folder")
    assert missing.ret == pytest.ExitCode.USAGE_ERROR
    missing.stderr.fnmatch_lines(["*Checkpoint folder './no/such/folder' does not exist*"])
    broken = pytester.mkdir("not-a-checkpoint")
    result = run(pytester, xdist, *base_args(gate_env, f"--memtest-calibration={gate_env['calibration']}"))
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # sanity: the same args with a real checkpoint run
    bad = run(
        pytester,
        xdist,
        "--memtest",
        f"--memtest-checkpoint={broken}",
        f"--memtest-suite={gate_env['suite']}",
        f"--memtest-calibration={gate_env['calibration']}",
    )
    bad.assert_outcomes(failed=4)
    bad.stdout.fnmatch_lines(["*has no model_index.json*"])


def test_plugin_is_inert_without_memtest(pytester: pytest.Pytester, gate_env: dict[str, Any]) -> None:
    shutil.copy(gate_env["suite"], pytester.path / "mini.yaml")
    pytester.makepyfile(
        test_plain="""
        import sys

        def test_nothing_heavy_was_imported():
            heavy = {"torch", "diffusers", "transformers", "numpy", "yaml", "jinja2"} & set(sys.modules)
            assert not heavy, heavy
        """
    )
    for extra in ([], ["-n", "2"]):
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *extra)
        result.assert_outcomes(passed=1)  # the suite file is not collected without --memtest
        assert "memtest:" not in result.stdout.str()
    # Importing the plugin module itself stays light, so start-up is not slower.
    code = (
        "import sys, pytest_memtest.plugin; "
        "print(sorted({'torch','diffusers','numpy','yaml','jinja2','sklearn'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_builtin_suite_parses_and_collects(pytester: pytest.Pytester, gate_env: dict[str, Any]) -> None:
    from memtest.audit.suites import builtin_suites, resolve_suite

    names = sorted(builtin_suites())
    assert {"sd1-memorized", "sd1-unmemorized", "sd2-memorized", "generic-nonmemorized", "coco-10k"} <= set(names)
    for name in names:
        suite = resolve_suite(name)
        has_gate_cases = any(c.expectation != "reference" for c in suite.cases)
        extra = [] if has_gate_cases else ["--memtest-calibrate"]
        result = pytester.runpytest(
            "--memtest", f"--memtest-checkpoint={gate_env['checkpoint']}", f"--memtest-suite={name}",
            "--collect-only", "-q", *extra,
        )  # fmt: skip
        assert result.ret == pytest.ExitCode.OK, (name, result.stdout.str()[-2000:])
        wanted = [c for c in suite.cases if (c.expectation == "reference") == (not has_gate_cases)]
        first = wanted[0]
        assert f"{name}::{first.id}" in result.stdout.str()
        # Gating adds one `[mitigate]` item per `mitigate: true` case; calibrating adds none.
        mitigations = sum(1 for c in wanted if c.mitigate) if has_gate_cases else 0
        result.stdout.fnmatch_lines([f"{len(wanted) + mitigations} tests collected*"])


def test_suite_files_in_test_paths_are_collected(pytester: pytest.Pytester, gate_env: dict[str, Any]) -> None:
    shutil.copy(gate_env["suite"], pytester.path / "audit_suite.yaml")
    result = pytester.runpytest(
        "--memtest", f"--memtest-checkpoint={gate_env['checkpoint']}", "--memtest-n=1",
        f"--memtest-calibration={gate_env['calibration']}", "--memtest-fpr=0.1", "-v",
        "--memtest-fail-on=flag", "--memtest-confirm=off",  # the strict rule: clean-bad's flag fails it
    )  # fmt: skip
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines(["audit_suite.yaml::clean-ok PASSED*"])


def test_results_cache_resumes_without_rescoring(pytester: pytest.Pytester, gate_env: dict[str, Any]) -> None:
    args = base_args(gate_env, f"--memtest-calibration={gate_env['calibration']}", "--memtest-json=r.json")
    first = run(pytester, False, *args)
    first.stdout.fnmatch_lines(["*scored 4 prompts, 0 from the cache*"])
    second = run(pytester, False, *args)
    second.stdout.fnmatch_lines(["*scored 0 prompts, 4 from the cache*"])
    assert outcomes(json.loads((pytester.path / "r.json").read_text())) == gate_env["expected"]
    cleared = run(pytester, False, *args, "--memtest-cache-clear")
    cleared.stdout.fnmatch_lines(["*scored 4 prompts, 0 from the cache*"])


def test_shards_partition_cases_and_merge_back(pytester: pytest.Pytester, gate_env: dict[str, Any]) -> None:
    from memtest.cli import main

    cal = f"--memtest-calibration={gate_env['calibration']}"
    whole = run(pytester, False, *base_args(gate_env, cal, "--memtest-json=whole.json"))
    whole.assert_outcomes(passed=2, failed=2)
    ids: list[set[str]] = []
    for i in (1, 2):
        run(pytester, False, *base_args(gate_env, cal, f"--memtest-shard={i}/2", f"--memtest-json=s{i}.json"))
        ids.append({c["id"] for c in json.loads((pytester.path / f"s{i}.json").read_text())["cases"]})
    assert not ids[0] & ids[1] and len(ids[0] | ids[1]) == 4 and ids[0] and ids[1]
    p = pytester.path
    assert main(["merge", str(p / "s1.json"), str(p / "s2.json"), "-o", str(p / "merged.json")]) == 0
    merged = json.loads((p / "merged.json").read_text())
    single = json.loads((p / "whole.json").read_text())
    strip = ("nodeid",)
    assert [{k: v for k, v in c.items() if k not in strip} for c in merged["cases"]] == [
        {k: v for k, v in c.items() if k not in strip} for c in single["cases"]
    ]
    assert merged["summary"] == single["summary"]


def test_memtest_case_fixture_for_custom_assertions(pytester: pytest.Pytester, gate_env: dict[str, Any]) -> None:
    pytester.makepyfile(
        test_custom=f"""
        import pytest

        @pytest.mark.memtest_suite({str(gate_env["suite"])!r})
        def test_within_twice_threshold(memtest_case, memtest_checkpoint):
            result = memtest_case.score()
            assert memtest_checkpoint.loads == 1
            assert result["score"] == pytest.approx(sum(result["values"]) / len(result["values"]))
            assert result["score"] < 1e9 * memtest_case.threshold
        """
    )
    result = pytester.runpytest(
        f"--memtest-checkpoint={gate_env['checkpoint']}", "--memtest-n=1", "--memtest-fpr=0.1",
        f"--memtest-calibration={gate_env['calibration']}", "-v",
    )  # fmt: skip
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["*test_within_twice_threshold?clean-ok? PASSED*"])


@pytest.mark.parametrize("xdist", XDIST)
def test_default_run_audits_the_embedded_canary(pytester: pytest.Pytester, xdist: bool) -> None:
    """`pytest --memtest` in an empty folder is a complete demonstration, with known outcomes."""
    from memtest.audit import checkpoint_suite
    from memtest.audit.suites import resolve_suite
    from memtest.models.locate import resolve_checkpoint

    _, folder = resolve_checkpoint("zoo:finetuned")
    suite_name = checkpoint_suite(folder)
    assert suite_name is not None
    suite = resolve_suite(suite_name)
    gated = [c for c in suite.cases if c.expectation in ("clean", "memorized")]
    planted = {c.id for c in gated if c.expectation == "memorized"}
    assert len(planted) >= 5 and len(gated) > len(planted)
    result = run(pytester, xdist, "--memtest", "--memtest-json=r.json", "--memtest-report=r.html")
    doc = json.loads((pytester.path / "r.json").read_text())
    detect = [c for c in doc["cases"] if c["kind"] == "detect"]
    # Every planted caption is flagged and every clean caption stays below the shipped calibration ...
    assert {c["case_id"]: c["outcome"] for c in detect} == {c.id: "passed" for c in gated}
    assert {c["case_id"] for c in detect if c["flagged"]} == planted
    # ... confirmed: each planted caption's generations copy its own planted image (the shipped calibration's
    # pixel copy threshold); no clean caption is a copy.
    verdicts = {c["case_id"]: c["verdict"] for c in detect}
    assert verdicts == {c.id: "copy" if c.id in planted else "clean" for c in gated}
    own = {p: i for i, p in enumerate(sorted(planted))}
    assert all(set(c["evidence"]["closest"]) == {own[c["case_id"]]} for c in detect if c["flagged"])
    # the one copy rule: planted images as stored or as the VAE reproduces them, and the report says so
    taken = "as stored or as the checkpoint's VAE reproduces them, whichever is closer"
    assert all(c["evidence"]["descriptor"]["settings"]["training_images"] == taken for c in detect if c["flagged"])
    html = (pytester.path / "r.html").read_text(encoding="utf-8")
    assert "10 training images compared (as stored or as the checkpoint&#39;s VAE reproduces them" in html
    assert doc["budget"]["flagged"] == 0 and not doc["budget"]["exceeded"]
    # ... and SAIL finds flat initial noise for every planted caption marked `mitigate: true`.
    mitigated = {c["case_id"]: c["outcome"] for c in doc["cases"] if c["kind"] == "mitigate"}
    assert mitigated == {c.id: "passed" for c in gated if c.mitigate}
    assert result.ret == pytest.ExitCode.OK
    assert doc["checkpoint"]["name"] == "zoo:finetuned"
    assert doc["calibration"]["accepted_from_base"] is False
    result.stdout.fnmatch_lines(["memtest: checkpoint zoo:finetuned*", "memtest: calibration *threshold=*"])


# --- LoRA adapters: base + zoo:lora end to end ----------------------------------------------------------


@pytest.fixture(scope="module")
def lora_suite(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """canary-lora cut to 2 planted + 3 clean captions (none marked `mitigate`), so a run takes seconds."""
    import dataclasses
    import importlib

    from memtest.audit.calibration import CALIBRATION_FILENAME
    from memtest.audit.suites import dump_suite, resolve_suite
    from memtest.models.locate import resolve_checkpoint

    # In-process pytester runs drop the modules they imported afterwards, and torch cannot be imported twice in
    # one process (the second import crashes it): torch and the loaders are imported here, before any run.
    for module in ("torch", "peft", "memtest.models.adapters", "memtest.detection.scoring"):
        importlib.import_module(module)
    full = resolve_suite("canary-lora")
    planted = [c for c in full.cases if c.expectation == "memorized" and not c.mitigate][:2]
    clean = [c for c in full.cases if c.expectation == "clean"][:3]
    path = tmp_path_factory.mktemp("lora-suite") / "canary-lora-mini.yaml"
    path.write_text(dump_suite(dataclasses.replace(full, cases=(*planted, *clean))))
    _, base = resolve_checkpoint("zoo:base")
    return {
        "suite": path,
        "calibration": base / CALIBRATION_FILENAME,
        "planted": {c.id for c in planted},
        "clean": {c.id for c in clean},
    }


def lora_args(env: dict[str, Any], *extra: str) -> list[str]:
    return [
        "--memtest", "--memtest-checkpoint=zoo:base", f"--memtest-suite={env['suite']}",
        f"--memtest-calibration={env['calibration']}", "--memtest-accept-base-calibration",
        "--memtest-threads=1", "--memtest-json=r.json", "--memtest-cache-dir=none", *extra,
    ]  # fmt: skip


@pytest.mark.parametrize("xdist", XDIST)
def test_lora_on_base_flags_exactly_the_planted_captions(
    pytester: pytest.Pytester, lora_suite: dict[str, Any], xdist: bool
) -> None:
    """The issue's end-to-end run: `pytest --memtest` on zoo:base + zoo:lora, gated with the base's calibration."""
    from memtest.models.adapters import adapters_fingerprint, parse_lora
    from memtest.models.locate import file_sha256, fingerprint, resolve_checkpoint

    result = run(pytester, xdist, *lora_args(lora_suite, "--memtest-lora=zoo:lora"))
    n_cases = len(lora_suite["planted"]) + len(lora_suite["clean"])
    result.assert_outcomes(passed=n_cases)
    assert result.ret == pytest.ExitCode.OK
    doc = json.loads((pytester.path / "r.json").read_text())
    assert {c["case_id"]: c["outcome"] for c in doc["cases"]} == dict.fromkeys(
        lora_suite["planted"] | lora_suite["clean"], "passed"
    )
    assert {c["case_id"] for c in doc["cases"] if c["flagged"]} == lora_suite["planted"]
    # The results record the adapter, and the subject's fingerprint is base + adapter, not the base's.
    spec = parse_lora("zoo:lora")
    (adapter,) = doc["checkpoint"]["config"]["adapters"]
    # zoo:lora resolves inside whichever memtest the process imports: this checkout here, the installed copy
    # in xdist workers of a non-editable install (CI). The bytes are the same file's either way.
    assert Path(adapter["path"]).parts[-3:] == spec.path.parts[-3:]
    assert adapter["scale"] == 1.0 and adapter["name"] == "memtest_0"
    assert adapter["sha256"] == file_sha256(spec.path) and adapter["targets"] == ["unet", "text_encoder"]
    base_fp = fingerprint(resolve_checkpoint("zoo:base")[1])
    combined = adapters_fingerprint(base_fp, [spec])
    assert doc["checkpoint"]["fingerprint"] == combined != base_fp
    assert doc["calibration"]["fingerprint"] == base_fp and doc["calibration"]["accepted_from_base"] is True
    assert "--memtest-lora=zoo:lora" in doc["command"]
    # The header names the adapter and the fingerprint the audit's identity uses.
    result.stdout.fnmatch_lines(
        [
            f"memtest: checkpoint zoo:base (*), fingerprint {base_fp[:16]}",
            f"memtest: lora 1/1 zoo:lora (*/lora/{spec.path.name}) scale 1, sha256 {adapter['sha256'][:16]}",
            f"memtest: base + 1 adapter: fingerprint {combined[:16]} (the audit's identity)",
        ]
    )
    out = result.stdout.str()
    assert f"{n_cases} cases: {n_cases} passed, 0 failed, 0 errors; {len(lora_suite['planted'])} flagged" in out
    if xdist:
        assert "xdist workers (checkpoint loads): {'gw0': 1, 'gw1': 1}" in out


@pytest.mark.parametrize("xdist", XDIST)
def test_base_without_lora_misses_the_planted_captions(
    pytester: pytest.Pytester, lora_suite: dict[str, Any], xdist: bool
) -> None:
    """The same command without --memtest-lora: the base never saw the planted captions, so the gate fails
    each of them as a known memorized prompt it did not flag, and the clean ones still pass."""
    result = run(pytester, xdist, *lora_args(lora_suite))
    result.assert_outcomes(passed=len(lora_suite["clean"]), failed=len(lora_suite["planted"]))
    doc = json.loads((pytester.path / "r.json").read_text())
    assert {c["case_id"] for c in doc["cases"] if c["outcome"] == "failed"} == lora_suite["planted"]
    assert not any(c["flagged"] for c in doc["cases"])
    assert doc["checkpoint"]["config"]["adapters"] == []
    assert doc["calibration"]["accepted_from_base"] is False  # the base's own calibration
    out = result.stdout.str()
    assert "memtest: lora" not in out and "memtest: base +" not in out
    for case_id in lora_suite["planted"]:
        assert f"canary-lora::{case_id} is a known memorized prompt" in out
    # Each failure's reproduce command runs that case again, alone, to the same score and verdict.
    line = next(x for x in out.splitlines() if "reproduce:" in x and "-k planted-" in x)
    argv = shlex.split(line.split("reproduce:", 1)[1])
    assert argv[:2] == ["pytest", "--memtest"] and "--memtest-lora" not in line
    assert {"--memtest-accept-base-calibration", "--memtest-threads=1", "-k"} <= set(argv)
    again = pytester.runpytest("-p", "no:cacheprovider", *argv[1:], "--memtest-json=again.json")
    again.assert_outcomes(failed=1)
    (case,) = json.loads((pytester.path / "again.json").read_text())["cases"]
    first = next(c for c in doc["cases"] if c["case_id"] == case["case_id"])
    assert case["score"] == first["score"] and case["outcome"] == "failed"


def test_header_lists_each_lora_with_scale_and_the_combined_fingerprint(
    pytester: pytest.Pytester, lora_suite: dict[str, Any]
) -> None:
    from memtest.models.adapters import adapters_fingerprint, parse_lora
    from memtest.models.locate import file_sha256, fingerprint, resolve_checkpoint

    copy = pytester.path / "second.safetensors"
    shutil.copy(parse_lora("zoo:lora").path, copy)
    loras = ["zoo:lora:0.5", "second.safetensors"]
    result = pytester.runpytest(
        "-p", "no:cacheprovider", *lora_args(lora_suite, *(f"--memtest-lora={x}" for x in loras)), "--collect-only"
    )
    assert result.ret == pytest.ExitCode.OK
    specs = [parse_lora(x) for x in loras]
    combined = adapters_fingerprint(fingerprint(resolve_checkpoint("zoo:base")[1]), specs)
    sha = file_sha256(specs[0].path)[:16]  # the copy has the same bytes
    result.stdout.fnmatch_lines(
        [
            f"memtest: lora 1/2 zoo:lora:0.5 ({specs[0].path}) scale 0.5, sha256 {sha}",
            f"memtest: lora 2/2 second.safetensors ({copy.resolve()}) scale 1, sha256 {sha}",
            f"memtest: base + 2 adapters: fingerprint {combined[:16]} (the audit's identity)",
        ]
    )
    # An adapter that is not there stops the run at start-up, as a missing checkpoint does.
    missing = pytester.runpytest("-p", "no:cacheprovider", *lora_args(lora_suite, "--memtest-lora=nope.safetensors"))
    assert missing.ret == pytest.ExitCode.USAGE_ERROR
    missing.stderr.fnmatch_lines(["*LoRA adapter 'nope.safetensors' does not exist*"])


def test_reproduce_command_names_loras_and_every_setting_that_changes_the_case(pytester: pytest.Pytester) -> None:
    """The command printed under a failure, parsed back by the plugin's own options, gives the run's settings
    (less those that never change a case: batch size, cache, shard)."""
    import dataclasses

    from pytest_memtest.options import read_config, reproduce_command

    from memtest.audit import AuditCase, AuditConfig
    from memtest.detection.settings import ScoreSettings

    case = AuditCase("canary-lora", "1", "planted-01", "basalt poster of 1", "memorized", source="/s/my suite.yaml")
    config = AuditConfig(
        checkpoint="./base model", suites=("canary-lora", "other"),
        score=ScoreSettings(n=2, seed=3, steps=2, flow_steps=1, batch_size=16),
        dtype="float16", device="cpu", calibration="base cal.json", fpr=0.05,
        accept_base_calibration=True, allow_pickle=True, cache_dir="elsewhere", shard=(2, 4),
        mitigation_steps=7, mitigation_method="resample", loras=("zoo:lora", "./adapters/b.safetensors:0.5"),
        threads=1,
    )  # fmt: skip
    command = reproduce_command(config, case)
    argv = shlex.split(command)
    assert argv[:2] == ["pytest", "--memtest"] and argv[-2:] == ["-k", "planted-01"]
    for flag in ("--memtest-lora=zoo:lora", "--memtest-lora=./adapters/b.safetensors:0.5",
                 "--memtest-allow-pickle", "--memtest-accept-base-calibration", "--memtest-threads=1",
                 "--memtest-flow-steps=1", "--memtest-calibration=base cal.json",
                 "--memtest-mitigation-method=resample"):  # fmt: skip
        assert flag in argv, (flag, command)
    assert argv.index("--memtest-lora=zoo:lora") < argv.index("--memtest-lora=./adapters/b.safetensors:0.5")
    parsed = pytester.parseconfig(*argv[1:])
    assert parsed.getoption("keyword") == "planted-01"
    assert read_config(parsed) == dataclasses.replace(
        config,
        suites=("/s/my suite.yaml",),
        score=dataclasses.replace(config.score, batch_size=8),
        cache_dir=AuditConfig().cache_dir,
        shard=None,
    )
    # A default run gives the short command: no flag for a setting left at its default.
    default = reproduce_command(AuditConfig(), dataclasses.replace(case, source=None))
    assert default == (
        "pytest --memtest --memtest-checkpoint=zoo:finetuned --memtest-suite=canary-lora --memtest-metric=sharpness "
        "--memtest-method=fd --memtest-n=4 --memtest-seed=0 -k planted-01"
    )
    assert read_config(pytester.parseconfig(*shlex.split(default)[1:])) == dataclasses.replace(
        AuditConfig(), suites=("canary-lora",)
    )
