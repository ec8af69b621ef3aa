"""Detectors behind one interface (memtest.detection.detectors): the registry is the metric list, each detector
separates the shipped canary's planted captions from its clean ones, records its settings in the identity, and
refuses settings it does not read."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

#: Cheap settings per detector (the n generations are 16 px; tiled_l2 generates them through the pipeline).
CHEAP: dict[str, dict[str, Any]] = {
    "sharpness": {"n": 2},
    "score_norm": {"n": 2},
    "tiled_l2": {"n": 2, "num_inference_steps": 10},
    "anisotropy": {"n": 2},
    "attention_entropy": {"n": 2},
    "bright_ending": {"n": 2, "num_inference_steps": 10},
}
#: Detectors whose planted captions score higher on zoo:finetuned (attention_entropy's are lower: see its test).
HIGHER = ("sharpness", "score_norm", "tiled_l2", "anisotropy", "bright_ending")


@pytest.fixture(scope="module")
def finetuned() -> Any:
    from memtest.models.checkpoint import load_checkpoint

    return load_checkpoint("zoo:finetuned", device="cpu")


@pytest.fixture(scope="module")
def captions() -> tuple[list[str], list[str]]:
    """Four planted (memorized) and four clean (trained, not planted) captions of zoo:finetuned's own suite."""
    from memtest.audit.suites import resolve_suite

    cases = resolve_suite("canary-finetuned").cases
    planted = [c.prompt for c in cases if c.expectation == "memorized"][:4]
    clean = [c.prompt for c in cases if c.expectation == "clean"][:4]
    return planted, clean


def test_the_registry_is_the_metric_list_and_every_entry_loads() -> None:
    from memtest.detection.detectors.base import load_detector
    from memtest.detection.detectors.registry import DETECTORS
    from memtest.detection.settings import ALWAYS_READ, METRICS, ScoreSettings

    assert tuple(DETECTORS) == METRICS and METRICS[0] == "sharpness" == ScoreSettings().metric
    assert set(CHEAP) <= set(METRICS)
    fields = {f.name for f in dataclasses.fields(ScoreSettings)}
    for name in METRICS:
        detector = load_detector(name)
        assert detector.name == name and detector.source
        assert detector.reads <= fields and not detector.reads & ALWAYS_READ
    with pytest.raises(Exception, match="Unknown metric 'sharpnes'"):
        load_detector("sharpnes")


@pytest.mark.parametrize("metric", HIGHER)
def test_planted_captions_score_higher_than_clean_ones(
    metric: str, finetuned: Any, captions: tuple[list[str], list[str]], one_torch_thread: None
) -> None:
    import memtest

    planted, clean = captions
    scores = memtest.score_prompts(finetuned, planted + clean, metric=metric, batch_size=8, **CHEAP[metric])
    assert all(r.settings["metric"] == metric for r in scores)
    high = sum(r.score for r in scores[:4]) / 4
    low = sum(r.score for r in scores[4:]) / 4
    assert high > low, (metric, [r.score for r in scores])


def test_each_detector_records_its_settings_in_the_identity(finetuned: Any) -> None:
    from memtest.detection.detectors.anisotropy import DEFAULT_GAMMA
    from memtest.detection.scoring import Scorer, ScoreSettings

    sharp = Scorer(finetuned, ScoreSettings()).identity()
    assert {"method", "fd_h", "steps", "timesteps", "guidance_scale"} <= set(sharp)

    tiled = Scorer(finetuned, ScoreSettings(metric="tiled_l2", guidance_scale=3.0, num_inference_steps=20)).identity()
    assert tiled["descriptor"]["tiles"] == 4 and tiled["descriptor"]["side"] == finetuned.resolution[0]
    assert tiled["guidance_scale"] == 3.0 and tiled["num_inference_steps"] == 20 and "mean" in tiled["aggregation"]
    assert "method" not in tiled and "steps" not in tiled

    default = Scorer(finetuned, ScoreSettings(metric="anisotropy")).identity()
    assert default["gamma"] == list(DEFAULT_GAMMA) and default["timesteps"] == [981, 41]
    fitted = Scorer(finetuned, ScoreSettings(metric="anisotropy", gamma=(1.0, 0.5), num_inference_steps=25))
    assert fitted.identity()["gamma"] == [1.0, 0.5] and fitted.identity()["timesteps"][0] == 961
    assert "method" not in default and "fd_h" not in default


