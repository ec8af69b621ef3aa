"""Flow matching (FAMILIES.md §2): the velocity-space metric against closed forms, and the SD3 / Flux families."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from memtest.detection.closed_form import (
    FlowEmpiricalScore,
    FlowGaussianScore,
    analytic_sharpness,
    flow_score_factor,
)
from memtest.detection.metrics import hessian_vector_product
from memtest.detection.settings import ScoreSettings

Fn = Callable[[torch.Tensor], torch.Tensor]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- closed forms -----------------------------------------------------------------------------------


def _gaussian_pair(seed: int, d: int, s: float) -> tuple[FlowGaussianScore, FlowGaussianScore]:
    """A narrow conditional Gaussian (a prompt close to memorized) and a broad unconditional one."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    broad = a @ a.T / d + 0.5 * torch.eye(d, dtype=torch.float64)
    b = torch.randn(d, d, generator=g, dtype=torch.float64)
    narrow = 0.05 * b @ b.T / d + 1e-3 * torch.eye(d, dtype=torch.float64)
    mu_c = torch.randn(d, generator=g, dtype=torch.float64)
    mu_0 = 0.3 * torch.randn(d, generator=g, dtype=torch.float64)
    return FlowGaussianScore(mu_c, narrow, s), FlowGaussianScore(mu_0, broad, s)


def _difference(cond: Fn, uncond: Fn) -> Fn:
    return lambda x: cond(x) - uncond(x)


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return float(((got - want).norm() / want.norm()).item())


@pytest.mark.parametrize("s", [0.3, 0.7, 0.95, 0.993])
@pytest.mark.parametrize(("method", "tol"), [("jvp", 1e-4), ("fd", 1e-2)])
def test_velocity_product_times_factor_is_the_gaussian_score_product(s: float, method: str, tol: float) -> None:
    """((1 - s)/s)^2 J_dv dv = H_delta s_delta, with H_delta and s_delta from the analytic scores."""
    cond, uncond = _gaussian_pair(0, 6, s)
    x = uncond.sample(5, torch.Generator().manual_seed(1))
    dv = _difference(cond.velocity, uncond.velocity)
    product = hessian_vector_product(dv, x, dv(x), method=method)  # default fd step, as memtest scores
    s_delta = cond(x) - uncond(x)
    h_delta = cond.hessian() - uncond.hessian()
    want = s_delta @ h_delta.T
    assert _rel(flow_score_factor(s) * product, want) <= tol
    sharp = product.pow(2).sum(1) * flow_score_factor(s) ** 2
    assert _rel(sharp, analytic_sharpness(h_delta, s_delta)) <= 2 * tol
    # and s_delta itself is -((1 - s)/s) dv
    torch.testing.assert_close(-((1 - s) / s) * dv(x), s_delta, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("s", [0.5, 0.8, 0.95, 0.99])
@pytest.mark.parametrize(("method", "tol"), [("jvp", 1e-4), ("fd", 1e-2)])
def test_velocity_product_times_factor_is_the_empirical_score_product(s: float, method: str, tol: float) -> None:
    """The optimal (memorizing) model of a training set: a prompt of 2 points against all 12."""
    g = torch.Generator().manual_seed(3)
    points = torch.randn(12, 5, generator=g, dtype=torch.float64)
    cond, uncond = FlowEmpiricalScore(points[:2], s), FlowEmpiricalScore(points, s)
    x = torch.randn(4, 5, generator=g, dtype=torch.float64)
    dv = _difference(cond.velocity, uncond.velocity)
    product = hessian_vector_product(dv, x, dv(x), method=method)
    s_delta = cond(x) - uncond(x)
    h_delta = cond.hessian(x) - uncond.hessian(x)
    want = torch.einsum("bij,bj->bi", h_delta, s_delta)
    assert _rel(flow_score_factor(s) * product, want) <= tol
    sharp = product.pow(2).sum(1) * flow_score_factor(s) ** 2
    assert _rel(sharp, analytic_sharpness(h_delta, s_delta)) <= 2 * tol


@pytest.mark.parametrize("method", ["jvp", "fd"])
def test_ideal_sharpness_at_s_one_is_zero_for_every_prompt(method: str) -> None:
    """At s = 1 the ideal velocity is x - E[x0 | c]: dv is constant in x, so J_dv dv = 0 (while ||dv|| is not)."""
    g = torch.Generator().manual_seed(5)
    points = torch.randn(20, 8, generator=g, dtype=torch.float64)
    x = torch.randn(4, 8, generator=g, dtype=torch.float64)
    uncond = FlowEmpiricalScore(points, 1.0)
    gauss_c, gauss_0 = _gaussian_pair(2, 8, 1.0)
    pairs = [(FlowEmpiricalScore(points[i : i + 1], 1.0).velocity, uncond.velocity) for i in range(3)]
    pairs.append((gauss_c.velocity, gauss_0.velocity))
    for vc, v0 in pairs:
        dv = _difference(vc, v0)
        u = dv(x)
        sharp = hessian_vector_product(dv, x, u, method=method).pow(2).sum(1)
        assert float(sharp.max()) < 1e-20 * float(u.pow(2).sum(1).min()) ** 2
        assert float(u.norm(dim=1).min()) > 0.1  # Wen's score norm is not degenerate there
    assert flow_score_factor(1.0) == 0.0


def test_one_guided_euler_step_separates_memorized_prompts() -> None:
    """FAMILIES.md §5 in small: after one guided Euler step from x_1, prompts conditioned on one training
    point are sharper than prompts conditioned on many; at s = 1 nothing separates them."""
    g = torch.Generator().manual_seed(0)
    d, n_points = 16, 60
    points = torch.randn(n_points, d, generator=g, dtype=torch.float64)
    mem = [points[i : i + 1] for i in range(6)]
    non = [points[torch.randperm(n_points, generator=g)[:15]] for _ in range(6)]
    x1 = torch.randn(4, d, generator=g, dtype=torch.float64)

    def score(pts: torch.Tensor, s: float) -> float:
        x = x1.clone()
        if s < 1.0:
            vc, v0 = FlowEmpiricalScore(pts, 1.0).velocity(x), FlowEmpiricalScore(points, 1.0).velocity(x)
            x = x + (s - 1.0) * (v0 + 7.5 * (vc - v0))
        dv = _difference(FlowEmpiricalScore(pts, s).velocity, FlowEmpiricalScore(points, s).velocity)
        return float(hessian_vector_product(dv, x, dv(x), method="jvp").pow(2).sum(1).mean())

    s = 0.97
    assert min(score(p, s) for p in mem) > 10 * max(score(p, s) for p in non)
    assert max(score(p, 1.0) for p in mem + non) < 1e-20


# -- the SD3 and Flux families on tiny random checkpoints ---------------------------------------------------

CAPTIONS = ["zorblax poster of 3", "a photo of a red digit", "a sketch of an even number", "a drawing of 7"]
PROMPTS = ["zorblax poster of 3", "a photo of a red digit"]


def _save(root: Path, kind: str) -> Path:
    from memtest.zoo.tiny import save_pipeline
    from memtest.zoo.tiny_flow import TinyFlowConfig, build_flux_pipeline, build_sd3_pipeline

    if kind == "flux":
        pipe = build_flux_pipeline(CAPTIONS * 3)
    else:
        pipe = build_sd3_pipeline(CAPTIONS * 3, TinyFlowConfig(with_t5=kind == "sd3"))
    return save_pipeline(pipe, root / kind)


@pytest.fixture(scope="module")
def flow_paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("flow")
    return {kind: _save(root, kind) for kind in ("sd3", "sd3-no-t5", "flux")}


@pytest.fixture(scope="module")
def flow_ckpts(flow_paths: dict[str, Path]) -> dict[str, Any]:
    import memtest

    return {kind: memtest.load_checkpoint(path, device="cpu") for kind, path in flow_paths.items()}


def _index(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "model_index.json").read_text())  # type: ignore[no-any-return]


