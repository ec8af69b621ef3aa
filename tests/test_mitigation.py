"""SAIL (SPEC.md §4) on closed-form models and tiny real checkpoints, the baselines, and the plugin's
`memtest_mitigation` fixture and `mitigate: true` items."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memtest.detection.closed_form import EmpiricalScore, GaussianScore
from memtest.errors import MitigationError
from memtest.mitigation import (
    BatchAdam,
    SailStep,
    SeedStream,
    default_alpha,
    fresh_seed,
    gaussian_noise,
    measure_sharpness,
    sail,
    sail_loss,
)


def gaussian_delta(d: int, var_c: list[float], var_0: float, abar: float, shift: float) -> Any:
    """s_Δ of a narrow conditional Gaussian against a broad unconditional one (linear, constant H_Δ)."""
    mu = torch.full((d,), shift, dtype=torch.float64)
    cond = GaussianScore(mu, torch.diag(torch.tensor(var_c, dtype=torch.float64)), abar)
    uncond = GaussianScore(torch.zeros(d, dtype=torch.float64), var_0 * torch.eye(d, dtype=torch.float64), abar)
    return lambda x: cond(x) - uncond(x)


def empirical_delta(d: int, points: int = 3, abar: float = 0.3, seed: int = 0) -> Any:
    """s_Δ of a few memorised points (the optimal denoiser of a tiny training set) against N(0, I)."""
    gen = torch.Generator().manual_seed(seed)
    cond = EmpiricalScore(torch.randn(points, d, generator=gen, dtype=torch.float64), abar)
    uncond = GaussianScore(torch.zeros(d, dtype=torch.float64), torch.eye(d, dtype=torch.float64), abar)
    return lambda x: cond(x) - uncond(x)


def noise64(d: int) -> Any:
    base = gaussian_noise((d,))
    return lambda seeds: base(seeds).double()


# -- the core, on closed-form models -----------------------------------------------------------------


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    d=st.integers(2, 12),
    var=st.lists(st.floats(0.001, 0.1), min_size=12, max_size=12),  # narrow: a memorized prompt
    var_0=st.floats(0.8, 2.0),
    abar=st.floats(0.2, 0.8),
    shift=st.floats(-1.0, 1.0),
)
def test_sail_lowers_its_objective_on_gaussians(
    d: int, var: list[float], var_0: float, abar: float, shift: float
) -> None:
    s_delta = gaussian_delta(d, var[:d], var_0, abar, shift)
    # threshold 0: nothing is ever accepted, so every slot follows one uninterrupted Adam trajectory
    result = sail(s_delta, noise64(d), [0, 1, 2], 0.0, max_steps=60, restart_after=1000, alpha=0.0)
    assert not result.succeeded and result.steps == 60 and len(result.history) == 60
    first, last = result.history[0], result.history[-1]
    for slot in range(3):
        # Adam moves each coordinate at most lr per step, and the minimum can lie several units away
        assert last[slot] < 0.6 * first[slot], (first, last)  # at worst 0.32 on the corners of this space
    # the objective is the finite-difference form of δ²‖H s‖²: check it against the exact value
    x = noise64(d)([0])
    delta = float(result.settings["delta"])
    exact = measure_sharpness(s_delta, x, method="jvp") * delta**2
    assert float(sail_loss(s_delta, x, delta, 0.0)) == pytest.approx(float(exact), rel=1e-6)


def test_sail_finds_flat_noise_on_an_empirical_model() -> None:
    d = 8
    s_delta = empirical_delta(d)
    seeds = list(range(4))
    initial = measure_sharpness(s_delta, noise64(d)(seeds), method="fd")
    threshold = float(initial.min()) * 0.5
    result = sail(s_delta, noise64(d), seeds, threshold, max_steps=200)
    assert result.succeeded, result.reason
    assert len(result.accepted) == 4 and result.latents.shape == (4, d)
    for a in result.accepted:
        assert a.sharpness_after < threshold
        assert a.sharpness_before == pytest.approx(result.initial_sharpness[a.seed])
        # the stored latent is exactly where the acceptance was measured
        again = measure_sharpness(s_delta, a.latent[None], method="fd", h=result.settings["fd_h"])
        assert float(again) == pytest.approx(a.sharpness_after, rel=1e-9)
    # the first candidates start from the given seeds, so "before" is the unmitigated value
    assert result.seeds_tried[:4] == (0, 1, 2, 3)
    assert result.initial_sharpness[0] == pytest.approx(float(initial[0]), rel=1e-9)


def test_accepted_latents_are_independent_copies() -> None:
    d = 8
    s_delta = empirical_delta(d, seed=1)
    snapshots: dict[int, torch.Tensor] = {}

    def remember(step: SailStep) -> None:
        for slot in step.accepted:
            snapshots.setdefault(step.seeds[slot], step.x[slot].clone())

    threshold = float(measure_sharpness(s_delta, noise64(d)(list(range(16))), method="fd").median())
    # one slot: every acceptance refills the same row of the optimised tensor, which Adam then updates in place
    result = sail(s_delta, noise64(d), [0], threshold, n=3, batch_size=1, max_steps=300, callback=remember)
    assert result.succeeded, result.reason
    assert result.steps > max(a.steps for a in result.accepted[:1])  # optimisation went on after the first one
    ptrs = {a.latent.untyped_storage().data_ptr() for a in result.accepted}
    assert len(ptrs) == 3
    for a in result.accepted:
        assert torch.equal(a.latent, snapshots[a.seed])
        assert a.latent._base is None
    assert len({tuple(a.latent.tolist()) for a in result.accepted}) == 3


def test_restarts_never_repeat_a_seed() -> None:
    d = 4
    s_delta = empirical_delta(d)
    starts: list[tuple[float, ...]] = []

    def record(step: SailStep) -> None:
        starts.extend(tuple(row.tolist()) for row in step.x)

    result = sail(s_delta, noise64(d), [7, 7, 9], 0.0, batch_size=3, max_steps=12, restart_after=2, callback=record)
    tried = result.seeds_tried
    assert len(tried) == len(set(tried)) and tried[:2] == (7, 9)
    assert len(tried) >= 3 + 5 * 3 - 3  # every slot restarted every other step
    # a fresh seed equal to one of the given seeds is skipped, never reused
    collide = fresh_seed("salt", 0)
    stream = SeedStream([collide, 3], "salt")
    drawn = [next(stream) for _ in range(50)]
    assert len(set(drawn)) == 50 and drawn[:2] == [collide, 3]
    initial_rows = {tuple(row.tolist()) for row in noise64(d)(list(tried))}
    assert len(initial_rows) == len(tried)


def test_budget_exhaustion_is_a_reported_failure() -> None:
    d = 4
    result = sail(empirical_delta(d), noise64(d), [0, 1], 0.0, max_steps=5)
    assert result.succeeded is False
    assert result.steps == 5 and result.accepted == ()
    assert "step budget of 5 exhausted with 0 of 2" in result.reason
    assert len(result.final_sharpness) == 2 and all(v > 0 for v in result.final_sharpness)
    with pytest.raises(MitigationError, match="accepted no latent"):
        _ = result.latents
    with pytest.raises(MitigationError, match="max_steps"):
        sail(empirical_delta(d), noise64(d), [0], 1.0, max_steps=-1)
    with pytest.raises(MitigationError, match="at least one seed"):
        sail(empirical_delta(d), noise64(d), [], 1.0)


def test_batch_adam_matches_torch_adam_per_row_with_restarts() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, generator=gen, dtype=torch.float64)
    rows = [x[i].clone().requires_grad_(True) for i in range(2)]
    opts = [torch.optim.Adam([r], lr=0.05) for r in rows]
    mine = BatchAdam(x, 0.05)
    for step in range(8):
        if step == 4:  # restart row 1 alone
            fresh = torch.randn(5, generator=gen, dtype=torch.float64)
            x[1] = fresh
            mine.reset(1)
            rows[1] = fresh.clone().requires_grad_(True)
            opts[1] = torch.optim.Adam([rows[1]], lr=0.05)
        grads = torch.sin(3 * x) + x**2
        mine.step(x, grads, [0, 1])
        for i in range(2):
            opts[i].zero_grad()
            rows[i].grad = torch.sin(3 * rows[i].detach()) + rows[i].detach() ** 2
            opts[i].step()
    for i in range(2):
        assert torch.allclose(x[i], rows[i].detach(), atol=1e-12)


def test_renormalize_keeps_candidates_on_the_gaussian_shell() -> None:
    d = 16
    sigma = 2.0
    s_delta = empirical_delta(d, abar=0.3)
    noise = lambda seeds: noise64(d)(seeds) * sigma  # noqa: E731
    initial = measure_sharpness(s_delta, noise(list(range(8))), method="fd")
    threshold = float(initial.min()) * 0.7
    result = sail(
        s_delta, noise, [0, 1], threshold, renormalize=True, init_noise_sigma=sigma, max_steps=300, restart_after=60
    )
    assert result.succeeded, result.reason
    stepped = [a for a in result.accepted if a.steps > 0]
    assert stepped
    for a in stepped:
        assert float(a.latent.norm()) == pytest.approx(math.sqrt(d) * sigma, rel=1e-9)


def test_default_alpha_scales_with_the_threshold_and_dimension() -> None:
    a = default_alpha(1e-2, 0.04, 1024)
    assert a == pytest.approx(0.1 * 1e-4 * 0.04 / 1024)
    # on the shell the norm term is a tenth of the first term at the threshold
    assert a * 1024 == pytest.approx(0.1 * (1e-2) ** 2 * 0.04)
    assert default_alpha(1e-2, 0.04, 4096) == pytest.approx(a / 4)
    assert default_alpha(1e-2, 0.0, 1024) == 0.0


def test_screened_checks_accept_on_the_exact_sharpness_and_cost_fewer_evaluations() -> None:
    """screen=f (default 2): the loss's forward-difference estimate decides which candidates get the detector's
    exact check; acceptance, "before", restarts and the budget stay what the plain loop does."""
    d = 8
    s_delta = empirical_delta(d)
    seeds = list(range(4))
    initial = measure_sharpness(s_delta, noise64(d)(seeds), method="fd")
    threshold = float(initial.min()) * 0.5
    plain = sail(s_delta, noise64(d), seeds, threshold, max_steps=200, screen=None)
    screened = sail(s_delta, noise64(d), seeds, threshold, max_steps=200, screen=2.0)
    assert plain.succeeded and screened.succeeded, screened.reason
    for a in screened.accepted:
        assert a.sharpness_after < threshold
        assert a.sharpness_before == pytest.approx(screened.initial_sharpness[a.seed])
        again = measure_sharpness(s_delta, a.latent[None], method="fd", h=screened.settings["fd_h"])
        assert float(again) == pytest.approx(a.sharpness_after, rel=1e-9)
    assert screened.seeds_tried[:4] == (0, 1, 2, 3)
    assert screened.initial_sharpness[0] == pytest.approx(float(initial[0]), rel=1e-9)
    # the same optimisation (one Adam trajectory per seed), fewer evaluations per step
    assert screened.checks < plain.checks
    assert screened.rows_evaluated / screened.steps < plain.rows_evaluated / plain.steps
    # budget and restarts behave as in the plain loop
    out = sail(s_delta, noise64(d), [0, 1], 0.0, max_steps=5, screen=2.0)
    assert not out.succeeded and out.steps == 5 and len(out.history) == 5 and "step budget of 5" in out.reason
    restarted = sail(s_delta, noise64(d), [7, 9], 0.0, max_steps=8, restart_after=2, screen=2.0).seeds_tried
    assert restarted == sail(s_delta, noise64(d), [7, 9], 0.0, max_steps=8, restart_after=2, screen=None).seeds_tried
    assert len(restarted) == len(set(restarted)) > 2
    with pytest.raises(MitigationError, match="screen"):
        sail(s_delta, noise64(d), [0], 1.0, screen=0.5)


def test_warm_start_screens_seeds_and_starts_from_the_flattest() -> None:
    d = 8
    s_delta = empirical_delta(d, seed=2)
    seeds = [0, 1]
    result_0 = sail(s_delta, noise64(d), seeds, 0.0, max_steps=0, warm_start=10)
    values = result_0.initial_sharpness
    assert len(values) == 12 and len(set(result_0.seeds_tried)) == 12  # the given seeds + 10 fresh, no repeats
    assert result_0.seeds_tried[:2] == (0, 1) and values[0] == pytest.approx(
        float(measure_sharpness(s_delta, noise64(d)([0]), method="fd")), rel=1e-9
    )
    # a threshold between the 3rd and 4th flattest: those three are accepted as drawn, with 0 steps
    order = sorted(values, key=lambda sd: values[sd])
    tau = (values[order[2]] + values[order[3]]) / 2
    result = sail(s_delta, noise64(d), seeds, tau, n=3, max_steps=0, warm_start=10)
    assert result.succeeded and [a.seed for a in result.accepted] == order[:3]
    assert all(a.steps == 0 and a.sharpness_after == a.sharpness_before < tau for a in result.accepted)
    assert torch.equal(result.accepted[0].latent, noise64(d)([order[0]])[0])
    # with more wanted than are flat, the rest start the optimisation flattest first
    more = sail(s_delta, noise64(d), seeds, tau, n=4, batch_size=1, max_steps=300, warm_start=10)
    assert more.succeeded, more.reason
    assert [a.seed for a in more.accepted[:3]] == order[:3] and more.accepted[3].steps > 0


# -- checkpoint level, on the tiny random checkpoint ---------------------------------------------------


def test_checkpoint_sail_and_baselines_share_one_interface(tiny_eps: Any) -> None:
    from memtest.audit import AuditCase
    from memtest.audit.results import summarize, validate_results
    from memtest.detection.scoring import Scorer, ScoreSettings
    from memtest.mitigation import judge_mitigation, mitigate

    scorer = Scorer(tiny_eps, ScoreSettings(n=2))
    prompt = "zorblax poster of 3"
    detected = scorer.score([prompt])[0]
    threshold = 0.8 * min(detected.values)
    m = mitigate(scorer, prompt, threshold=threshold, num_inference_steps=8)
    assert m.method == "sail" and m.succeeded, m.reason
    assert m.seeds == detected.seeds
    # "before" is what the detector measured at the same seeds
    assert m.sharpness_before == pytest.approx(detected.values, rel=1e-3)
    assert all(v < threshold for v in m.sharpness_after)
    assert m.images_before is not None and m.images_after is not None
    assert m.images_before.shape == m.images_after.shape == (2, 16, 16, 3)
    assert not torch.equal(m.latents_before, m.latents_after)  # type: ignore[arg-type]
    assert m.generation_seconds is not None and m.generation_seconds > 0 and m.cost_ratio is not None
    rec = m.record("suite::case", copy_distance_before=0.1, copy_distance_after=0.4)
    json.dumps(rec, allow_nan=False)
    assert rec["id"] == "suite::case" and len(rec["images_after"]) == 2 and rec["seeds_tried"][:2] == [*m.seeds]
    # Baselines: same result type; the prompt methods keep the original x_T
    for method in ("rta", "rna"):
        b = mitigate(scorer, prompt, method, threshold=threshold, images=False)
        assert b.method == method and b.prompt_after != prompt and b.latents_after is b.latents_before
        assert set(prompt.split()) <= set(b.prompt_after.split())  # type: ignore[union-attr]
        assert len(b.prompt_after.split()) == len(prompt.split()) + 2  # type: ignore[union-attr]
        assert b.sharpness_before == pytest.approx(m.sharpness_before)
    e = mitigate(scorer, prompt, "embedding", threshold=threshold, images=False, max_steps=3)
    assert e.embedding_after is not None and e.steps is not None and e.steps >= 1
    assert e.succeeded == all(v < threshold for v in e.sharpness_after)
    # running out of budget: a failed case record that says why, and a valid results entry
    failed = mitigate(scorer, prompt, threshold=threshold * 1e-9, max_steps=2, images=False)
    assert not failed.succeeded and failed.sharpness_after == () and failed.latents_after is None
    case = AuditCase("s", "1", "c", prompt, "memorized", mitigate=True)
    record, entry = judge_mitigation(case, failed, detected.score)
    assert record["outcome"] == "failed" and record["kind"] == "mitigate" and record["id"] == "s::c[mitigate]"
    assert (
        "step budget of 2 exhausted with 0 of 2" in record["message"] and "no latent was accepted" in record["message"]
    )
    assert record["score"] == min(failed.sail.final_sharpness)  # type: ignore[union-attr]
    assert entry["succeeded"] is False and entry["images_after"] == [] and entry["seeds_tried"]
    doc = {"schema": "memtest.results/1", "memtest_version": "0", "created": "now", "command": "x",
           "environment": {}, "checkpoint": {"name": "n", "path": "p", "fingerprint": "f"}, "settings": {},
           "calibration": None, "shard": None, "cases": [record], "mitigation": [entry, rec],
           "summary": summarize([record])}  # fmt: skip
    validate_results(json.loads(json.dumps(doc)))
    with pytest.raises(MitigationError, match=r"Unknown mitigation method 'x'"):
        mitigate(scorer, prompt, "x")
    with pytest.raises(MitigationError, match=r"no memtest-calibration\.json"):
        mitigate(scorer, prompt)


# -- the plugin: fixture and `mitigate: true` items ----------------------------------------------------


def mitigation_suite(env: dict[str, Any], root: Path, *, refs: bool = False, mitigate: str = "true") -> Path:
    from memtest.audit.suites import load_suite

    mini = load_suite(env["suite"])
    prompts = {c.id: c.prompt for c in mini.cases}
    lines = [
        "memtest_suite: 1", "name: mit", 'version: "1"', "card:", "  description: mitigation test suite", "cases:",
        f'  - {{id: mem, prompt: "{prompts["mem-caught"]}", expectation: memorized, mitigate: {mitigate}}}',
        f'  - {{id: clean, prompt: "{prompts["clean-ok"]}", expectation: clean}}',
    ]  # fmt: skip
    if refs:
        refs_ = [c for c in mini.cases if c.expectation == "reference"]
        lines += [f'  - {{id: {c.id}, prompt: "{c.prompt}", expectation: reference, mitigate: true}}' for c in refs_]
    path = root / ("mit-refs.yaml" if refs else "mit.yaml")
    path.write_text("\n".join(lines) + "\n")
    return path


def plugin_args(env: dict[str, Any], suite: Path, *extra: str) -> list[str]:
    return [
        "-p", "no:cacheprovider", "--memtest", f"--memtest-checkpoint={env['checkpoint']}",
        f"--memtest-suite={suite}", "--memtest-n=1", "--memtest-fpr=0.1", *extra,
    ]  # fmt: skip


FIXTURE_TESTS = """
import pytest