@pytest.mark.parametrize(
    ("metric", "settings", "message"),
    [
        ("tiled_l2", {"steps": 2}, "The tiled_l2 metric does not use the setting `steps` (got 2)"),
        ("tiled_l2", {"n": 1}, "needs at least 2: got n=1"),
        ("tiled_l2", {"method": "jvp"}, "does not use the setting `method`"),
        ("anisotropy", {"guidance_scale": 3.0}, "does not use the setting `guidance_scale`"),
        ("anisotropy", {"num_inference_steps": 2}, "needs at least 3 inference steps"),
        ("tiled_l2", {"n": 1, "steps": 1}, "Score with `n=4` (or more)"),
        ("sharpness", {"gamma": (1.0, 2.0)}, "The sharpness metric does not use the setting `gamma`"),
        ("score_norm", {"gamma": (1.0, 2.0)}, "does not use the setting `gamma`"),
    ],
)
def test_a_setting_the_detector_does_not_read_is_refused(
    finetuned: Any, metric: str, settings: dict[str, Any], message: str
) -> None:
    import memtest
    from memtest.detection.settings import ScoreSettings
    from memtest.errors import ScoringError

    with pytest.raises(ScoringError) as info:
        memtest.score_prompts(finetuned, ["a snapshot of a digit"], metric=metric, **settings)
    assert message in str(info.value)
    # refused before anything loads: the plugin and `memtest audit` check settings at start-up
    with pytest.raises(ScoringError):
        ScoreSettings(metric=metric, **settings).validate()


def test_gamma_must_be_a_pair_of_numbers() -> None:
    from memtest.detection.settings import ScoreSettings
    from memtest.errors import ScoringError

    for bad in ((1.0,), (1.0, float("nan")), ("a", 1.0)):
        with pytest.raises(ScoringError, match="gamma must be a pair"):
            ScoreSettings(metric="anisotropy", gamma=bad).validate()  # type: ignore[arg-type]


def test_anisotropy_is_the_weighted_sum_of_its_two_terms(finetuned: Any, captions: tuple[list[str], list[str]]) -> None:
    """score = γ1·norm + γ2·cosine per generation; the norm term is score_norm at one step, bit for bit."""
    import torch

    from memtest.detection.detectors.anisotropy import DETECTOR
    from memtest.detection.scoring import Scorer, ScoreSettings

    prompts = captions[0][:2] + captions[1][:2]
    scorer = Scorer(finetuned, ScoreSettings(metric="anisotropy", n=2, gamma=(0.5, -3.0), batch_size=4))
    norm, cosine = DETECTOR.terms(scorer, scorer.batch(prompts))
    assert bool(((cosine >= -1) & (cosine <= 1)).all())
    got = [v for r in scorer.score(prompts) for v in r.values]
    assert torch.equal(torch.tensor(got, dtype=torch.float64), 0.5 * norm - 3.0 * cosine)
    norms = Scorer(finetuned, ScoreSettings(metric="score_norm", n=2, batch_size=4)).score(prompts)
    assert [v for r in norms for v in r.values] == norm.tolist()


def test_fit_gamma_finds_the_ratio_that_separates() -> None:
    from memtest.detection.detectors.anisotropy import fit_gamma

    # the norm alone ranks one memorized prompt below a reference; the cosine separates them all
    norms = [3.0, 1.0, 2.0, 2.5]
    cosines = [0.9, 0.8, 0.1, 0.2]
    labels = [1, 1, 0, 0]
    gamma, auc = fit_gamma(norms, cosines, labels)
    assert auc == 1.0 and gamma[0] == 1.0 and gamma[1] > 0
    assert fit_gamma(norms, cosines, labels, ratios=[0.0])[1] == 0.5