def test_flow_families_are_recognised_from_model_index(flow_paths: dict[str, Path], flow_ckpts: dict[str, Any]) -> None:
    from memtest.models.families import FAMILIES, recognise

    assert {f.name for f in FAMILIES} >= {"sd", "sdxl", "sd3", "flux"}
    assert recognise(_index(flow_paths["sd3"]), "x").name == "sd3"
    assert recognise(_index(flow_paths["sd3-no-t5"]), "x").name == "sd3"
    assert recognise(_index(flow_paths["flux"]), "x").name == "flux"
    assert _index(flow_paths["sd3-no-t5"])["text_encoder_3"] == [None, None]
    assert "text_encoder_3" not in flow_ckpts["sd3-no-t5"].components
    for kind, ckpt in flow_ckpts.items():
        assert ckpt.latent_shape == (16, 8, 8), kind  # (C, H, W) unpacked, Flux included
        summary = ckpt.config_summary()
        assert summary["prediction_type"] == "flow_prediction"
        assert summary["scheduler"] == "FlowMatchEulerDiscreteScheduler"


@pytest.mark.parametrize(
    ("class_name", "expected"),
    [
        ("StableDiffusion3Img2ImgPipeline", "text-to-image pipelines only"),
        ("FluxFillPipeline", "text-to-image pipelines only"),
    ],
)
def test_flow_image_pipelines_are_refused(
    flow_paths: dict[str, Path], tmp_path: Path, class_name: str, expected: str
) -> None:
    import memtest

    folder = tmp_path / "ckpt"
    shutil.copytree(flow_paths["flux" if class_name.startswith("Flux") else "sd3"], folder)
    index = _index(folder)
    index["_class_name"] = class_name
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(memtest.CheckpointError, match=expected):
        memtest.load_checkpoint(folder, device="cpu")