def test_prompt(memtest_mitigation):
    m = memtest_mitigation("zorblax poster of 3", num_inference_steps=4)
    assert m.method == "sail" and m.threshold == THRESHOLD
    assert m.succeeded and max(m.sharpness_after) < m.threshold
    assert m.images_after.shape == (1, 16, 16, 3)
    assert m.sail.settings["max_steps"] == 30  # --memtest-mitigation-steps
    rna = memtest_mitigation("zorblax poster of 3", "rna", images=False)
    assert rna.method == "rna" and rna.prompt_after != rna.prompt
    # resample through the fixture: a level every draw is below accepts the detector's own seed as drawn
    rs = memtest_mitigation("zorblax poster of 3", "resample", level=1e30, lead=1, images=False)
    assert rs.method == "resample" and rs.threshold == THRESHOLD and rs.succeeded
    assert rs.details["draws"] == 1 and rs.details["accepted_seeds"] == list(rs.seeds)

@pytest.mark.memtest_suite(SUITE)
def test_case(memtest_case, memtest_mitigation):
    m = memtest_mitigation(memtest_case, images=False)
    assert m.prompt == memtest_case.prompt
    assert m.succeeded and all(v < memtest_case.threshold for v in m.sharpness_after)
"""


def check_results(doc: dict[str, Any], threshold: float) -> None:
    by_id = {c["id"]: c for c in doc["cases"]}
    assert set(by_id) == {"mit::mem", "mit::mem[mitigate]", "mit::clean"}
    mit, det = by_id["mit::mem[mitigate]"], by_id["mit::mem"]
    assert mit["kind"] == "mitigate" and det["kind"] == "detect" and mit["outcome"] == "passed"
    assert det["score"] > threshold  # the case was flagged ...
    assert mit["score"] < threshold and mit["score"] < det["score"]  # ... and SAIL found flat noise
    assert mit["unmitigated"] == det["score"] and mit["flagged"] is None
    assert doc["summary"]["flagged"] == 1 and doc["summary"]["total"] == 3
    (entry,) = doc["mitigation"]
    assert entry["id"] == "mit::mem" and entry["succeeded"] is True and entry["threshold"] == threshold
    assert entry["sharpness_before"] == pytest.approx(det["values"], rel=1e-3)
    assert entry["sharpness_after"] == mit["values"]
    assert len(entry["images_before"]) == len(entry["images_after"]) == 1
    assert all(len(img) < 4000 for img in entry["images_before"] + entry["images_after"])


def test_memtest_mitigation_fixture(pytester: pytest.Pytester, gate_env: dict[str, Any]) -> None:
    suite = mitigation_suite(gate_env, pytester.path)
    code = FIXTURE_TESTS.replace("THRESHOLD", repr(gate_env["threshold"])).replace("SUITE", repr(str(suite)))
    pytester.makepyfile(test_mit=code)
    result = pytester.runpytest(
        "-p", "no:cacheprovider", f"--memtest-checkpoint={gate_env['checkpoint']}", "--memtest-n=1",
        f"--memtest-calibration={gate_env['calibration']}", "--memtest-mitigation-steps=30", "-v", "test_mit.py",
    )  # fmt: skip
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*test_prompt PASSED*", "*test_case?mem? PASSED*"])


def test_mitigate_true_adds_a_mitigation_item_under_xdist(pytester: pytest.Pytester, gate_env: dict[str, Any]) -> None:
    suite = mitigation_suite(gate_env, pytester.path)
    cal = f"--memtest-calibration={gate_env['calibration']}"
    args = plugin_args(gate_env, suite, cal, "--memtest-json=r.json", "--memtest-report=r.html", "-v")
    result = pytester.runpytest_subprocess("-n", "2", *args)
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*PASSED*::mem?mitigate?*", "*mitigation (SAIL): 1 of 1 cases*"])
    # the record and the mitigation entry travel from the worker to the controller on the report
    check_results(json.loads((pytester.path / "r.json").read_text()), gate_env["threshold"])
    html = (pytester.path / "r.html").read_text()
    assert html.count("data:image/png;base64,") >= 2


def test_mitigation_items_only_in_gate_mode_and_the_budget_option(
    pytester: pytest.Pytester, gate_env: dict[str, Any]
) -> None:
    suite = mitigation_suite(gate_env, pytester.path, refs=True)
    calib = pytester.runpytest(*plugin_args(gate_env, suite, "--memtest-calibrate", "--collect-only", "-q"))
    out = calib.stdout.str()
    assert "ref-00" in out and "[mitigate]" not in out
    gate = pytester.runpytest(*plugin_args(gate_env, suite, "--collect-only", "-q"))
    assert "::mem[mitigate]" in gate.stdout.str() and "ref-00" not in gate.stdout.str()
    suite = mitigation_suite(gate_env, pytester.path)
    bad = pytester.runpytest(*plugin_args(gate_env, suite, "--memtest-mitigation-steps=0"))
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(["*--memtest-mitigation-steps must be a positive integer, got 0*"])


def test_mitigate_copy_item_fails_closed_without_a_copy_reference(
    pytester: pytest.Pytester, gate_env: dict[str, Any]
) -> None:
    """`mitigate: copy` on a checkpoint that plants no image for the prompt: SAIL succeeds, but the item fails,
    naming the suite file, the case and the fix; the record says the copy was required and the verdict."""
    suite = mitigation_suite(gate_env, pytester.path, mitigate="copy")
    cal = f"--memtest-calibration={gate_env['calibration']}"
    result = pytester.runpytest(*plugin_args(gate_env, suite, cal, "--memtest-json=r.json", "-v"))
    result.assert_outcomes(passed=2, failed=1)
    out = result.stdout.str()
    assert "mit::mem[mitigate] FAILED" in out or "mem[mitigate] FAILED" in out, out
    assert "mitigate: copy needs a checkpoint whose manifest plants this prompt (a copy reference)" in out
    assert f"use mitigate: true in {suite}, line 7, case 'mem'" in out
    doc = json.loads((pytester.path / "r.json").read_text())
    mit = next(c for c in doc["cases"] if c["id"] == "mit::mem[mitigate]")
    assert mit["outcome"] == "failed" and mit["copy_required"] is True and mit["copy_verdict"] == "failed"
    assert "copy_before" not in mit  # nothing to count copies against
    (entry,) = doc["mitigation"]
    assert entry["succeeded"] is True and entry["copy_required"] is True and entry["copy_verdict"] == "failed"


def _copy_stats(copies: int | None, images: int, distance: float = 0.1) -> dict[str, Any]:
    return {
        "distance": distance,
        "copies": copies,
        "images": images,
        "rate": None if copies is None else copies / images,
    }


def test_the_mitigation_counts_copies_by_the_gates_own_confirmation_rule(tmp_path: Path) -> None:
    """One copy rule: on zoo:mixture the copies `mitigate: copy` counts among a planted caption's generations are
    the copies the gate's confirmation counts among the same generations (same descriptor, training images as
    stored or as the VAE reproduces them, the calibration's copy threshold). A folder without a calibration has no
    copy threshold (copies not counted); a threshold calibrated for another comparison is refused, naming the fix."""
    import dataclasses

    import memtest.audit as audit
    from memtest.evidence import EvidenceError
    from memtest.mitigation import copy_reference, own_copy_threshold

    engine = audit.Engine(audit.config_from_values({"checkpoint": "zoo:mixture"}))
    case = audit.AuditCase("canary-mixture", "1", "basalt", "basalt poster of 1", "memorized")
    found = engine.confirm(case)
    assert (
        found.settings["training_images"] == "as stored or as the checkpoint's VAE reproduces them, whichever is closer"
    )
    threshold = own_copy_threshold(engine.checkpoint.path)
    assert threshold is not None and threshold.value == found.threshold
    ref = copy_reference(engine.checkpoint, case.prompt)
    assert ref is not None and ref.threshold == threshold
    stats = ref.stats(found.images)
    assert stats is not None and stats["copies"] == found.copies and stats["threshold"] == found.threshold
    assert stats["similarity"] == pytest.approx(sum(found.best) / len(found.best), abs=1e-12)
    assert stats["copies"] == 4  # basalt copies from all four of the detector's noises
    assert own_copy_threshold(tmp_path) is None
    stored = dataclasses.replace(threshold, descriptor={**threshold.descriptor, "training_images": "as stored"})
    with pytest.raises(EvidenceError, match=r"calibrated with the settings .*scripts/calibrate_copy.py"):
        dataclasses.replace(ref, threshold=stored).stats(found.images)
    uncounted = dataclasses.replace(ref, threshold=None).stats(found.images)
    assert uncounted is not None and uncounted["copies"] is None and uncounted["distance"] == stats["distance"]


@pytest.mark.parametrize(
    ("before", "after", "problem"),
    [
        ((4, 4), (2, 4), None),
        ((4, 4), (0, 4), None),
        ((1, 4), (0, 4), None),
        ((2, 4), (1, 4), None),
        ((4, 4), (3, 4), "the copy did not leave: copies 4/4 -> 3/4, more than half the rate before (at most 2/4"),
        ((1, 4), (1, 4), "the copy did not leave: copies 1/4 -> 1/4, more than half the rate before (at most 0/4"),
        ((4, 4), (2, 3), "the copy did not leave: copies 4/4 -> 2/3, more than half the rate before (at most 1/3"),
        ((4, 4), (1, 2), None),  # rates: 1/2 <= 1/2
        ((0, 4), (0, 4), "nothing to remove: 0/4 generations copy before mitigation"),
        ((None, 4), (None, 4), "copies are not counted: the checkpoint's calibration has no copy threshold"),
        ((4, 4), None, "copies 4/4 before and no mitigated image to count copies in"),
    ],
)
def test_judge_copy_rule(
    before: tuple[int | None, int], after: tuple[int | None, int] | None, problem: str | None
) -> None:
    """`mitigate: copy`: copies among the mitigated images at most half the copies before, as rates, and at least
    one copy before."""
    from memtest.mitigation import judge_copy

    got = judge_copy(_copy_stats(*before), None if after is None else _copy_stats(*after))
    if problem is None:
        assert got is None, got
    else:
        assert got is not None and got.startswith(problem), got
    assert judge_copy(None, None) == "no copy reference: the checkpoint plants no image for this prompt"


def test_judge_mitigation_with_mitigate_copy_on_constructed_records() -> None:
    """The case record of a `mitigate: copy` case on real `Mitigation` records with known copy counts: the
    sharpness rule and the copy rule must both hold, and the record says which failed; `mitigate: true` ignores
    the copies (it reports them)."""
    from memtest.audit import AuditCase
    from memtest.audit.results import summarize, validate_results
    from memtest.mitigation import AcceptedLatent, Mitigation, SailResult, judge_mitigation

    images = torch.rand(4, 16, 16, 3).numpy()
    # SAIL's own result: the judge asks it (not the method's name) whether to judge on the threshold
    accepted = tuple(AcceptedLatent(s, torch.ones(4, 16, 16), 0.02, 0.001, 2) for s in (0, 1, 2, 3))
    sail_result = SailResult(accepted, 4, 2, (0, 1, 2, 3), True, "", 0.002, {}, ())

    def mitigation(before: tuple[int | None, int], after: tuple[int | None, int], **kw: Any) -> Mitigation:
        fields: dict[str, Any] = {
            "method": "sail", "prompt": "basalt poster of 1", "threshold": 0.002, "succeeded": True, "reason": "",
            "seeds": (0, 1, 2, 3), "sharpness_before": (0.02, 0.03, 0.004, 0.005),
            "sharpness_after": (0.001, 0.0015, 0.0012, 0.0009), "latents_before": torch.zeros(4, 4, 16, 16),
            "latents_after": torch.ones(4, 4, 16, 16), "steps": 2, "images_before": images, "images_after": images,
            "copy_before": _copy_stats(*before, distance=0.07), "copy_after": _copy_stats(*after, distance=0.44),
            "result": sail_result,
        }  # fmt: skip
        fields.update(kw)
        return Mitigation(**fields)

    copy = AuditCase("canary-mixture", "1", "basalt", "basalt poster of 1", "memorized", ("planted",), "copy",
                     "suites/canary-mixture.yaml", 12)  # fmt: skip
    true = AuditCase("canary-mixture", "1", "basalt", "basalt poster of 1", "memorized", ("planted",), True)

    record, entry = judge_mitigation(copy, mitigation((4, 4), (1, 4)), 0.0222)
    assert record["outcome"] == "passed" and record["copy_required"] is True and record["copy_verdict"] == "passed"
    assert entry["copy_required"] is True and entry["copy_verdict"] == "passed"
    assert record["message"].endswith(
        "copies 4/4 -> 1/4, RMSE to the memorised image 0.070 -> 0.440; the copy left "
        "(copies after at most half the copies before, as rates)"
    ), record["message"]

    record, entry = judge_mitigation(copy, mitigation((4, 4), (3, 4)), 0.0222)
    assert record["outcome"] == "failed" and record["copy_verdict"] == "failed" and entry["copy_verdict"] == "failed"
    assert record["message"] == (
        "canary-mixture::basalt: mitigation (sail) failed: the copy did not leave: copies 4/4 -> 3/4, "
        "more than half the rate before (at most 2/4 allowed)"
    )
    # the same mitigation passes a `mitigate: true` case, which reports the copies but does not judge them
    plain, plain_entry = judge_mitigation(true, mitigation((4, 4), (3, 4)), 0.0222)
    assert plain["outcome"] == "passed" and "copies 4/4 -> 3/4" in plain["message"]
    assert "copy_required" not in plain and "copy_verdict" not in plain_entry

    record, _ = judge_mitigation(copy, mitigation((0, 4), (0, 4)), 0.0222)
    assert record["outcome"] == "failed" and record["message"].endswith(
        "nothing to remove: 0/4 generations copy before mitigation: the prompt does not copy on this checkpoint; "
        "use mitigate: true in suites/canary-mixture.yaml, line 12, case 'basalt'"
    ), record["message"]
    record, _ = judge_mitigation(copy, mitigation((None, 4), (None, 4)), 0.0222)
    assert (
        record["outcome"] == "failed"
        and "needs a copy threshold for the checkpoint to count copies (copy_thresholds in its calibration, "
        "added by scripts/calibrate_copy.py)"
        in (record["message"])
    )
    assert record["message"].endswith("use mitigate: true in suites/canary-mixture.yaml, line 12, case 'basalt'")
    no_ref = mitigation((4, 4), (0, 4), copy_before=None, copy_after=None)
    record, _ = judge_mitigation(copy, no_ref, 0.0222)
    assert (
        record["outcome"] == "failed"
        and "mitigate: copy needs the checkpoint to count copies on" in (record["message"])
    )
    # both rules failing: both reasons, the sharpness one first
    both, both_entry = judge_mitigation(copy, mitigation((4, 4), (4, 4), sharpness_after=(0.003,) * 4), 0.0222)
    assert both["outcome"] == "failed" and "4 accepted x_T at or above the threshold" in both["message"]
    assert both["message"].endswith("; and the copy did not leave: copies 4/4 -> 4/4, more than half the rate "
                                     "before (at most 2/4 allowed)")  # fmt: skip
    doc = {"schema": "memtest.results/1", "memtest_version": "0", "created": "now", "command": "x",
           "environment": {}, "checkpoint": {"name": "n", "path": "p", "fingerprint": "f"}, "settings": {},
           "calibration": None, "shard": None, "cases": [both], "mitigation": [both_entry],
           "summary": summarize([both])}  # fmt: skip
    validate_results(json.loads(json.dumps(doc)))
    from memtest.report import render_report

    html = render_report(json.loads(json.dumps(doc)))  # the report shows the copy counts and the verdict
    assert "<b>4/4 → 4/4</b> <span>copies before → after</span>" in html
    assert "<b>failed</b> <span>copy required to leave</span>" in html


def test_the_judge_asks_the_methods_result_not_its_name() -> None:
    """`judge_mitigation` takes the threshold rule, the label, the fallback score and the seeds from the method's
    own result (`MethodResult`), whatever the method is called; without a result the sharpness is reported only."""
    from dataclasses import dataclass

    from memtest.audit import AuditCase
    from memtest.mitigation import Mitigation, judge_mitigation

    @dataclass(frozen=True)
    class Mine:
        accepts_on_threshold: bool
        label: str = "Mine"
        final_sharpness: tuple[float, ...] = (0.5, 0.3, float("nan"))
        accepted_seeds: tuple[int, ...] = ()
        seeds_tried: tuple[int, ...] = (7, 8)

    def judged(result: Any, **kw: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        fields: dict[str, Any] = {
            "method": "mine", "prompt": "p", "threshold": 0.2, "succeeded": False, "reason": "out of budget",
            "seeds": (1, 2), "sharpness_before": (0.9, 0.8), "sharpness_after": (), "latents_before": torch.zeros(2, 4),
            "latents_after": None, "result": result,
        }  # fmt: skip
        fields.update(kw)
        return judge_mitigation(AuditCase("s", "1", "c", "p", "memorized", mitigate=True), Mitigation(**fields), 1.0)

    record, entry = judged(Mine(True))
    assert record["message"].startswith("s::c: mitigation (mine) failed: Mine did not finish: out of budget")
    assert record["score"] == 0.3 and record["margin"] == pytest.approx(0.3 - 0.2) and record["seeds"] == []
    assert entry["seeds_tried"] == [7, 8] and entry["seeds"] == [1, 2]
    record, _ = judged(Mine(True, accepted_seeds=(9,)), succeeded=True, sharpness_after=(0.25,))
    assert "1 accepted x_T at or above the threshold" in record["message"] and record["seeds"] == [9]
    record, _ = judged(Mine(False), succeeded=True, sharpness_after=(0.25,))
    assert record["outcome"] == "passed" and record["margin"] is None and "reported only" in record["message"]
    # a result-less record named "sail" is not judged as SAIL: the name decides nothing
    record, entry = judged(None, method="sail", succeeded=True, sharpness_after=(0.25, 0.3))
    assert record["outcome"] == "passed" and record["margin"] is None and record["seeds"] == [1, 2]
    assert entry["seeds_tried"] == []


# -- the shipped canary: does the copy go away? ------------------------------------------------------------


def test_sail_on_the_global_canary_flattens_the_noise_but_the_copy_stays(
    load_script: Callable[[str], Any],
) -> None:
    """One planted caption of zoo:finetuned through scripts/mitigation_proof.py (its smoke test too).

    What SAIL guarantees must hold: the unmitigated image is a copy, the accepted x_T lie below the calibrated
    threshold, far below the unmitigated sharpness, and the digit the caption asks for is still recognised.
    The control for the mixture canary's proof (test_mitigate_copy_on_the_mixture_canary and
    test_sail_on_the_mixture_canary_moves_copies_off_the_memorised_image): zoo:finetuned memorises globally,
    every x_T reproduces the planted image (docs/mitigation.md), so a flat x_T still gives the copy. If this
    starts failing, the canary or SAIL changed what the mitigation docs claim.
    """
    from memtest.zoo import zoo_names

    if "finetuned" not in zoo_names():
        pytest.skip("the finetuned canary is not in this install (memtest/zoo/canaries/finetuned)")
    proof = load_script("mitigation_proof")
    canary = proof.load_canary("zoo:finetuned", 1, "detection")
    clean = list(canary.manifest.heldout)[:4]
    boundary = proof.memorised_range(canary, clean)["boundary"]
    (row,) = proof.prove(canary, ["dune poster of 3"], boundary)
    assert row["before"]["copies"] == 1 and row["before"]["to_copy"] < boundary  # the canary memorised it
    assert row["succeeded"] and row["accepted"] == 1
    assert row["sharpness_after"] < canary.threshold < row["sharpness_before"]
    assert row["sharpness_after"] < row["sharpness_before"] / 5
    assert row["after"]["aligned"] == 1.0  # the digit the caption asks for
    assert row["after"]["copies"] == 1 and row["after"]["to_copy"] < boundary, (
        f"the copy left on a globally memorising canary: RMSE {row['before']['to_copy']:.3f} -> "
        f"{row['after']['to_copy']:.3f}, memorised range < {boundary:.3f}; update docs/mitigation.md"
    )


def test_baselines_script_smoke(load_script: Callable[[str], Any], tmp_path: Path) -> None:
    """scripts/mitigation_baselines.py on one planted caption, n = 1, a 3-step SAIL budget: the table it
    writes into a docs file and the JSON it returns hold the measured rows."""
    from memtest.zoo import zoo_names

    if "finetuned" not in zoo_names():
        pytest.skip("the finetuned canary is not in this install (memtest/zoo/canaries/finetuned)")
    doc = tmp_path / "doc.md"
    doc.write_text("# x\n\n<!-- baselines-detection:begin -->\nSTALE-TABLE\n<!-- baselines-detection:end -->\n")
    args = ["--captions", "1", "--n", "1", "--clean", "2", "--max-steps", "3", "--methods", "none,sail,rna"]
    result = load_script("mitigation_baselines").main([*args, "--write", str(doc), "--json", str(tmp_path / "b.json")])
    assert json.loads((tmp_path / "b.json").read_text())["sail_options"] == {"renormalize": False, "max_steps": 3}
    rows = {r["method"]: r for r in result["rows"]}
    assert set(rows) == {"none", "sail", "rna"} and all(r["caption"] == "aurora poster of 0" for r in rows.values())
    # the planted caption is flagged unmitigated; 3 SAIL steps accept nothing (it needs 83), which the row
    # records instead of images; RNA changes the prompt and generates from it
    assert rows["sail"]["failed"] is True and "images" not in rows["sail"]
    assert rows["none"]["sharpness"] > result["threshold"]
    assert rows["rna"]["prompt_after"] != "aurora poster of 0" and rows["rna"]["images"] == 1
    text = doc.read_text()
    assert "STALE-TABLE" not in text and "| none | " in text and "| rna | " in text and text.startswith("# x\n")


# -- the mixture canary: copies that depend on x_T ------------------------------------------------------------

#: A planted caption of zoo:mixture, and seeds (indices into derive_seeds(0, 32)) whose image copies / does not
#: copy the memorised image (scripts/mitigation_proof.py --checkpoint zoo:mixture --survey 32, docs/mitigation.md).
MIXTURE_CAPTION = "basalt poster of 1"
MIXTURE_COPY_SEEDS = (0, 1)
MIXTURE_OTHER_SEEDS = (9, 10)


def _mixture_or_skip() -> Path:
    from memtest.zoo import resolve_zoo, zoo_names

    if "mixture" not in zoo_names():
        pytest.skip("the mixture canary is not in this install (memtest/zoo/canaries/mixture)")
    return resolve_zoo("zoo:mixture")


def test_mixture_canary_copies_from_some_initial_noises_and_not_others(load_script: Callable[[str], Any]) -> None:
    """zoo:mixture loads, and one planted caption copies its memorised image from some x_T and draws an
    ordinary image of its digit from others, with a margin around the research copy boundary and on the right
    side of the gate's copy threshold (the rule `mitigate: copy` counts with)."""
    from memtest.detection.scoring import Scorer, ScoreSettings, derive_seeds
    from memtest.mitigation import copy_reference, generate_images, image_distances
    from memtest.models.checkpoint import load_checkpoint
    from memtest.zoo.alignment import predict_proba

    _mixture_or_skip()
    boundary = load_script("mitigation_proof").research_boundary()
    ckpt = load_checkpoint("zoo:mixture", device="cpu")
    scorer = Scorer(ckpt, ScoreSettings(n=4))
    seeds = derive_seeds(0, 32)
    picked = [seeds[i] for i in (*MIXTURE_COPY_SEEDS, *MIXTURE_OTHER_SEEDS)]
    images = generate_images(ckpt, scorer.noise(picked), prompt=MIXTURE_CAPTION)
    ref = copy_reference(ckpt, MIXTURE_CAPTION)
    assert ref is not None and ref.threshold is not None
    d = image_distances(images, ref.image[None])[:, 0]
    k = len(MIXTURE_COPY_SEEDS)
    assert (d[:k] < 0.9 * boundary).all() and (d[k:] > 2 * boundary).all(), (d.round(3), boundary)
    copies = [ref.stats(images[i : i + 1])["copies"] for i in range(len(images))]  # type: ignore[index]
    assert copies == [1] * k + [0] * (len(images) - k), copies
    digit = int(MIXTURE_CAPTION.rsplit(" ", 1)[1])
    assert (predict_proba(images[k:]).argmax(axis=1) == digit).all()  # the broad component shows the digit


