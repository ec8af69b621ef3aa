"""memtest._jvp_attention: the fused-kernel attention with an exact tangent equals the math path's JVP."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import memtest._jvp_attention as ja


@pytest.mark.parametrize("with_tangent", ["qkv", "q", "kv", "v"])
@pytest.mark.parametrize("block_elements", [2**26, 2 * 3 * 20 * 7])  # one block; blocks of 7 queries
def test_tangent_equals_math_path(monkeypatch: pytest.MonkeyPatch, with_tangent: str, block_elements: int) -> None:
    monkeypatch.setattr(ja, "BLOCK_ELEMENTS", block_elements)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, length, dim, generator=gen) for length, dim in ((50, 8), (20, 8), (20, 6)))
    base = {"q": q, "k": k, "v": v}
    names = [c for c in "qkv" if c in with_tangent]

    def attend(*given: torch.Tensor) -> torch.Tensor:
        args = {**base, **dict(zip(names, given, strict=True))}
        return F.scaled_dot_product_attention(args["q"], args["k"], args["v"], scale=0.3)

    primals = tuple(base[c] for c in names)
    tangents = tuple(torch.randn(base[c].shape, generator=gen) for c in names)
    with sdpa_kernel([SDPBackend.MATH]):
        out_math, tan_math = torch.func.jvp(attend, primals, tangents)
    with ja.jvp_attention():
        out, tan = torch.func.jvp(attend, primals, tangents)
    torch.testing.assert_close(out, out_math, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(tan, tan_math, rtol=1e-4, atol=1e-5)
    assert tan.abs().max() > 0.1


def test_masked_attention_falls_back_to_the_math_path() -> None:
    gen = torch.Generator().manual_seed(1)
    q, k, v, dq = (torch.randn(1, 2, 6, 4, generator=gen) for _ in range(4))
    mask = torch.rand(1, 2, 6, 6, generator=gen) > 0.3

    def attend(query: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(query, k, v, attn_mask=mask)

    with sdpa_kernel([SDPBackend.MATH]):
        expected = torch.func.jvp(attend, (q,), (dq,))[1]
    with ja.jvp_attention():
        got = torch.func.jvp(attend, (q,), (dq,))[1]
    torch.testing.assert_close(got, expected)


def test_unet_jvp_matches_math_path(tiny_eps: Any) -> None:
    from memtest.scoring import Scorer, ScoreSettings

    scorer = Scorer(tiny_eps, ScoreSettings(n=2))
    s_fn = scorer.s_delta_fn(981, scorer.embed(["a render of 7"] * 2), scorer.embed(["", ""]))
    x = scorer.noise([0, 1])
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    with sdpa_kernel([SDPBackend.MATH]):
        expected = torch.func.jvp(s_fn, (x,), (v,))[1]
    with ja.jvp_attention():
        got = torch.func.jvp(s_fn, (x,), (v,))[1]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))