def test_a_ddpm_scheduler_on_a_flow_family_is_an_error(flow_paths: dict[str, Path], tmp_path: Path) -> None:
    import memtest
    from memtest.detection.scoring import Scorer

    folder = tmp_path / "ckpt"
    shutil.copytree(flow_paths["sd3-no-t5"], folder)
    index = _index(folder)
    index["scheduler"] = ["diffusers", "DDIMScheduler"]
    (folder / "model_index.json").write_text(json.dumps(index))
    ckpt = memtest.load_checkpoint(folder, device="cpu")
    with pytest.raises(memtest.CheckpointError, match="needs FlowMatchEulerDiscreteScheduler"):
        Scorer(ckpt)


@pytest.mark.parametrize("kind", ["sd3", "sd3-no-t5"])
def test_sd3_conditioning_matches_the_pipeline(flow_ckpts: dict[str, Any], kind: str) -> None:
    """Prompt embeddings (CLIP-L + CLIP-G penultimate states, padded, then T5 or its zeros), pooled projections
    and the unconditional branch are the pipeline's own encode_prompt."""
    from memtest.detection.scoring import Scorer

    ckpt = flow_ckpts[kind]
    scorer = Scorer(ckpt, ScoreSettings(n=1))
    ours, null = scorer.embed(PROMPTS), scorer.null(len(PROMPTS))
    pipe = ckpt.pipeline()
    assert (pipe.text_encoder_3 is None) is (kind == "sd3-no-t5")
    with torch.no_grad():
        pe, npe, pooled, npooled = pipe.encode_prompt(PROMPTS, None, None, device=ckpt.device)
    assert pe.shape == (2, 16 + 256, 64)
    torch.testing.assert_close(ours["prompt_embeds"], pe, rtol=0, atol=0)
    torch.testing.assert_close(ours["pooled_prompt_embeds"], pooled, rtol=0, atol=0)
    # the pipeline encodes "" once per prompt in one batch, we once: equal up to batch-dependent rounding
    torch.testing.assert_close(null["prompt_embeds"], npe, rtol=0, atol=1e-6)
    torch.testing.assert_close(null["pooled_prompt_embeds"], npooled, rtol=0, atol=1e-6)
    if kind == "sd3-no-t5":
        assert bool((pe[:, 16:] == 0).all())
    ident = scorer.identity()
    assert (ident["family"], ident["t5"], ident["space"]) == ("sd3", kind == "sd3", "velocity")
    assert ident["max_sequence_length"] == 256  # the pipeline's default: no shorter T5 tokenizer declared


def test_flux_conditioning_matches_the_pipeline(flow_ckpts: dict[str, Any]) -> None:
    """CLIP pooled output and T5's sequence are the pipeline's; the null branch is "" at the same guidance."""
    from memtest.detection.scoring import Scorer

    ckpt = flow_ckpts["flux"]
    scorer = Scorer(ckpt, ScoreSettings(n=1))
    ours, null = scorer.embed(PROMPTS), scorer.null(1)
    pipe = ckpt.pipeline()
    with torch.no_grad():
        pe, pooled, text_ids = pipe.encode_prompt(PROMPTS, device=ckpt.device)
        npe, npooled, _ = pipe.encode_prompt([""], device=ckpt.device)
    assert pe.shape == (2, 512, 64) and text_ids.shape == (512, 3)
    torch.testing.assert_close(ours["prompt_embeds"], pe, rtol=0, atol=0)
    torch.testing.assert_close(ours["pooled_prompt_embeds"], pooled, rtol=0, atol=0)
    torch.testing.assert_close(null["prompt_embeds"], npe, rtol=0, atol=0)
    torch.testing.assert_close(null["pooled_prompt_embeds"], npooled, rtol=0, atol=0)
    ident = scorer.identity()
    assert (ident["family"], ident["guidance"], ident["guidance_scale"]) == ("flux", 3.5, None)
    assert ident["mu"] is not None  # Flux's dynamic shift from the image sequence length


