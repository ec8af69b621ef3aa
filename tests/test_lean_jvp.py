"""memtest.detection._lean_jvp: each stand-in's tangent equals PyTorch's own forward-mode derivative."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import memtest.detection._lean_jvp as lj


def _compare(fn: Callable[..., torch.Tensor], primals: tuple[torch.Tensor, ...], seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    tangents = tuple(torch.randn(p.shape, generator=gen) for p in primals)
    with sdpa_kernel([SDPBackend.MATH]):
        out_ref, tan_ref = torch.func.jvp(fn, primals, tangents)
    with lj.lean_jvp():
        out, tan = torch.func.jvp(fn, primals, tangents)
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-5 * float(out_ref.abs().max()))
    torch.testing.assert_close(tan, tan_ref, rtol=1e-4, atol=1e-5 * float(tan_ref.abs().max()))
    assert tan_ref.abs().max() > 1e-3


def _randn(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("with_tangent", ["qkv", "q", "kv", "v"])
@pytest.mark.parametrize("block_elements", [2**26, 2 * 3 * 20 * 7])  # one block; blocks of 7 queries
def test_attention(monkeypatch: pytest.MonkeyPatch, with_tangent: str, block_elements: int) -> None:
    monkeypatch.setattr(lj, "BLOCK_ELEMENTS", block_elements)
    base = {"q": _randn(2, 3, 50, 8, seed=1), "k": _randn(2, 3, 20, 8, seed=2), "v": _randn(2, 3, 20, 6, seed=3)}
    names = [c for c in "qkv" if c in with_tangent]

    def attend(*given: torch.Tensor) -> torch.Tensor:
        a = {**base, **dict(zip(names, given, strict=True))}
        return F.scaled_dot_product_attention(a["q"], a["k"], a["v"], scale=0.3)

    _compare(attend, tuple(base[c] for c in names))


def test_masked_attention_falls_back_to_the_math_path() -> None:
    k, v = _randn(1, 2, 6, 4, seed=2), _randn(1, 2, 6, 4, seed=3)
    mask = torch.rand(1, 2, 6, 6, generator=torch.Generator().manual_seed(4)) > 0.3
    _compare(lambda q: F.scaled_dot_product_attention(q, k, v, attn_mask=mask), (_randn(1, 2, 6, 4),))


@pytest.mark.parametrize("which", ["x", "xwb"])
def test_conv2d_and_linear(which: str) -> None:
    x, w, b = _randn(2, 4, 7, 7), _randn(6, 2, 3, 3, seed=2), _randn(6, seed=3)
    if which == "x":
        _compare(lambda x: F.conv2d(x, w, b, stride=2, padding=1, groups=2), (x,))
        _compare(lambda x: F.linear(x, _randn(5, 7, seed=4), b[:5]), (x,))
    else:
        _compare(lambda x, w, b: F.conv2d(x, w, b, 1, "same", 1, 2), (x, w, b))
        _compare(lambda x, w, b: F.linear(x, w, b), (x, _randn(5, 7, seed=4), b[:5]))


@pytest.mark.parametrize("which", ["x", "xwb"])
def test_group_and_layer_norm(which: str) -> None:
    x = _randn(2, 8, 5, 3) * 3 + 1
    gw, gb, lw, lb = _randn(8, seed=2), _randn(8, seed=3), _randn(5, 3, seed=4), _randn(5, 3, seed=5)
    if which == "x":
        _compare(lambda x: F.group_norm(x, 4, gw, gb, eps=1e-6), (x,))
        _compare(lambda x: F.layer_norm(x, (5, 3), lw, lb), (x,))
        _compare(lambda x: F.group_norm(x, 2), (x,))
    else:
        _compare(lambda x, w, b: F.group_norm(x, 4, w, b), (x, gw, gb))
        _compare(lambda x, w, b: F.layer_norm(x, [5, 3], w, b), (x, lw, lb))


def test_unet_jvp_matches_pytorch(tiny_eps: Any) -> None:
    from memtest.detection.scoring import Scorer, ScoreSettings

    scorer = Scorer(tiny_eps, ScoreSettings(n=2))
    s_fn = scorer.s_delta_fn(981, scorer.embed(["a render of 7"] * 2), scorer.embed(["", ""]))
    _compare(s_fn, (scorer.noise([0, 1]),))