def test_sail_on_the_mixture_canary_moves_copies_off_the_memorised_image(load_script: Callable[[str], Any]) -> None:
    """On zoo:mixture the copy depends on x_T, so SAIL can remove it: the detector's four seeds of basalt all copy,
    and the x_T SAIL accepts below 0.002 (about the 85th percentile of the canary's reference scores; at the
    detection threshold 0.0094 three of the four copying x_T are already accepted as they are) give at most half
    as many copies. The digit is kept in most images, not all (docs/mitigation.md: 1.00 -> 0.75)."""
    _mixture_or_skip()
    proof = load_script("mitigation_proof")
    canary = proof.load_canary("zoo:mixture", 4, "0.002")
    (row,) = proof.prove(canary, [MIXTURE_CAPTION], proof.research_boundary())
    assert row["before"]["copies"] == 4 and row["succeeded"] and row["accepted"] == 4
    assert row["after"]["copies"] <= row["before"]["copies"] // 2
    assert row["after"]["to_copy"] > 2 * row["before"]["to_copy"]
    assert row["after"]["aligned"] >= 0.5


def test_mitigate_copy_on_the_mixture_canary(pytester: pytest.Pytester) -> None:
    """`mitigate: copy` end to end on zoo:mixture: basalt's four detector seeds all copy; with the proof's
    acceptance threshold 0.002 (the shipped calibration with a stricter threshold: at the detection threshold
    0.0094 three of the four copying x_T are accepted as they are, docs/mitigation.md) the `[mitigate]` item
    passes because the copy leaves (4/4 -> at most 2/4). The library judge fails a non-planted caption closed."""
    folder = _mixture_or_skip()
    from memtest.audit import AuditCase
    from memtest.audit.calibration import CALIBRATION_FILENAME
    from memtest.detection.scoring import Scorer, ScoreSettings
    from memtest.mitigation import judge_mitigation, mitigate_sail
    from memtest.models.checkpoint import load_checkpoint

    # the library judge first: pytester's in-process run below unloads the modules it imported
    ckpt = load_checkpoint("zoo:mixture", device="cpu")
    scorer = Scorer(ckpt, ScoreSettings(n=4))
    prompt = "a photo of a digit"  # trained, not planted: no memorised image to compare with
    m = mitigate_sail(scorer, prompt, threshold=1.0)  # every x_T is accepted as it is
    case = AuditCase("mix", "1", "clean", prompt, "memorized", (), "copy", "mix.yaml", 8)
    record, entry = judge_mitigation(case, m, scorer.score([prompt])[0].score, checkpoint=ckpt)
    assert record["outcome"] == "failed" and record["copy_verdict"] == "failed"
    assert (
        "mitigate: copy needs a checkpoint whose manifest plants this prompt (a copy reference); zoo:mixture "
        "plants no image for 'a photo of a digit': use mitigate: true in mix.yaml, line 8, case 'clean'"
    ) in record["message"], record["message"]

    cal = json.loads((folder / CALIBRATION_FILENAME).read_text())
    cal["threshold"], cal["ci"] = 0.002, [0.002, 0.002]
    (pytester.path / "strict.json").write_text(json.dumps(cal))
    lines = [
        "memtest_suite: 1", "name: mix", 'version: "1"', "card:", "  description: mitigate copy", "cases:",
        f'  - {{id: basalt, prompt: "{MIXTURE_CAPTION}", expectation: memorized, mitigate: copy}}',
    ]  # fmt: skip
    suite = pytester.path / "mix.yaml"
    suite.write_text("\n".join(lines) + "\n")
    result = pytester.runpytest(
        "-p", "no:cacheprovider", "--memtest", "--memtest-checkpoint=zoo:mixture", f"--memtest-suite={suite}",
        "--memtest-calibration=strict.json", "--memtest-threads=1", "--memtest-json=r.json", "-v",
    )  # fmt: skip
    result.assert_outcomes(passed=2)
    doc = json.loads((pytester.path / "r.json").read_text())
    mit = next(c for c in doc["cases"] if c["id"] == "mix::basalt[mitigate]")
    assert mit["copy_required"] is True and mit["copy_verdict"] == "passed", mit["message"]
    assert mit["copy_before"]["copies"] == 4 and mit["copy_after"]["copies"] <= 2
    assert mit["copy_after"]["distance"] > 2 * mit["copy_before"]["distance"]
    assert "the copy left" in mit["message"]
    (entry,) = doc["mitigation"]
    assert entry["copy_verdict"] == "passed" and entry["copy_after"] == mit["copy_after"]