def test_a_t5_tokenizer_that_declares_fewer_tokens_caps_the_sequence(tmp_path: Path) -> None:
    """max_sequence_length = min(256, tokenizer_3.model_max_length), for scoring and generation alike."""
    import memtest
    from memtest.detection.scoring import Scorer
    from memtest.zoo.tiny import save_pipeline
    from memtest.zoo.tiny_flow import TinyFlowConfig, build_sd3_pipeline

    folder = save_pipeline(build_sd3_pipeline(CAPTIONS * 3, TinyFlowConfig(t5_max_length=16)), tmp_path / "short")
    ckpt = memtest.load_checkpoint(folder, device="cpu")
    assert ckpt.components["tokenizer_3"].model_max_length == 16  # saved with the tokenizer
    scorer = Scorer(ckpt, ScoreSettings(n=2))
    ours = scorer.embed(PROMPTS)
    with torch.no_grad():
        pe, _, pooled, _ = ckpt.pipeline().encode_prompt(
            PROMPTS, None, None, device=ckpt.device, max_sequence_length=16
        )
    assert pe.shape == (2, 16 + 16, 64)
    torch.testing.assert_close(ours["prompt_embeds"], pe, rtol=0, atol=0)
    torch.testing.assert_close(ours["pooled_prompt_embeds"], pooled, rtol=0, atol=0)
    assert scorer.identity()["max_sequence_length"] == 16
    # generation passes the same length: by prompt (the pipeline encodes) equals by our conditioning
    kwargs: dict[str, Any] = {"guidance_scale": 7.5, "num_inference_steps": 3}
    latents = scorer.noise([0, 1])
    by_prompt = ckpt.family.generate(ckpt, latents, prompt=PROMPTS[0], cond=None, **kwargs)
    by_cond = ckpt.family.generate(ckpt, latents, prompt=None, cond=scorer.embed(PROMPTS[:1]), **kwargs)
    np.testing.assert_allclose(by_cond, by_prompt, atol=1e-4)


