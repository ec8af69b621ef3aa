"""Forward-mode derivative of scaled-dot-product attention at fused-kernel speed and bounded memory.

PyTorch's fused attention kernels have no forward-mode derivative (pytorch issue 128971), so an exact JVP
through a UNet normally routes attention through the math path, which materialises the (heads x tokens x
tokens) weights, their softmax and both tangents: at Stable Diffusion's 64x64 latents that is 5-6 GiB per
generation and most of the JVP's time on a CPU. Inside `jvp_attention()`, every plain call of
`torch.nn.functional.scaled_dot_product_attention` (no mask, no dropout, not causal) computes its output with
the fused kernel and its tangent from the exact formula, a block of queries at a time:

    S = q kᵀ s,  P = softmax(S),  o = P v
    do = (P ⊙ dS) v - rowsum(P ⊙ dS) ⊙ o + P dv,  dS = (dq kᵀ + q dkᵀ) s

Other calls fall back to the math path. Only `torch.func.jvp` (forward mode) is supported, not backward.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

#: Elements of one block of attention weights (batch x heads x queries x keys) in the tangent's loop:
#: 2**26 float32 elements are 256 MiB; a few such blocks are alive at once.
BLOCK_ELEMENTS = 2**26


def _queries_per_block(q: torch.Tensor, keys: int) -> int:
    rows = q.shape[:-2].numel() * keys
    return max(1, min(q.shape[-2], BLOCK_ELEMENTS // max(rows, 1)))


def attention_tangent(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    dq: torch.Tensor | None,
    dk: torch.Tensor | None,
    dv: torch.Tensor | None,
    scale: float | None,
) -> torch.Tensor:
    """d/dε softmax((q + ε dq)(k + ε dk)ᵀ s)(v + ε dv) at ε = 0, given out = the attention output."""
    s = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    kt = k.transpose(-1, -2) * s
    dkt = dk.transpose(-1, -2) * s if dk is not None else None
    blocks = []
    step = _queries_per_block(q, k.shape[-2])
    for a in range(0, q.shape[-2], step):
        qb = q[..., a : a + step, :]
        p = torch.softmax((qb @ kt).float(), dim=-1).to(q.dtype)
        ds = None
        if dq is not None:
            ds = dq[..., a : a + step, :] @ kt
        if dkt is not None:
            ds = qb @ dkt if ds is None else ds + qb @ dkt
        tangent = torch.zeros_like(out[..., a : a + step, :])
        if ds is not None:
            pds = p * ds
            tangent = pds @ v - pds.sum(dim=-1, keepdim=True) * out[..., a : a + step, :]
        if dv is not None:
            tangent = tangent + p @ dv
        blocks.append(tangent)
    return blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=-2)


class _Attention(torch.autograd.Function):
    @staticmethod
    def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        q, k, v, scale = inputs
        ctx.save_for_forward(q, k, v, output)
        ctx.scale = scale

    @staticmethod
    def jvp(ctx: Any, dq: Any, dk: Any, dv: Any, _dscale: Any) -> torch.Tensor:
        q, k, v, out = ctx.saved_tensors
        return attention_tangent(q, k, v, out, dq, dk, dv, ctx.scale)


def _plain_call(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float | None] | None:
    if attn_mask is not None or dropout_p != 0.0 or is_causal or enable_gqa:
        return None
    return query, key, value, scale


class _JvpAttentionMode(TorchFunctionMode):
    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            plain = _plain_call(*args, **kwargs)
            if plain is not None:
                return _Attention.apply(*plain)  # type: ignore[no-untyped-call]
            from torch.nn.attention import SDPBackend, sdpa_kernel

            with sdpa_kernel([SDPBackend.MATH]):
                return func(*args, **kwargs)
        return func(*args, **kwargs)


@contextmanager
def jvp_attention() -> Iterator[None]:
    """Within this block, `torch.func.jvp` through scaled-dot-product attention is exact, fast and lean."""
    with _JvpAttentionMode():
        yield
