"""The family layer: recognition, the SD path's scores unchanged across the refactor, SDXL conditioning."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

DATA = Path(__file__).parent / "data"


def _references() -> list[dict[str, Any]]:
    """The recorded scores, one record per kernel summation order: float reductions differ between kinds of CPU
    (the same torch build sums in one order on the first machine (AVX2) and on an AMD EPYC with AVX-512, in another
    on an Intel Xeon with AVX-512), so sd_reference_scores.<machine>.json, recorded with the same pre-family code
    on that machine, replaces the values of the first record; identities are the same in all."""
    base: dict[str, Any] = json.loads((DATA / "sd_reference_scores.json").read_text())
    records = [base]
    for path in sorted(DATA.glob("sd_reference_scores.*.json")):
        other = {key: dict(entry) for key, entry in base.items()}
        for key, entry in json.loads(path.read_text()).items():
            other[key]["values"] = entry["values"]
        records.append(other)
    return records


@pytest.mark.parametrize("checkpoint", ["zoo:finetuned", "zoo:base"])
def test_sd_scores_bit_identical_to_before_the_family_layer(checkpoint: str) -> None:
    """Scores recorded with the pre-family code (commit a8a2efb) stay bit for bit, so the shipped
    calibrations (which store identity and thresholds) stay valid: every score equals the record of one kernel
    order, the same record for all of them."""
    import torch

    import memtest
    from memtest.detection.scoring import Scorer, ScoreSettings

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the reference was recorded on one thread
    try:
        ckpt = memtest.load_checkpoint(checkpoint, device="cpu")
        records = _references()
        got: dict[str, dict[str, list[str]]] = {}
        for key, ref in records[0].items():
            name, metric, method, steps = key.split("|")
            if name != checkpoint:
                continue
            scorer = Scorer(ckpt, ScoreSettings(metric=metric, method=method, n=2, steps=int(steps), batch_size=4))
            got[key] = {r.prompt: [float(v).hex() for v in r.values] for r in scorer.score(list(ref["values"]))}
            assert scorer.identity() == ref["identity"], key
        assert len(got) == 5
        matching = [r for r in records if all(r[key]["values"] == values for key, values in got.items())]
        assert matching, (
            "equal to no record of any kind of CPU: a change moved the scores, or this CPU sums in an order "
            "not recorded yet (docs/CONVENTIONS.md says how to record one)",
            got,
        )
    finally:
        torch.set_num_threads(threads)


# -- recognition ------------------------------------------------------------------------------------


def _index(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "model_index.json").read_text())  # type: ignore[no-any-return]


def test_recognises_each_layout_from_model_index(tiny_eps_path: Path, tiny_sdxl_path: Path) -> None:
    from memtest.models.families import recognise

    assert recognise(_index(tiny_eps_path), "x").name == "sd"
    assert recognise(_index(tiny_sdxl_path), "x").name == "sdxl"


@pytest.mark.parametrize(
    ("class_name", "expected"),
    [
        ("StableDiffusionXLImg2ImgPipeline", "refiner, img2img and inpainting pipelines start from an image"),
        ("StableDiffusionImg2ImgPipeline", "text-to-image pipelines only"),
        ("KandinskyPipeline", "declares a KandinskyPipeline in model_index.json; memtest audits these pipelines"),
        (None, "declares no _class_name"),
    ],
)
def test_unsupported_pipelines_fail_with_the_class_found_and_the_families_supported(
    tiny_eps_path: Path, tmp_path: Path, class_name: str | None, expected: str
) -> None:
    import shutil

    import memtest

    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_eps_path, folder)
    index = _index(folder)
    if class_name is None:
        del index["_class_name"]
    else:
        index["_class_name"] = class_name
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(memtest.CheckpointError) as info:
        memtest.load_checkpoint(folder, device="cpu")
    assert expected in str(info.value)
    if class_name in ("KandinskyPipeline", None):
        assert "StableDiffusionPipeline, StableDiffusionXLPipeline" in str(info.value)


def test_sdxl_missing_second_encoder_is_named(tiny_sdxl_path: Path, tmp_path: Path) -> None:
    import shutil

    import memtest

    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_sdxl_path, folder)
    index = _index(folder)
    del index["text_encoder_2"]
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(memtest.CheckpointError, match="declares no 'text_encoder_2' component; a Stable Diffusion XL"):
        memtest.load_checkpoint(folder, device="cpu")


# -- SDXL conditioning ------------------------------------------------------------------------------


@pytest.mark.parametrize("force_zeros", [True, False])
def test_sdxl_conditioning_matches_the_pipeline(tiny_sdxl_path: Path, tmp_path: Path, force_zeros: bool) -> None:
    """Prompt embeddings, pooled embeddings, the unconditional branch and add_time_ids are the pipeline's own."""
    import shutil

    import torch

    import memtest
    from memtest.detection.scoring import Scorer

    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_sdxl_path, folder)
    index = _index(folder)
    index["force_zeros_for_empty_prompt"] = force_zeros
    (folder / "model_index.json").write_text(json.dumps(index))
    ckpt = memtest.load_checkpoint(folder, device="cpu")
    scorer = Scorer(ckpt)
    prompts = ["zorblax poster of 3", "a photo of a red digit"]
    ours, null = scorer.embed(prompts), scorer.null(len(prompts))
    pipe = ckpt.pipeline()
    assert pipe.config.force_zeros_for_empty_prompt is force_zeros
    with torch.no_grad():
        pe, npe, pooled, npooled = pipe.encode_prompt(
            prompts, device=ckpt.device, num_images_per_prompt=1, do_classifier_free_guidance=True
        )
    torch.testing.assert_close(ours["prompt_embeds"], pe, rtol=0, atol=0)
    torch.testing.assert_close(ours["pooled_prompt_embeds"], pooled, rtol=0, atol=0)
    # the pipeline encodes "" once per prompt in one batch, we once: equal up to batch-dependent rounding
    torch.testing.assert_close(null["prompt_embeds"], npe, rtol=0, atol=1e-6)
    torch.testing.assert_close(null["pooled_prompt_embeds"], npooled, rtol=0, atol=1e-6)
    assert bool((null["prompt_embeds"] == 0).all()) is force_zeros
    h, w = ckpt.resolution
    proj = ckpt.components["text_encoder_2"].config.projection_dim
    time_ids = pipe._get_add_time_ids((h, w), (0, 0), (h, w), dtype=pe.dtype, text_encoder_projection_dim=proj)
    torch.testing.assert_close(ours["time_ids"], time_ids.expand(len(prompts), -1), rtol=0, atol=0)
    assert scorer.identity()["family"] == "sdxl"
    assert scorer.identity()["force_zeros_for_empty_prompt"] is force_zeros