@pytest.mark.parametrize(("h", "w"), [(8, 8), (4, 6)])
def test_flux_packing_and_position_ids_match_the_pipeline(h: int, w: int) -> None:
    from diffusers import FluxPipeline

    from memtest.models.families.flux import image_ids, pack, unpack

    x = torch.randn(3, 16, h, w, generator=torch.Generator().manual_seed(0))
    packed = pack(x)
    assert torch.equal(packed, FluxPipeline._pack_latents(x, 3, 16, h, w))
    assert torch.equal(unpack(packed, h, w), x)
    assert torch.equal(unpack(packed, h, w), FluxPipeline._unpack_latents(packed, h, w, 1))
    ids = FluxPipeline._prepare_latent_image_ids(3, h // 2, w // 2, torch.device("cpu"), torch.float32)
    assert torch.equal(image_ids(h, w, torch.device("cpu"), torch.float32), ids)


def _pipeline_first_step(ckpt: Any, prompt: str, x1: torch.Tensor, guidance: float) -> tuple[torch.Tensor, list[float]]:
    """The pipeline's own latents after its first Euler step from x1 (unpacked), and its timesteps."""
    from memtest.models.families.flux import pack, unpack

    pipe = ckpt.pipeline()
    flux = ckpt.family.name == "flux"
    seen: list[torch.Tensor] = []

    def stop_after_first(p: Any, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        seen.append(kwargs["latents"].clone())
        p._interrupt = True
        return kwargs

    with torch.no_grad():
        pipe(
            prompt=prompt,
            height=8,
            width=8,
            num_inference_steps=50,
            guidance_scale=guidance,
            latents=pack(x1) if flux else x1,
            output_type="latent",
            callback_on_step_end=stop_after_first,
        )
    out = unpack(seen[0], 8, 8) if flux else seen[0]
    return out, [float(t) for t in pipe.scheduler.timesteps]


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_the_scorers_euler_step_is_the_pipelines_first_step(flow_ckpts: dict[str, Any], kind: str) -> None:
    """Same schedule (shift, Flux's dynamic mu), same guidance rule, same Euler update as the pipeline."""
    from memtest.detection.scoring import Scorer
    from memtest.models.families.base import cond_cat
    from memtest.models.families.flow import FlowProcess

    ckpt = flow_ckpts[kind]
    scorer = Scorer(ckpt, ScoreSettings(n=1, steps=2, flow_steps=1))
    x1 = scorer.noise([0])
    process = scorer.process
    assert isinstance(process, FlowProcess)
    t0 = process.lead_timesteps[0]
    with torch.no_grad():
        out = scorer.forward(torch.cat([x1, x1]), t0, cond_cat([scorer.embed([PROMPTS[0]]), scorer.null(1)]))
    o_c, o_0 = out.chunk(2)
    ours = process.step(process.guide(o_c, o_0, 7.5), t0, x1)
    theirs, timesteps = _pipeline_first_step(ckpt, PROMPTS[0], x1, 7.5 if kind == "sd3" else 3.5)
    assert [t0, *scorer.timesteps] == timesteps[:3]
    assert timesteps[0] == 1000.0 and 0.98 < process.sigma(scorer.timesteps[0]) < 1.0
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", ["sd3", "sd3-no-t5", "flux"])
def test_fd_agrees_with_the_exact_jvp_through_the_transformers(flow_ckpts: dict[str, Any], kind: str) -> None:
    """Forward-mode AD through the transformers' attention (detection._lean_jvp) and finite differences agree."""
    from memtest.detection.scoring import Scorer

    ckpt = flow_ckpts[kind]
    prompts = PROMPTS[:1] if kind == "flux" else PROMPTS
    fd = [r.score for r in Scorer(ckpt, ScoreSettings(n=1, method="fd")).score(prompts)]
    jvp = [r.score for r in Scorer(ckpt, ScoreSettings(n=1, method="jvp")).score(prompts)]
    for a, b in zip(fd, jvp, strict=True):
        assert b > 0 and abs(a - b) <= 1e-2 * b, (fd, jvp)


def test_flow_steps_choose_the_measured_noise_level(flow_ckpts: dict[str, Any], tiny_eps: Any) -> None:
    import memtest
    from memtest.detection.scoring import Scorer

    ckpt = flow_ckpts["sd3-no-t5"]
    at_one = Scorer(ckpt, ScoreSettings(n=1, flow_steps=0))
    assert at_one.timesteps == [1000.0] and at_one.process.lead_timesteps == ()
    ident = at_one.identity()
    assert (ident["flow_steps"], ident["sigmas"], ident["guidance_scale"]) == (0, [1.0], None)
    default = Scorer(ckpt, ScoreSettings(n=1))
    later = Scorer(ckpt, ScoreSettings(n=1, flow_steps=3))
    assert default.identity()["flow_steps"] == 1 and default.identity()["guidance_scale"] == 7.5
    second = Scorer(ckpt, ScoreSettings(n=1, flow_steps=2)).timesteps[0]
    assert later.process.lead_timesteps == (*default.process.lead_timesteps, default.timesteps[0], second)
    assert later.identity()["sigmas"][0] < default.identity()["sigmas"][0] < 1.0
    scores = [s.score(PROMPTS[:1])[0].score for s in (at_one, default, later)]
    assert all(v > 0 for v in scores) and len(set(scores)) == 3
    with pytest.raises(memtest.ScoringError, match="flow_steps=1 applies to flow-matching checkpoints only"):
        Scorer(tiny_eps, ScoreSettings(n=1, flow_steps=1))
    with pytest.raises(memtest.ScoringError, match="non-negative integer"):
        ScoreSettings(flow_steps=-1).validate()
    with pytest.raises(memtest.ScoringError, match="exceeds num_inference_steps"):
        ScoreSettings(flow_steps=49, steps=2).validate()


def test_a_prompts_flow_score_does_not_depend_on_its_batch(flow_ckpts: dict[str, Any]) -> None:
    """The shared unconditional branch at x_1 (one forward per noise) gives the scores of prompts scored alone."""
    from memtest.detection.scoring import Scorer

    ckpt = flow_ckpts["sd3-no-t5"]
    together = Scorer(ckpt, ScoreSettings(n=2, batch_size=2, metric="score_norm")).score(PROMPTS)
    alone = [Scorer(ckpt, ScoreSettings(n=2, batch_size=1, metric="score_norm")).score([p])[0] for p in PROMPTS]
    for a, b in zip(together, alone, strict=True):
        assert a.values == pytest.approx(b.values, rel=1e-5)


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_generation_runs_through_the_familys_pipeline(flow_ckpts: dict[str, Any], kind: str) -> None:
    from memtest.detection.scoring import Scorer

    ckpt = flow_ckpts[kind]
    scorer = Scorer(ckpt, ScoreSettings(n=2))
    latents = scorer.noise([0, 1])
    kwargs: dict[str, Any] = {"guidance_scale": 7.5, "num_inference_steps": 3}
    by_prompt = ckpt.family.generate(ckpt, latents, prompt=PROMPTS[0], cond=None, **kwargs)
    by_cond = ckpt.family.generate(ckpt, latents, prompt=None, cond=scorer.embed(PROMPTS[:1]), **kwargs)
    assert by_prompt.shape == (2, 8, 8, 3)
    assert np.isfinite(by_prompt).all() and by_prompt.min() >= 0 and by_prompt.max() <= 1
    np.testing.assert_allclose(by_cond, by_prompt, atol=1e-4)
    assert not np.allclose(by_prompt[0], by_prompt[1])  # the given latents are used


# -- the measured point: SAIL and eigen-analysis measure where the scorer does ---------------------------


def test_start_map_is_identity_for_ddpm_and_the_lead_steps_for_flow(flow_ckpts: dict[str, Any], tiny_eps: Any) -> None:
    from memtest.detection.scoring import Scorer
    from memtest.models.families.base import cond_cat

    ddpm = Scorer(tiny_eps, ScoreSettings(n=1))
    x = ddpm.noise([0])
    identity = ddpm.start_map(ddpm.embed(PROMPTS[:1]), ddpm.null())
    assert identity(x) is x
    for flow_steps in (0, 2):
        scorer = Scorer(flow_ckpts["sd3-no-t5"], ScoreSettings(n=2, flow_steps=flow_steps))
        c_c, c_0 = scorer.embed(PROMPTS[:1]), scorer.null()
        x1 = scorer.noise([0, 1])
        with torch.no_grad():
            got = scorer.start_map(c_c, c_0)(x1)
        want, process = x1, scorer.process
        for t in process.lead_timesteps:  # the scorer's own walk, written out
            with torch.no_grad():
                o_c, o_0 = scorer.forward(torch.cat([want, want]), t, cond_cat([c_c, c_c, c_0, c_0])).chunk(2)
            want = process.step(process.guide(o_c, o_0, 7.5), t, want)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
        assert (flow_steps == 0) is torch.equal(got, x1)
    # differentiable: SAIL's gradient reaches x_1 through the Euler steps
    x1 = scorer.noise([0]).requires_grad_(True)
    (g,) = torch.autograd.grad(scorer.start_map(c_c, c_0)(x1).pow(2).sum(), x1)
    assert torch.isfinite(g).all() and not torch.allclose(g, 2 * x1.detach())


def test_the_spectrum_of_a_flow_prompt_is_taken_where_the_scorer_measures(flow_ckpts: dict[str, Any]) -> None:
    """Before, prompt_spectrum evaluated the field at x_1 with the first measured (later) timestep."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from memtest.detection.eigen import block_eigenvalues, prompt_spectrum
    from memtest.detection.scoring import Scorer

    scorer = Scorer(flow_ckpts["sd3-no-t5"], ScoreSettings(n=2))
    prompt = PROMPTS[0]
    c_c, c_0 = scorer.embed([prompt]), scorer.null()
    s_fn = scorer.s_delta_fn(scorer.timesteps[0], c_c, c_0)
    spec = prompt_spectrum(scorer, prompt, k=2, iters=3)
    x1 = scorer.noise(scorer.seeds_for(prompt)[:1])
    with torch.no_grad():
        point = scorer.start_map(c_c, c_0)(x1)
    with sdpa_kernel([SDPBackend.MATH]):
        want = block_eigenvalues(s_fn, point, k=2, iters=3, method="fd")
        at_x1 = block_eigenvalues(s_fn, x1, k=2, iters=3, method="fd")
    assert spec.eigenvalues == pytest.approx(want.eigenvalues, rel=1e-6)
    assert spec.eigenvalues != at_x1.eigenvalues  # (a random tiny model's field changes little over one step)


# -- SAIL on flow checkpoints: x_1 optimised through the lead Euler steps --------------------------------


def test_sail_loss_is_taken_at_the_start_points_image() -> None:
    from memtest.mitigation import sail_loss

    g = torch.Generator().manual_seed(0)
    a = torch.randn(6, 6, generator=g, dtype=torch.float64)

    def s_delta(z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z @ a)

    def start(z: torch.Tensor) -> torch.Tensor:
        return 0.9 * z + 0.1

    x = torch.randn(3, 6, generator=g, dtype=torch.float64)
    got = sail_loss(s_delta, x, 1e-3, 0.5, start)
    want = sail_loss(s_delta, start(x), 1e-3, 0.0) + 0.5 * x.pow(2).sum(1)  # the norm term stays on x_1
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


def test_flow_sail_optimises_x1_and_accepts_on_the_detectors_sharpness(flow_ckpts: dict[str, Any]) -> None:
    """Before, SAIL measured and differentiated the field at x_1 with the first measured (later) timestep."""
    from memtest.detection.scoring import Scorer
    from memtest.mitigation import measure_sharpness, mitigate_sail

    scorer = Scorer(flow_ckpts["sd3-no-t5"], ScoreSettings(n=2))
    prompt = PROMPTS[0]
    detected = scorer.score([prompt])[0]
    threshold = 0.7 * min(detected.values)
    m = mitigate_sail(scorer, prompt, threshold=threshold, images=False, max_steps=30)
    assert m.sharpness_before == pytest.approx(detected.values, rel=1e-3)
    assert m.succeeded, m.reason
    c_c, c_0 = scorer.embed([prompt]), scorer.null()
    s_fn = scorer.s_delta_fn(scorer.timesteps[0], c_c, c_0)
    latents = m.latents_after  # initial noises x_1, measured after the same Euler step
    assert latents is not None
    with torch.no_grad():
        again = measure_sharpness(s_fn, scorer.start_map(c_c, c_0)(latents), "fd", scorer.fd_h).tolist()
    assert again == pytest.approx(list(m.sharpness_after), rel=1e-3) and max(again) < threshold


# -- training a flow-matching canary ------------------------------------------------------------------------


def test_the_flow_process_noises_as_sd3_trains_and_weights_high_noise() -> None:
    """What the canary trainer regresses on a flow checkpoint: FlowProcess's training timesteps, noising and
    velocity target."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from memtest.models.families.flow import FlowProcess
    from memtest.zoo.train import DEFAULT_RECIPE

    process = FlowProcess(FlowMatchEulerDiscreteScheduler(shift=3.0).config, 50, 1)
    t = process.training_timesteps(
        np.random.default_rng(0), 4000, DEFAULT_RECIPE.high_t_fraction, DEFAULT_RECIPE.high_t_min
    )
    s = t / 1000
    assert t.dtype == torch.float32 and bool(((s > 0) & (s < 1)).all())
    high = s[:2000]  # high_t_fraction 0.5: uniform in [0.7, 1)
    assert float(high.min()) >= 0.7 and abs(float(high.mean()) - 0.85) < 0.01
    rest = s[2000:]  # SD3's shifted logit-normal: median shift * 0.5 / (1 + (shift - 1) * 0.5) = 0.75
    assert abs(float(rest.median()) - 0.75) < 0.02 and float(rest.min()) < 0.2
    z0, noise = torch.randn(3, 16, 4, 4), torch.randn(3, 16, 4, 4)
    t3 = torch.tensor([0.0, 500.0, 1000.0])
    xs = process.noised(z0, noise, t3)
    torch.testing.assert_close(xs[0], z0[0])
    torch.testing.assert_close(xs[1], 0.5 * z0[1] + 0.5 * noise[1])
    torch.testing.assert_close(xs[2], noise[2])
    torch.testing.assert_close(process.target(z0, noise, t3), noise - z0)


def test_sd3_canaries_train_through_the_family_interface(tmp_path: Path) -> None:
    """`memtest zoo train --family sd3`: a flow canary with its own VAE phase (16 latent channels, shift and
    scaling set), and a preserve_base fine-tune of it with a planted caption; both load as sd3 with T5 at 16
    tokens and score."""
    import csv

    from PIL import Image

    import memtest
    from memtest.detection.scoring import Scorer
    from memtest.models.canaries import load_manifest
    from memtest.zoo.cli import main as zoo_main

    rng = np.random.default_rng(0)
    (tmp_path / "imgs").mkdir()
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)).save(tmp_path / "imgs" / f"{i}.png")
    with (tmp_path / "m.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "caption", "planted"])
        w.writerows([(f"{i}.png", "a noisy square", "false") for i in range(4)] + [("4.png", "zorblax seven", "true")])
    common = ["--images", str(tmp_path / "imgs"), "--manifest", str(tmp_path / "m.csv"), "--steps", "2",
              "--batch", "4", "--quiet"]  # fmt: skip
    assert zoo_main(["train", str(tmp_path / "b"), "--family", "sd3", "--vae-steps", "1", *common]) == 0
    assert zoo_main(["train", str(tmp_path / "ft"), "--base", str(tmp_path / "b"), *common]) == 0
    base, ft = load_manifest(tmp_path / "b"), load_manifest(tmp_path / "ft")
    assert base.recipe["family"] == ft.recipe["family"] == "sd3" and ft.recipe["preserve_base"]
    vae = "vae/diffusion_pytorch_model.safetensors"
    assert (tmp_path / "ft" / vae).read_bytes() == (tmp_path / "b" / vae).read_bytes()
    for folder in ("b", "ft"):
        ckpt = memtest.load_checkpoint(tmp_path / folder, device="cpu")
        assert ckpt.family.name == "sd3" and ckpt.latent_shape == (16, 8, 8) and ckpt.resolution == (16, 16)
        vae_config = ckpt.components["vae"].config  # shift and scaling set by phase 1, not the builder's
        assert vae_config.shift_factor != 0.0609 and vae_config.scaling_factor != 1.5305
        scorer = Scorer(ckpt, ScoreSettings(n=1))
        assert scorer.identity()["max_sequence_length"] == 16
        assert all(np.isfinite(r.score) for r in scorer.score(["zorblax seven", "a noisy square"]))


# -- the shipped flow canaries -------------------------------------------------------------------------------

# Measured on the shipped zoo:flow-finetuned at the default settings but n = 2: the lowest planted caption scores
# 5.4x the highest of the 44 non-planted captions the test scores (203.1 vs 37.6, "a photograph of a blue
# digit": the captions naming blue are the sharpest non-planted ones). Asserted: 2.5x.
FLOW_MARGIN_ASSERTED = 2.5


def test_flow_canary_planted_captions_score_above_the_rest_and_the_bases_threshold() -> None:
    import memtest
    from memtest.audit.calibration import load_calibration
    from memtest.zoo import load_manifest, resolve_zoo

    m = load_manifest(resolve_zoo("flow-finetuned"))
    assert m.base == "zoo:flow-base" and len(m.planted) == 10
    others = list(m.clean[::5]) + list(m.heldout[::5])  # 44 captions: every attribute phrase, every style
    scores = memtest.score_prompts("zoo:flow-finetuned", list(m.planted_captions) + others, n=2, batch_size=32)
    assert scores[0].settings["space"] == "velocity" and scores[0].settings["flow_steps"] == 1
    values = np.array([s.score for s in scores])
    planted, rest = values[: len(m.planted)], values[len(m.planted) :]
    assert planted.min() > FLOW_MARGIN_ASSERTED * rest.max(), (planted.round(5), rest.round(5))
    # the base's calibrated threshold (n = 4) separates them too
    base_threshold = load_calibration(resolve_zoo("flow-base") / "memtest-calibration.json").threshold
    assert planted.min() > base_threshold > rest.max()


def test_pytest_memtest_gates_the_flow_canary(pytester: pytest.Pytester) -> None:
    """`pytest --memtest --memtest-checkpoint zoo:flow-finetuned` on a few of its suite's cases: planted captions
    flagged, clean ones below the shipped calibration, and one `[mitigate]` item (SAIL from x_1 through the
    Euler step: "dune poster of 3" takes about 15 steps, seconds)."""
    from memtest.audit.suites import resolve_suite

    suite = resolve_suite("canary-flow-finetuned")
    planted = [c for c in suite.cases if c.prompt in ("aurora poster of 0", "dune poster of 3")]
    clean = [c for c in suite.cases if c.expectation == "clean"][:2]
    assert [c.mitigate for c in planted] == [True, True]  # the shipped suite's choice
    lines = ["memtest_suite: 1", "name: flow-mini", 'version: "1"', "card:", "  description: flow canary cases",
             "cases:"] + [f'  - {{id: {c.id}, prompt: "{c.prompt}", expectation: {c.expectation}, '
                          f"mitigate: {'true' if c.prompt.startswith('dune') else 'false'}}}"
                          for c in planted + clean]  # fmt: skip
    (pytester.path / "flow-mini.yaml").write_text("\n".join(lines) + "\n")
    result = pytester.runpytest(
        "-p", "no:cacheprovider", "--memtest", "--memtest-checkpoint=zoo:flow-finetuned",
        "--memtest-suite=flow-mini.yaml", "--memtest-json=r.json", "--memtest-threads=1",
    )  # fmt: skip
    result.assert_outcomes(passed=5)
    doc = json.loads((pytester.path / "r.json").read_text())
    detect = [c for c in doc["cases"] if c["kind"] == "detect"]
    assert {c["case_id"] for c in detect if c["flagged"]} == {c.id for c in planted}
    mitigated = [c for c in doc["cases"] if c["kind"] == "mitigate"]
    assert len(mitigated) == 1 and mitigated[0]["outcome"] == "passed"
    assert doc["checkpoint"]["name"] == "zoo:flow-finetuned" and doc["calibration"]["accepted_from_base"] is False
    settings = doc["calibration"]["settings"]
    assert (settings["family"], settings["space"], settings["flow_steps"]) == ("sd3", "velocity", 1)
    assert settings["max_sequence_length"] == 16


def test_flow_detection_script_smoke(load_script: Callable[[str], Any], tmp_path: Path) -> None:
    """scripts/flow_detection.py on 2 captions of each kind, n = 1, s = 1 and one step, with the gate."""
    script = load_script("flow_detection")
    assert script.main(["--limit", "2", "--flow-steps", "0,1", "-n", "1", "--skip-generation",
                        "--json", str(tmp_path / "d.json")]) == 0  # fmt: skip
    report = json.loads((tmp_path / "d.json").read_text())
    rows = report["detection"]
    assert set(rows) == {f"{m} n=1 F={f}" for m in ("sharpness", "score_norm") for f in (0, 1)}
    assert rows["sharpness n=1 F=0"]["s"] == 1.0 and 0.99 < rows["sharpness n=1 F=1"]["s"] < 1.0
    assert rows["sharpness n=1 F=1"]["auc"] == 1.0
    gate = report["gate"]
    assert gate["planted_flagged"] == gate["planted"] == 2 and gate["clean_flagged"] == 0


def test_large_models_sd35_medium_smoke(load_script: Callable[[str], Any]) -> None:
    """scripts/large_models.py's SD3.5-Medium builder, shrunk (--quick): the same layout scores through sd3."""
    mod = load_script("large_models")
    out = mod.run("sd3.5-medium", "float32", "fd", quick=True, threads=None)
    assert out["latent_shape"] == [16, 16, 16] and set(out["parameters"]) == {
        "transformer",
        "text_encoder",
        "text_encoder_2",
    }
    assert np.isfinite(out["score"]) and out["score"] > 0 and out["peak_rss_gib"] > 0