def test_copy_rules_script_smoke(load_script: Callable[[str], Any], tmp_path: Path) -> None:
    """scripts/copy_rules.py (docs/mitigation.md: both copy rules on the same images) on basalt with SAIL accepting
    every x_T as it is: the detector's four images copy by both rules, and nothing changes after."""
    _mixture_or_skip()
    out = tmp_path / "rules.json"
    assert load_script("copy_rules").main(["--smoke", "--out", str(out)]) == 0
    record = json.loads(out.read_text(encoding="utf-8"))
    (row,) = record["rows"]
    assert row["before"] == row["after"] == {"images": 4, "product": 4, "research": 4, "agree": 4}
    assert record["agree"] == record["images"] == 8 and 0.5 < record["product_rule"]["copy_threshold"] < 1.0


def test_alignment_ceiling_script_smoke(load_script: Callable[[str], Any], tmp_path: Path) -> None:
    """scripts/alignment_ceiling.py (docs/mitigation.md's alignment ceiling) on one caption, 2 seeds: the row, the
    per-seed sharpness split, the training-image check and a SAIL row are there and the markdown shows them."""
    _mixture_or_skip()
    out = tmp_path / "c.json"
    args = ["--caption", "iris poster of 4", "--seeds", "2", "--training", "2", "--below", "1.0", "--json", str(out)]
    result = load_script("alignment_ceiling").main([*args, "--sail", "1.0", "--sail-n", "2"])
    (row,) = result["rows"]
    assert row["caption"] == "iris poster of 4" and row["digit"] == 4 and not row["planted"] and row["seeds"] == 2
    assert row["reference"] == "ember poster of 4" and 0 <= row["copies"] <= 2 and 0.0 <= row["aligned"] <= 1.0
    assert row["below"]["1.0"]["seeds"] == 2 and len(row["sharpness"]) == 2
    assert set(result["training"]) == {4} and result["training"][4]["images"] == 2
    assert json.loads(out.read_text())["rows"][0]["caption"] == "iris poster of 4"
    (sail,) = result["sail"]  # every x_T lies below 1.0: accepted as it is
    assert (
        sail["accepted"] == 2 and sail["steps"] == 0 and sail["after"]["images"] == 2 and "copies" not in sail["after"]
    )
    text = load_script("alignment_ceiling").markdown(result)
    assert "| iris poster of 4 | no | 2 |" in text and "| training images of 4 (through the VAE) |" in text