def test_sdxl_first_step_matches_the_pipeline_unet_call(tiny_sdxl_path: Path) -> None:
    """The guided first step the scorer differentiates uses the UNet exactly as the pipeline calls it."""
    import torch

    import memtest
    from memtest.detection.scoring import Scorer

    ckpt = memtest.load_checkpoint(tiny_sdxl_path, device="cpu")
    scorer = Scorer(ckpt)
    x = scorer.noise([0, 1])
    t = scorer.timesteps[0]
    c_c, c_0 = scorer.embed(["a sketch of an even number"] * 2), scorer.null(2)
    o_c, o_0 = scorer._outputs(x, t, c_c, c_0).chunk(2)
    pipe = ckpt.pipeline()
    with torch.no_grad():
        pe, npe, pooled, npooled = pipe.encode_prompt(
            ["a sketch of an even number"],
            device=ckpt.device,
            num_images_per_prompt=2,
            do_classifier_free_guidance=True,
        )
        h, w = ckpt.resolution
        ids = pipe._get_add_time_ids(
            (h, w), (0, 0), (h, w), dtype=pe.dtype, text_encoder_projection_dim=pooled.shape[-1]
        )
        ref = ckpt.unet(
            torch.cat([x, x]), t, encoder_hidden_states=torch.cat([pe, npe]),
            added_cond_kwargs={"text_embeds": torch.cat([pooled, npooled]), "time_ids": ids.repeat(4, 1)},
        ).sample  # fmt: skip
    torch.testing.assert_close(torch.cat([o_c, o_0]), ref, rtol=1e-6, atol=1e-6)


def test_sdxl_fd_agrees_with_jvp(tiny_sdxl_path: Path) -> None:
    import memtest
    from memtest.detection.scoring import Scorer, ScoreSettings

    ckpt = memtest.load_checkpoint(tiny_sdxl_path, device="cpu")
    prompts = ["zorblax poster of 3", "a photo of a red digit", "a render of a large number"]
    fd = [r.score for r in Scorer(ckpt, ScoreSettings(n=2, method="fd")).score(prompts)]
    jvp = [r.score for r in Scorer(ckpt, ScoreSettings(n=2, method="jvp")).score(prompts)]
    for a, b in zip(fd, jvp, strict=True):
        assert b > 0 and abs(a - b) / b < 1e-2


def test_sdxl_generates_through_its_pipeline(tiny_sdxl_path: Path) -> None:
    import numpy as np

    import memtest
    from memtest.detection.scoring import Scorer
    from memtest.mitigation import generate_images

    ckpt = memtest.load_checkpoint(tiny_sdxl_path, device="cpu")
    scorer = Scorer(ckpt)
    x = scorer.noise([0, 1])
    by_prompt = generate_images(ckpt, x, prompt="a photo of a red digit", num_inference_steps=3)
    by_cond = generate_images(ckpt, x, cond=scorer.embed(["a photo of a red digit"]), num_inference_steps=3)
    assert by_prompt.shape == (2, 16, 16, 3) and np.isfinite(by_prompt).all()
    np.testing.assert_allclose(by_prompt, by_cond, atol=1e-5)
