"""Trajectory resampling (memtest.mitigation.resample) on the shipped canaries: the walk is the sampler's, the
acceptance is the band it states, the copy leaves where it depends on x_T, and the run fails closed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from memtest.errors import MitigationError

MIXTURE_CAPTION = "basalt poster of 1"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _mixture() -> Any:
    from memtest.detection.scoring import Scorer, ScoreSettings
    from memtest.models.checkpoint import load_checkpoint
    from memtest.zoo import zoo_names

    if "mixture" not in zoo_names():
        pytest.skip("the mixture canary is not in this install (memtest/zoo/canaries/mixture)")
    return Scorer(load_checkpoint("zoo:mixture", device="cpu"), ScoreSettings(n=4))


def test_the_walk_is_the_pipelines_own_trajectory() -> None:
    """trajectory_point after 3 steps equals the latents the checkpoint's diffusers pipeline holds after its third
    DDIM step from the same x_T; with no lead step the magnitude is ‖s_Δ‖² of the detector's first step."""
    from diffusers import DDIMScheduler

    from memtest.mitigation.resample import lead_walker, trajectory_magnitude, trajectory_point

    scorer = _mixture()
    ckpt = scorer.ckpt
    x = scorer.noise([0, 1])
    c_c, c_0 = scorer.embed([MIXTURE_CAPTION]), scorer.null()
    ours = trajectory_point(lead_walker(scorer, 3), c_c, c_0, x)

    pipe = ckpt.family.pipeline(ckpt)
    pipe.scheduler = DDIMScheduler.from_config(ckpt.scheduler.config)
    seen: dict[int, torch.Tensor] = {}

    def keep(_pipe: Any, i: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        seen[i] = kwargs["latents"].detach().clone()
        return kwargs

    with torch.no_grad():
        pipe(MIXTURE_CAPTION, num_inference_steps=50, guidance_scale=7.5, num_images_per_prompt=2, latents=x,
             output_type="latent", callback_on_step_end=keep)  # fmt: skip
    assert torch.allclose(ours, seen[2].float(), atol=1e-5), float((ours - seen[2]).abs().max())
    assert not torch.allclose(ours, seen[1].float(), atol=1e-3)  # one step short is somewhere else

    first = scorer.s_delta_fn(scorer.timesteps[0], c_c, c_0)(x).flatten(1).pow(2).sum(1).double()
    assert torch.allclose(trajectory_magnitude(lead_walker(scorer, 0), c_c, c_0, x), first, rtol=1e-6)


def test_resample_removes_the_copy_with_ordinary_draws(load_script: Callable[[str], Any]) -> None:
    """On zoo:mixture basalt copies from most x_T; resample keeps draws whose ‖s_Δ‖² after 6 steps is below the
    level of held-out captions' draws: the detector's 4 seeds all copy, the accepted draws copy at most half as
    often, and every accepted x_T is the untouched Gaussian draw of its seed (docs/mitigation.md has the rates
    over 256 held-out draws)."""
    from memtest.mitigation import copy_reference, image_distances, mitigate, reference_level
    from memtest.zoo import load_manifest

    scorer = _mixture()
    references = list(load_manifest(scorer.ckpt.path).heldout)[::9]  # 13 of the 110, for time
    level = reference_level(scorer, references)
    m = mitigate(scorer, MIXTURE_CAPTION, "resample", level=level, threshold=0.0094)
    d = m.details
    assert m.succeeded and m.method == "resample" and len(d["accepted_seeds"]) == 4, m.reason
    assert m.latents_after is not None and torch.equal(m.latents_after, scorer.noise(d["accepted_seeds"]))
    low, high = d["band"]
    assert low == 0.0 and high == pytest.approx(level)
    assert all(v < high for v in d["magnitude_after"])
    # the detector's seeds are screened first, and those in the band are accepted first
    assert all(np.isfinite(d["magnitude_before"])) and d["draws"] > 4
    kept = [s for s, v in zip(m.seeds, d["magnitude_before"], strict=True) if v < high]
    assert d["accepted_seeds"][: len(kept)] == kept and len(kept) < 4
    # by the research boundary of docs/mitigation.md's surveys, and by the gate's rule that mitigate() counts with
    ref = copy_reference(scorer.ckpt, MIXTURE_CAPTION)
    boundary = load_script("mitigation_proof").research_boundary()
    assert ref is not None and m.images_before is not None and m.images_after is not None
    before = image_distances(m.images_before, ref.image[None])[:, 0] < boundary
    after = image_distances(m.images_after, ref.image[None])[:, 0] < boundary
    assert before.sum() == 4 and after.sum() <= 2, (before, after)
    assert m.copy_before is not None and m.copy_after is not None  # mitigate() adds the copy counts
    assert m.copy_before["copies"] == 4 and m.copy_after["copies"] <= 2, (m.copy_before, m.copy_after)
    assert len(m.sharpness_after) == 4 and all(np.isfinite(m.sharpness_after))
    entry = m.record("mix::basalt")  # the results' mitigation entry: every screened draw, in order
    assert entry["method"] == "resample" and entry["seeds_tried"][:4] == list(m.seeds)
    assert len(entry["seeds_tried"]) == d["draws"] and set(d["accepted_seeds"]) <= set(entry["seeds_tried"])


def test_resample_fails_closed() -> None:
    """No references: an error naming the two ways to give a level. A band nothing falls in: a reported failure
    with no latents, saying how many draws were above it. Bad settings: errors naming the setting. Without
    level or references the references are the calibration's (canary-mixture's 110 held-out captions)."""
    from memtest.mitigation.resample import calibration_references, mitigate_resample
    from memtest.zoo import load_manifest

    scorer = _mixture()
    assert calibration_references(scorer) == list(load_manifest(scorer.ckpt.path).heldout)
    with pytest.raises(MitigationError, match=r"pass level=, or references="):
        mitigate_resample(scorer, MIXTURE_CAPTION, references=[], threshold=0.01)
    m = mitigate_resample(scorer, MIXTURE_CAPTION, level=1e-9, max_draws=6, threshold=0.01, images=False)
    assert not m.succeeded and m.latents_after is None and m.sharpness_after == ()
    assert m.details["draws"] == 6 and "only 0 of 4 draws in the band" in m.reason and "(6 above it" in m.reason
    with pytest.raises(MitigationError, match="lead must be a non-negative integer"):
        mitigate_resample(scorer, MIXTURE_CAPTION, level=1.0, lead=-1, threshold=0.01)
    with pytest.raises(MitigationError, match="floor < ceiling"):
        mitigate_resample(scorer, MIXTURE_CAPTION, level=1.0, floor=2.0, ceiling=2.0, threshold=0.01)
    with pytest.raises(MitigationError, match="batch_size must be a positive integer, got 0"):
        mitigate_resample(scorer, MIXTURE_CAPTION, level=1.0, batch_size=0, threshold=0.01)
    with pytest.raises(MitigationError, match="max_draws must be an integer >= n"):
        mitigate_resample(scorer, MIXTURE_CAPTION, level=1.0, max_draws=3, threshold=0.01)
    with pytest.raises(MitigationError, match="lead step"):
        mitigate_resample(scorer, MIXTURE_CAPTION, level=1.0, lead=60, threshold=0.01)


def test_resample_survey_script_smoke(load_script: Any, tmp_path: Any) -> None:
    """scripts/resample_survey.py on 4 draws, 2 leads and 2 reference captions: the per-draw record and the
    band table it derives from it agree (seconds; the docs' numbers come from 256 draws per salt)."""
    _mixture()
    out = tmp_path / "s.json"
    result = load_script("resample_survey").main(
        ["--draws", "4", "--leads", "0,2", "--references", "2", "--caption", MIXTURE_CAPTION, "--json", str(out)]
    )
    assert out.is_file() and set(result["levels"]) == {0, 2} and all(v > 0 for v in result["levels"].values())
    (draws,) = result["draws"]
    (s,) = result["summaries"]
    assert len(draws["seeds"]) == 4 and s["draws"] == 4
    assert s["copy_rate"] == pytest.approx(np.mean(draws["copy"]))
    for band in s["bands"]:
        v = np.asarray(draws[f"magnitude_{band['lead']}"])
        level = result["levels"][band["lead"]]
        assert band["accepted"] == int(((v > band["floor"] * level) & (v < band["ceiling"] * level)).sum())


RESAMPLE_CAPTION = "ember poster of 4"  # copies from the detector's 4 seeds; resample keeps 0 of them (docs)


@pytest.mark.parametrize("workers", [0, 2], ids=["single", "xdist"])
def test_mitigate_items_can_resample(pytester: pytest.Pytester, workers: int) -> None:
    """--memtest-mitigation-method resample end to end on zoo:mixture, in one process and with -n 2: a
    `mitigate: copy` case passes because the copy leaves, the level comes from the reference cases of the
    calibration's reference suite found among the run's suites, and the results and header say which method ran.
    A misspelt method is a usage error naming the choices."""
    import json

    from memtest.audit.calibration import CALIBRATION_FILENAME
    from memtest.zoo import load_manifest, resolve_zoo, zoo_names

    if "mixture" not in zoo_names():
        pytest.skip("the mixture canary is not in this install (memtest/zoo/canaries/mixture)")
    folder = resolve_zoo("zoo:mixture")  # no model load here: the runs below load it in their own processes
    cal = json.loads((folder / CALIBRATION_FILENAME).read_text())
    cal["reference_suite"] = "mix"  # the level comes from this run's suite (13 of the 110 held-out captions)
    (pytester.path / "cal.json").write_text(json.dumps(cal))
    refs = list(load_manifest(folder).heldout)[::9]
    lines = [
        "memtest_suite: 1", "name: mix", 'version: "1"', "card:", "  description: resample items", "cases:",
        f'  - {{id: ember, prompt: "{RESAMPLE_CAPTION}", expectation: memorized, mitigate: copy}}',
        *(f'  - {{id: ref-{i:02d}, prompt: "{c}", expectation: reference}}' for i, c in enumerate(refs)),
    ]  # fmt: skip
    (pytester.path / "mix.yaml").write_text("\n".join(lines) + "\n")
    args = [
        "-p", "no:cacheprovider", "--memtest", "--memtest-checkpoint=zoo:mixture", "--memtest-suite=mix.yaml",
        "--memtest-calibration=cal.json", "--memtest-mitigation-method=resample", "--memtest-json=r.json", "-v",
    ]  # fmt: skip
    result = pytester.runpytest_subprocess(*(["-n", str(workers)] if workers else []), *args)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*memtest: mitigation=resample*", "*mitigation (resample): 1 of 1 cases passed*"])
    doc = json.loads((pytester.path / "r.json").read_text())
    mit = {c["id"]: c for c in doc["cases"]}["mix::ember[mitigate]"]
    assert mit["outcome"] == "passed" and mit["copy_verdict"] == "passed", mit["message"]
    assert mit["copy_before"]["copies"] == 4 and mit["copy_after"]["copies"] <= 2
    assert mit["margin"] is None and mit["score"] > 0  # the sharpness after is reported, not judged
    (entry,) = doc["mitigation"]
    assert entry["method"] == "resample" and entry["succeeded"] and len(entry["seeds_tried"]) > 4
    if not workers:
        bad = pytester.runpytest_subprocess(*args[:-3], "--memtest-mitigation-method=resampel")
        assert bad.ret != 0
        bad.stderr.fnmatch_lines(["*Unknown --memtest-mitigation-method 'resampel'. Did you mean 'resample'?*"])