@pytest.mark.parametrize("metric", sorted(CHEAP))
def test_the_plugin_and_the_cli_take_every_metric(metric: str, pytester: pytest.Pytester) -> None:
    from pytest_memtest.options import read_config

    from memtest.audit import config_from_values
    from memtest.audit.options import OPTIONS

    assert read_config(pytester.parseconfig("--memtest", f"--memtest-metric={metric}")).score.metric == metric
    assert config_from_values({"metric": metric}).score.metric == metric
    assert metric in next(o.help for o in OPTIONS if o.name == "metric")


def test_the_gamma_fit_script_and_its_record(load_script: Any, tmp_path: Any) -> None:
    """scripts/fit_anisotropy.py on two captions a side (seconds), and the shipped record's fit is the best AUC."""
    import json
    from pathlib import Path

    script = load_script("fit_anisotropy")
    out = tmp_path / "gamma.json"
    assert script.main(["--limit", "2", "--n", "1", "--write", str(out)]) == 0
    got = json.loads(out.read_text())["finetuned"]
    assert got["memorized"] == 2 and got["reference"] == 2 and got["settings"]["timesteps"] == [981, 41]
    assert got["auc"] >= max(got["auc_norm_only"], got["auc_cosine_only"])
    shipped = json.loads((Path(__file__).parent.parent / "docs/runs/anisotropy-gamma.json").read_text())
    for record in shipped.values():
        assert record["auc"] >= max(record["auc_norm_only"], record["auc_paper_sd14_gamma"]) and record["gamma"][0] == 1


def test_attention_is_recorded_without_changing_the_model(finetuned: Any) -> None:
    """The recording processors leave the outputs bit for bit, record each cross-attention call in the order
    `cross_attention_layers` names, as probability distributions over the tokens, and are removed afterwards."""
    import torch

    from memtest.detection.detectors.attention import cross_attention_layers, recording
    from memtest.detection.scoring import Scorer, ScoreSettings

    scorer = Scorer(finetuned, ScoreSettings(n=2))
    batch = scorer.batch(["aurora poster of 0", "a snapshot of a digit"])
    t = scorer.timesteps[0]
    plain = scorer.outputs(batch.x, t, batch.c_c, batch.c_0)
    before = dict(finetuned.denoiser.attn_processors)
    store: list[torch.Tensor] = []
    calls: list[str] = []
    with recording(finetuned, store, calls) as names:
        recorded = scorer.outputs(batch.x, t, batch.c_c, batch.c_0)
    assert torch.equal(plain, recorded)
    assert calls == names == cross_attention_layers(finetuned, "x") and len(names) == 4
    assert names[0].startswith("down_blocks") and names[1].startswith("mid_block")
    rows, tokens = 2 * 4, finetuned.tokenizer.model_max_length
    assert all(a.shape == (rows, a.shape[1], tokens) for a in store)
    assert torch.allclose(store[0].sum(dim=-1), torch.ones(()), atol=1e-5)
    assert all(before[k] is v for k, v in finetuned.denoiser.attn_processors.items())


def test_attention_entropy_on_the_canary_runs_opposite_to_ren_et_al(
    finetuned: Any, captions: tuple[list[str], list[str]]
) -> None:
    """Ren et al. find memorized SD v1.4 prompts' attention *more* dispersed (higher entropy); on zoo:finetuned the
    planted captions' LE is lower than the clean ones' (AUC 0.16 over 10 planted / 30 clean, n = 2), with every
    entropy within 2% of the uniform log(16): the tiny canary barely shapes its attention. The test pins both
    facts, so a change in the recording or the formula shows."""
    import math

    import memtest
    from memtest.detection.detectors.attention_entropy import LE_LAYER

    planted, clean = captions
    scores = memtest.score_prompts(finetuned, planted + clean, metric="attention_entropy", n=2, batch_size=8)
    values = [v for r in scores for v in r.values]
    assert all(0.97 * math.log(16) < v <= math.log(16) + 1e-6 for v in values)
    assert sum(r.score for r in scores[:4]) < sum(r.score for r in scores[4:])
    assert scores[0].settings["variant"] == "le" and LE_LAYER == 3
    assert scores[0].settings["layers"] == ["up_blocks.0.attentions.1.transformer_blocks.0.attn2.processor"]


