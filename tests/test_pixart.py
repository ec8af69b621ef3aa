"""The PixArt-Sigma family on a tiny random PixArtSigmaPipeline: recognition, conditioning and the first-step
transformer call against the pipeline's own, exact JVPs through masked cross-attention, scoring, generation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from memtest.detection.settings import ScoreSettings

CAPTIONS = ["zorblax poster of 3", "a photo of a red digit", "a sketch of an even number", "a drawing of 7"]
# Upper case and surrounding spaces: the pipeline lower-cases and strips before tokenizing.
PROMPTS = ["Zorblax poster of 3 ", "a photo of a red digit"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pixart_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from memtest.zoo.tiny import save_pipeline
    from memtest.zoo.tiny_pixart import build_pixart_sigma_pipeline

    return save_pipeline(build_pixart_sigma_pipeline(CAPTIONS * 3), tmp_path_factory.mktemp("pixart") / "sigma")


@pytest.fixture(scope="module")
def pixart(pixart_path: Path) -> Any:
    import memtest

    return memtest.load_checkpoint(pixart_path, device="cpu")


def _index(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "model_index.json").read_text())  # type: ignore[no-any-return]


def test_pixart_sigma_is_recognised_from_the_saved_folder(pixart_path: Path, pixart: Any) -> None:
    from memtest.models.families import FAMILIES, recognise, supported_pipelines

    index = _index(pixart_path)
    assert index["_class_name"] == "PixArtSigmaPipeline"
    assert index["transformer"] == ["diffusers", "PixArtTransformer2DModel"]
    assert recognise(index, "x").name == "pixart-sigma"
    assert "pixart-sigma" in {f.name for f in FAMILIES} and "PixArtSigmaPipeline" in supported_pipelines()
    assert (pixart_path / "transformer" / "diffusion_pytorch_model.safetensors").is_file()
    assert pixart.latent_shape == (4, 8, 8) and pixart.resolution == (16, 16)
    summary = pixart.config_summary()
    assert (summary["family"], summary["prediction_type"], summary["scheduler"]) == (
        "pixart-sigma",
        "epsilon",
        "DPMSolverMultistepScheduler",
    )
    assert summary["learned_sigma"] is True and summary["max_sequence_length"] == 300


def test_pixart_alpha_is_refused_with_its_class(pixart_path: Path, tmp_path: Path) -> None:
    """PixArt-Alpha is not the same code path (120 tokens, resolution / aspect-ratio micro-conditions)."""
    import memtest

    folder = tmp_path / "alpha"
    shutil.copytree(pixart_path, folder)
    index = _index(folder)
    index["_class_name"] = "PixArtAlphaPipeline"
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(memtest.CheckpointError, match=r"is a PixArtAlphaPipeline: .*PixArt-Sigma"):
        memtest.load_checkpoint(folder, device="cpu")


def test_a_transformer_of_another_class_is_named(pixart_path: Path, tmp_path: Path) -> None:
    import memtest

    folder = tmp_path / "wrong"
    shutil.copytree(pixart_path, folder)
    index = _index(folder)
    index["transformer"] = ["diffusers", "SD3Transformer2DModel"]
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(memtest.CheckpointError, match=r"diffusers\.SD3Transformer2DModel; memtest needs one of Pix"):
        memtest.load_checkpoint(folder, device="cpu")


def test_conditioning_matches_the_pipelines_encode_prompt(pixart: Any) -> None:
    """Prompt embeddings and masks, and the unconditional branch ("" with its mask), are encode_prompt's."""
    from memtest.detection.scoring import Scorer

    scorer = Scorer(pixart, ScoreSettings(n=1))
    ours, null = scorer.embed(PROMPTS), scorer.null(len(PROMPTS))
    pipe = pixart.pipeline()
    with torch.no_grad():
        pe, pm, npe, npm = pipe.encode_prompt(PROMPTS, do_classifier_free_guidance=True, device=pixart.device)
    assert pe.shape == (2, 300, 64) and pm.shape == (2, 300)
    assert set(ours) == {"prompt_embeds", "prompt_attention_mask"}
    torch.testing.assert_close(ours["prompt_embeds"], pe, rtol=0, atol=0)
    assert torch.equal(ours["prompt_attention_mask"], pm)
    # the pipeline encodes "" once per prompt in one batch, we once: equal up to batch-dependent rounding
    torch.testing.assert_close(null["prompt_embeds"], npe, rtol=0, atol=1e-6)
    assert torch.equal(null["prompt_attention_mask"], npm)
    assert int(npm.sum(1).max()) == 1 and int(pm.sum(1).min()) > 1  # "" is just </s>; the mask is not all ones
    ident = scorer.identity()
    assert (ident["family"], ident["max_sequence_length"], ident["scheduler"]) == ("pixart-sigma", 300, "DDIMScheduler")