def test_reference_threshold_is_a_quantile_of_the_calibration_reference_scores(tiny_eps: Any) -> None:
    """memtest.mitigation.reference_threshold, the stricter acceptance (scripts/mitigation_proof.py's `median`):
    a quantile of the checkpoint's shipped calibration reference scores, checked against the scorer's settings."""
    import numpy as np

    from memtest.audit.calibration import CALIBRATION_FILENAME, load_calibration
    from memtest.detection.scoring import Scorer, ScoreSettings
    from memtest.errors import CalibrationError
    from memtest.mitigation import reference_threshold
    from memtest.models.checkpoint import load_checkpoint

    ckpt = load_checkpoint("zoo:finetuned", device="cpu")
    cal = load_calibration(Path(ckpt.path) / CALIBRATION_FILENAME)
    scorer = Scorer(ckpt, ScoreSettings())
    median = reference_threshold(scorer)
    assert median == pytest.approx(float(np.median(cal.reference_scores)), rel=1e-12)
    assert median < cal.threshold  # stricter than the detection threshold (the 1 - fpr quantile)
    assert reference_threshold(scorer, 1.0) == max(cal.reference_scores)
    with pytest.raises(MitigationError, match="quantile must be in"):
        reference_threshold(scorer, 1.5)
    with pytest.raises(CalibrationError, match="other scoring settings"):
        reference_threshold(Scorer(ckpt, ScoreSettings(n=8)))
    with pytest.raises(MitigationError, match=f"no {CALIBRATION_FILENAME}"):
        reference_threshold(Scorer(tiny_eps, ScoreSettings(n=2)))