def test_attention_entropy_refuses_what_it_cannot_read(finetuned: Any) -> None:
    import memtest
    from memtest.errors import ScoringError

    sdxl = memtest.load_checkpoint("zoo:sdxl-finetuned", device="cpu")
    with pytest.raises(ScoringError, match="reads the cross-attention of an SD-style UNet"):
        memtest.score_prompts(sdxl, ["a snapshot of a digit"], metric="attention_entropy")
    with pytest.raises(
        ScoringError, match=r"Unknown variant 'xe' of the attention_entropy metric\. Choose one of: le, ae"
    ):
        memtest.score_prompts(finetuned, ["a snapshot of a digit"], metric="attention_entropy", variant="xe")
    with pytest.raises(ScoringError, match="needs num_inference_steps > 10"):
        memtest.score_prompts(finetuned, ["x"], metric="attention_entropy", variant="ae", num_inference_steps=10)
    with pytest.raises(ScoringError, match="does not use the setting `variant`"):
        memtest.score_prompts(finetuned, ["x"], metric="sharpness", variant="le")


def test_bright_ending_records_its_mask_and_steps(finetuned: Any) -> None:
    """BE's identity names the mask and the magnitude and the steps it averages; it reads `steps` (the first K
    steps of the trajectory whose final step gives the mask) and refuses families without SD's cross-attention."""
    import memtest
    from memtest.detection.scoring import Scorer, ScoreSettings
    from memtest.errors import ScoringError

    ident = Scorer(finetuned, ScoreSettings(metric="bright_ending", steps=3, num_inference_steps=20)).identity()
    assert ident["steps"] == 3 and len(ident["timesteps"]) == 3 and ident["guidance_scale"] == 7.5
    assert "end token" in ident["mask"] and "final step" in ident["mask"] and "mean(mask)" in ident["magnitude"]
    one, three = (
        memtest.score_prompts(
            finetuned, ["aurora poster of 0"], metric="bright_ending", n=1, steps=k, num_inference_steps=10
        )[0]
        for k in (1, 3)
    )
    assert one.score != three.score and one.settings["timesteps"] == three.settings["timesteps"][:1]
    sdxl = memtest.load_checkpoint("zoo:sdxl-finetuned", device="cpu")
    with pytest.raises(ScoringError, match="reads the cross-attention of an SD-style UNet"):
        memtest.score_prompts(sdxl, ["a snapshot of a digit"], metric="bright_ending")


def test_variant_and_gamma_are_options_of_both_front_ends(pytester: pytest.Pytester) -> None:
    """`variant` and `gamma` reach ScoreSettings from the plugin (and its reproduce command names them), and a
    malformed gamma is a usage error naming the option."""
    import shlex

    from pytest_memtest.options import read_config, reproduce_command

    from memtest.audit import AuditCase, config_from_values
    from memtest.errors import MemtestError

    config = read_config(pytester.parseconfig("--memtest", "--memtest-metric=anisotropy", "--memtest-gamma=1,-3.5"))
    assert config.score.gamma == (1.0, -3.5) and config.score.variant is None
    assert config_from_values({"metric": "attention_entropy", "variant": "ae"}).score.variant == "ae"
    case = AuditCase("s", "1", "c1", "a prompt", "clean")
    argv = shlex.split(reproduce_command(config, case))
    assert "--memtest-gamma=1.0,-3.5" in argv
    assert read_config(pytester.parseconfig(*argv[1:-2])).score == config.score
    with pytest.raises(MemtestError, match="`gamma` must look like G1,G2"):
        config_from_values({"metric": "anisotropy", "gamma": "1"})
    with pytest.raises(MemtestError, match="does not use the setting `variant`"):
        config_from_values({"metric": "sharpness", "variant": "ae"})


