"""Scoring on a tiny real UNet2DConditionModel checkpoint (float32)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

import memtest
from memtest.detection.metrics import sharpness
from memtest.detection.scoring import Scorer, ScoreSettings, derive_seeds
from memtest.errors import ScoringError

PROMPTS = ["zorblax poster of 3", "a photo of a red digit", "a sketch of an even number", "a render of 7"]


def test_jvp_and_fd_agree_within_one_percent(tiny_eps: Any) -> None:
    exact = memtest.score_prompts(tiny_eps, PROMPTS, method="jvp", n=2)
    for method in ("fd", "fd-forward"):
        approx = memtest.score_prompts(tiny_eps, PROMPTS, method=method, n=2)
        for a, b in zip(approx, exact, strict=True):
            assert a.score > 0
            assert abs(a.score - b.score) / b.score < 0.01, (method, a.score, b.score)
            for va, vb in zip(a.values, b.values, strict=True):
                assert abs(va - vb) / vb < 0.01


@pytest.mark.parametrize("method", ["fd", "jvp"])
def test_score_does_not_depend_on_batch_companions(tiny_eps: Any, method: str) -> None:
    alone = memtest.score_prompts(tiny_eps, PROMPTS[1:2], method=method, n=2, batch_size=3)[0]
    mixed = memtest.score_prompts(tiny_eps, PROMPTS, method=method, n=2, batch_size=3)
    shuffled = memtest.score_prompts(tiny_eps, PROMPTS[::-1], method=method, n=2, batch_size=3)
    assert mixed[1].prompt == alone.prompt
    for other in (mixed[1], shuffled[2]):
        assert other.prompt == alone.prompt
        assert abs(other.score - alone.score) <= 1e-5 * abs(alone.score)


def test_scores_are_deterministic(tiny_eps: Any) -> None:
    a = memtest.score_prompts(tiny_eps, PROMPTS, n=2, seed=3)
    b = memtest.score_prompts(tiny_eps, PROMPTS, n=2, seed=3)
    c = memtest.score_prompts(tiny_eps, PROMPTS, n=2, seed=4)
    assert [r.values for r in a] == [r.values for r in b]
    assert [r.values for r in a] != [r.values for r in c]


def test_score_norm_equals_direct_unet_computation(tiny_eps: Any) -> None:
    result = memtest.score_prompts(tiny_eps, PROMPTS[:1], metric="score_norm", n=2, seed=5)[0]
    tok = tiny_eps.tokenizer
    ids = tok([PROMPTS[0], ""], padding="max_length", max_length=tok.model_max_length, return_tensors="pt")
    with torch.no_grad():
        emb = tiny_eps.text_encoder(ids.input_ids)[0]
        for i, seed in enumerate(result.seeds):
            x = torch.randn((1, *tiny_eps.latent_shape), generator=torch.Generator().manual_seed(seed))
            eps = tiny_eps.unet(torch.cat([x, x]), 981, encoder_hidden_states=emb).sample
            direct = float((eps[0] - eps[1]).norm())
            assert math.isclose(result.values[i], direct, rel_tol=1e-5)
    assert result.score == pytest.approx(sum(result.values) / 2)


def test_sharpness_equals_model_agnostic_metric(tiny_eps: Any) -> None:
    scorer = Scorer(tiny_eps, ScoreSettings(n=2, method="jvp"))
    result = scorer.score(PROMPTS[:1])[0]
    x = scorer.noise(result.seeds)
    s_fn = scorer.s_delta_fn(981, scorer.embed(PROMPTS[:1] * 2), scorer.embed(["", ""]))
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.MATH]):
        direct = sharpness(s_fn, x, method="jvp")
    torch.testing.assert_close(torch.tensor(result.values, dtype=direct.dtype), direct, rtol=1e-5, atol=0)


def test_result_records_every_setting(tiny_eps: Any) -> None:
    r = memtest.score_prompts(tiny_eps, PROMPTS[:1], n=3, seed=7, steps=3, metric="score_norm")[0]
    s = r.settings
    assert s["timesteps"] == [981, 961, 941]
    assert s["n"] == 3 and s["seed"] == 7 and s["seeds"] == [7, 8, 9] == list(r.seeds)
    assert s["metric"] == "score_norm" and s["scheduler"] == "DDIMScheduler"
    assert s["prediction_type"] == "epsilon" and s["resolution"] == [16, 16] and s["dtype"] == "float32"
    assert s["fingerprint"] == tiny_eps.fingerprint and len(s["fingerprint"]) == 64
    assert len(r.values) == 3 and all(math.isfinite(v) for v in r.values)


def test_per_prompt_seeds_are_stable_and_distinct() -> None:
    assert derive_seeds(0, 3) == [0, 1, 2]
    a = derive_seeds(0, 2, "a cat")
    assert a == derive_seeds(0, 2, "a cat") and a != derive_seeds(0, 2, "a dog") and a != derive_seeds(1, 2, "a cat")


def test_trajectory_metric_differs_from_first_step(tiny_eps: Any) -> None:
    first = memtest.score_prompts(tiny_eps, PROMPTS[:1], metric="sharpness", n=1, steps=1)[0]
    three = memtest.score_prompts(tiny_eps, PROMPTS[:1], metric="sharpness", n=1, steps=3)[0]
    assert three.score != first.score and three.score > 0


def test_v_prediction_checkpoint_scores(tiny_v_path: Path) -> None:
    ckpt = memtest.load_checkpoint(tiny_v_path, device="cpu")
    assert ckpt.prediction_type == "v_prediction"
    fd = memtest.score_prompts(ckpt, PROMPTS[:2], n=1, method="fd")
    jvp = memtest.score_prompts(ckpt, PROMPTS[:2], n=1, method="jvp")
    for a, b in zip(fd, jvp, strict=True):
        assert a.settings["prediction_type"] == "v_prediction"
        assert abs(a.score - b.score) / b.score < 0.01


@pytest.mark.parametrize(
    ("prompts", "match"),
    [
        ([], "prompt list is empty"),
        (["ok", 3], r"Prompt #1 is a int \(3\), not a string"),
        ("a single string", "not a single string"),
    ],
)
def test_bad_prompts_are_clear_errors(tiny_eps: Any, prompts: Any, match: str) -> None:
    with pytest.raises(ScoringError, match=match):
        memtest.score_prompts(tiny_eps, prompts)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"metric": "sharpnes"}, "Unknown metric 'sharpnes'"),
        ({"method": "exact"}, "Unknown method 'exact'"),
        ({"n": 0}, "n must be a positive integer"),
        ({"steps": 60}, "exceeds num_inference_steps"),
    ],
)
def test_bad_settings_are_clear_errors(tiny_eps: Any, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ScoringError, match=match):
        memtest.score_prompts(tiny_eps, PROMPTS[:1], **kwargs)


def test_non_finite_model_output_is_an_error(tiny_eps_path: Path) -> None:
    ckpt = memtest.load_checkpoint(tiny_eps_path, device="cpu")
    with torch.no_grad():
        ckpt.unet.conv_out.bias.fill_(float("nan"))
    with pytest.raises(ScoringError, match=r"non-finite sharpness.*zorblax poster of 3"):
        memtest.score_prompts(ckpt, PROMPTS[:1], n=1)


def test_non_finite_message_names_each_prompt_once(tiny_eps_path: Path) -> None:
    """The batch is padded with copies of its last prompt; the message still names every prompt once."""
    ckpt = memtest.load_checkpoint(tiny_eps_path, device="cpu")
    with torch.no_grad():
        ckpt.unet.conv_out.bias.fill_(float("nan"))
    with pytest.raises(ScoringError) as info:
        memtest.score_prompts(ckpt, PROMPTS[:2], n=2, batch_size=8)
    message = str(info.value)
    assert "for 2 prompt(s)" in message
    for p in PROMPTS[:2]:
        assert message.count(repr(p)) == 1, message