def test_the_first_step_is_the_pipelines_transformer_call(pixart: Any) -> None:
    """The scorer's two branches at x_T equal the transformer's output inside the pipeline's first step (first
    half of the channels: the learned variance is dropped), run with the scorer's DDIM schedule."""
    from diffusers import DDIMScheduler

    from memtest.detection.scoring import Scorer

    scorer = Scorer(pixart, ScoreSettings(n=2))
    x = scorer.noise([0, 1])
    t = scorer.timesteps[0]
    o_c, o_0 = scorer._outputs(x, t, scorer.embed(PROMPTS[:1] * 2), scorer.null(2)).chunk(2)

    pipe = pixart.pipeline()
    pipe.scheduler = DDIMScheduler.from_config(pixart.scheduler.config)
    seen: list[tuple[Any, torch.Tensor]] = []

    class Stop(Exception):
        pass

    def hook(_module: Any, args: Any, kwargs: dict[str, Any], output: Any) -> None:
        seen.append((kwargs["timestep"], output[0]))
        raise Stop

    handle = pixart.denoiser.register_forward_hook(hook, with_kwargs=True)
    try:
        with pytest.raises(Stop), torch.no_grad():
            pipe(PROMPTS[0], num_inference_steps=50, guidance_scale=4.5, num_images_per_prompt=2, latents=x,
                 use_resolution_binning=False, output_type="latent")  # fmt: skip
    finally:
        handle.remove()
    timestep, raw = seen[0]
    assert raw.shape == (4, 8, 8, 8)  # [uncond x2, cond x2], 2x the latent channels
    assert [int(v) for v in timestep] == [t] * 4
    uncond, cond = raw.chunk(2, dim=1)[0].chunk(2)
    torch.testing.assert_close(o_c, cond, rtol=0, atol=1e-6)
    torch.testing.assert_close(o_0, uncond, rtol=0, atol=1e-6)
    # the mask reaches the transformer: without it the padding tokens are attended to
    c_c = scorer.embed(PROMPTS[:1] * 2)
    unmasked = {**c_c, "prompt_attention_mask": torch.ones_like(c_c["prompt_attention_mask"])}
    with torch.no_grad():
        assert not torch.allclose(scorer.forward(x, t, unmasked), o_c, atol=1e-4)


def test_fd_agrees_with_the_exact_jvp(pixart: Any) -> None:
    """Forward-mode AD through the transformer's masked cross-attention (the math path) and fd agree."""
    from memtest.detection.scoring import Scorer

    fd = [r.score for r in Scorer(pixart, ScoreSettings(n=2, method="fd")).score(PROMPTS)]
    jvp = [r.score for r in Scorer(pixart, ScoreSettings(n=2, method="jvp")).score(PROMPTS)]
    for a, b in zip(fd, jvp, strict=True):
        assert b > 0 and abs(a - b) <= 1e-2 * b, (fd, jvp)


def test_scoring_several_prompts_gives_finite_scores(pixart: Any) -> None:
    import memtest

    prompts = [*CAPTIONS, "an unseen prompt about nothing"]
    for metric in ("sharpness", "score_norm"):
        scores = memtest.score_prompts(pixart, prompts, metric=metric, n=2, batch_size=4)
        assert [s.prompt for s in scores] == prompts
        assert all(np.isfinite(s.score) and s.score > 0 for s in scores)
        assert scores[0].settings["family"] == "pixart-sigma" and scores[0].settings["latent_shape"] == [4, 8, 8]
    assert len({s.score for s in scores}) == len(prompts)


def test_generation_runs_through_the_familys_pipeline(pixart: Any) -> None:
    from memtest.detection.scoring import Scorer
    from memtest.mitigation import generate_images

    scorer = Scorer(pixart, ScoreSettings(n=2))
    x = scorer.noise([0, 1])
    by_prompt = generate_images(pixart, x, prompt=PROMPTS[0], num_inference_steps=3)
    by_cond = generate_images(pixart, x, cond=scorer.embed(PROMPTS[:1]), num_inference_steps=3)
    assert by_prompt.shape == (2, 16, 16, 3)
    assert np.isfinite(by_prompt).all() and by_prompt.min() >= 0 and by_prompt.max() <= 1
    np.testing.assert_allclose(by_cond, by_prompt, atol=1e-5)
    assert not np.allclose(by_prompt[0], by_prompt[1])  # the given latents are used


def test_a_released_folder_declaring_transformer2dmodel_loads_and_scores_the_same(
    pixart_path: Path, pixart: Any, tmp_path: Path
) -> None:
    """PixArt-Sigma as published names its transformer `Transformer2DModel` (diffusers remaps it on load)."""
    import memtest
    from memtest.detection.scoring import Scorer

    folder = tmp_path / "released"
    shutil.copytree(pixart_path, folder)
    index = _index(folder)
    index["transformer"] = ["diffusers", "Transformer2DModel"]
    (folder / "model_index.json").write_text(json.dumps(index))
    config = json.loads((folder / "transformer" / "config.json").read_text())
    config["_class_name"] = "Transformer2DModel"
    (folder / "transformer" / "config.json").write_text(json.dumps(config))
    released = memtest.load_checkpoint(folder, device="cpu")
    assert type(released.components["transformer"]).__name__ == "PixArtTransformer2DModel"
    settings = ScoreSettings(n=1)
    ours = [r.score for r in Scorer(released, settings).score(PROMPTS)]
    assert ours == [r.score for r in Scorer(pixart, settings).score(PROMPTS)]