def test_a_detector_refusing_the_checkpoint_leaves_the_engine_without_a_run_to_describe() -> None:
    """A checkpoint-level refusal (anisotropy on a flow-matching checkpoint) is the run's error: the engine has no
    scorer, so the plugin's end-of-run summary does not try to describe a run that never happened."""
    from memtest import audit
    from memtest.errors import ScoringError

    engine = audit.Engine(audit.config_from_values({"checkpoint": "zoo:flow-finetuned", "metric": "anisotropy"}))
    with pytest.raises(ScoringError, match="flow matching"):
        engine.identity()
    assert engine.checkpoint is not None and not engine.loaded()


@pytest.mark.parametrize("xdist", [pytest.param(False, id="single"), pytest.param(True, id="xdist")])
def test_a_new_detector_calibrates_and_gates_through_the_plugin(
    pytester: pytest.Pytester, gate_env: dict[str, Any], xdist: bool
) -> None:
    """anisotropy end to end through `pytest --memtest`: a calibrating run on the suite's references writes a
    calibration whose identity names the detector and its gamma, and the gate run with it, in one process and with
    `-n 2`, gives every case the score the library gives it, bit for bit."""
    import json

    from memtest.detection.scoring import score_prompts

    def run(*extra: str, workers: bool = False) -> pytest.RunResult:
        args = ["-p", "no:cacheprovider", "--memtest", f"--memtest-checkpoint={gate_env['checkpoint']}",
                f"--memtest-suite={gate_env['suite']}", "--memtest-n=1", "--memtest-fpr=0.1",
                "--memtest-metric=anisotropy", "--memtest-fail-on=flag", "--memtest-confirm=off", *extra]  # fmt: skip
        return pytester.runpytest_subprocess("-n", "2", *args) if workers else pytester.runpytest(*args)

    # The calibrating run in this process (test_plugin's round trip covers calibrating with -n 2).
    run("--memtest-calibrate", "--memtest-calibration=cal.json").assert_outcomes(passed=14)
    cal = json.loads((pytester.path / "cal.json").read_text())
    assert cal["identity"]["metric"] == "anisotropy" and len(cal["identity"]["gamma"]) == 2
    gate = run("--memtest-calibration=cal.json", "--memtest-json=r.json", workers=xdist)
    doc = json.loads((pytester.path / "r.json").read_text())
    cases = {c["prompt"]: c for c in doc["cases"]}
    assert len(cases) == 4 and all(c["threshold"] == cal["threshold"] for c in cases.values())
    direct = score_prompts(gate_env["checkpoint"], list(cases), metric="anisotropy", n=1)
    assert {p.prompt: p.score for p in direct} == {p: c["score"] for p, c in cases.items()}
    failed = sum(1 for c in cases.values() if c["outcome"] == "failed")
    gate.assert_outcomes(passed=4 - failed, failed=failed)


def test_tiled_l2_is_one_for_identical_images_and_lower_for_different_ones() -> None:
    import numpy as np

    from memtest.detection.detectors.tiled_l2 import TILES, similarity_to_others
    from memtest.errors import ScoringError
    from memtest.evidence.pixel import PixelDescriptor

    rng = np.random.default_rng(0)
    a, b = rng.random((16, 16, 3)).astype(np.float32), rng.random((16, 16, 3)).astype(np.float32)
    shifted = np.roll(a, 3, axis=1)
    d = PixelDescriptor(side=16, tiles=TILES)
    assert similarity_to_others(d, [a, a, a]) == [1.0, 1.0, 1.0]
    va, va2, vb = similarity_to_others(d, [a, a, b])
    s_ab = float(d.similarity([a], [b])[0, 0])
    assert va == va2 == pytest.approx((1.0 + s_ab) / 2) and vb == pytest.approx(s_ab) and vb < va
    assert similarity_to_others(d, [a, shifted])[0] < 1.0
    with pytest.raises(ScoringError, match="got 1"):
        similarity_to_others(d, [a])


def test_anisotropy_cosine_term_against_closed_form_outputs() -> None:
    """cos(o_0, o_c - o_0) per position, averaged: orthogonal guidance 0, guidance along o_0 +1, against it -1; a
    half-and-half latent averages them."""
    import torch

    from memtest.detection.detectors.anisotropy import channel_cosine

    e1 = torch.zeros(1, 4, 2, 2)
    e1[:, 0] = 1.0
    e2 = torch.zeros(1, 4, 2, 2)
    e2[:, 1] = 2.0
    assert channel_cosine(e1 + e2, e1).tolist() == [0.0]  # o_c - o_0 = e2, orthogonal to o_0
    assert channel_cosine(3 * e1, e1).tolist() == pytest.approx([1.0])
    assert channel_cosine(torch.zeros_like(e1), e1).tolist() == pytest.approx([-1.0])
    mixed = e1.clone()
    mixed[..., 0, :] = 3.0 * e1[..., 0, :]  # half the positions along o_0, half against it
    mixed[..., 1, :] = 0.0
    assert channel_cosine(mixed, e1).tolist() == pytest.approx([0.0], abs=1e-7)


@pytest.fixture(scope="module")
def family_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from memtest.models.checkpoint import load_checkpoint
    from memtest.zoo.tiny import save_pipeline
    from memtest.zoo.tiny_flow import build_flux_pipeline
    from memtest.zoo.tiny_pixart import build_pixart_sigma_pipeline

    root = tmp_path_factory.mktemp("families")
    captions = ["a red digit", "aurora poster of 0"] * 3
    return {
        "sd": load_checkpoint("zoo:finetuned", device="cpu"),
        "sdxl": load_checkpoint("zoo:sdxl-base", device="cpu"),
        "sd3": load_checkpoint("zoo:flow-base", device="cpu"),
        "flux": load_checkpoint(save_pipeline(build_flux_pipeline(captions), root / "flux"), device="cpu"),
        "pixart": load_checkpoint(save_pipeline(build_pixart_sigma_pipeline(captions), root / "pixart"), device="cpu"),
    }


@pytest.mark.parametrize("metric", ["tiled_l2", "anisotropy", "attention_entropy", "bright_ending"])
def test_each_new_detector_on_every_family_is_finite_deterministic_and_batch_invariant_or_refused(
    metric: str, family_checkpoints: dict[str, Any]
) -> None:
    """On a tiny checkpoint of each family: the detector's scores are finite, the same when scored again, and a
    prompt's score does not depend on which prompts share its batch; where the detector does not apply, the refusal
    names the metric and why."""
    import math

    from memtest.detection.scoring import Scorer
    from memtest.detection.settings import ScoreSettings
    from memtest.errors import ScoringError

    prompts = ["aurora poster of 0", "a red digit", "a snapshot of a digit"]
    settings = ScoreSettings(metric=metric, n=2, num_inference_steps=10, batch_size=4)
    applies = []
    for family, ckpt in family_checkpoints.items():
        try:
            scorer = Scorer(ckpt, settings)
        except ScoringError as exc:
            assert metric in str(exc) and len(str(exc)) > 60, (family, str(exc))
            continue
        applies.append(family)
        first = [s.values for s in scorer.score(prompts)]
        again = [s.values for s in Scorer(ckpt, settings).score(prompts)]
        alone = Scorer(ckpt, settings).score([prompts[2], prompts[0]])
        assert all(math.isfinite(v) for vals in first for v in vals), family
        assert first == again, family
        assert [alone[1].values, alone[0].values] == [first[0], first[2]], family
    expected = {
        "tiled_l2": {"sd", "sdxl", "sd3", "flux", "pixart"},
        "anisotropy": {"sd", "sdxl", "pixart"},
        "attention_entropy": {"sd"},
        "bright_ending": {"sd"},
    }[metric]
    assert set(applies) == expected
