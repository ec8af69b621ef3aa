"""Lean forward-mode derivatives for the layers of a diffusion UNet (`with lean_jvp(): torch.func.jvp(...)`).

`torch.func.jvp` through a UNet was 5-9x the cost of a forward on a CPU, for three reasons this module
removes while keeping the JVP exact:

- Attention. PyTorch's fused attention kernels have no forward-mode derivative (pytorch issue 128971), so
  the JVP had to take the math path, which materialises the (heads x tokens x tokens) weights, their
  softmax and both tangents: 5-6 GiB per generation at Stable Diffusion's 64x64 latents, and most of the
  time. Here the output comes from the fused kernel and the tangent from the exact formula, a block of
  queries at a time:  S = q kᵀ s,  P = softmax(S),  o = P v,
  do = (P ⊙ dS) v - rowsum(P ⊙ dS) ⊙ o + P dv,  with dS = (dq kᵀ + q dkᵀ) s.
- Convolutions and linear layers. Their forward-mode formula also convolves the input with the weights'
  tangent, which is zero here (weights are constants) but still computed: a third convolution per layer.
  Here a missing tangent costs nothing.
- Group and layer normalisation. Their forward-mode formula is a long chain of small operations (35x the
  primal's time in a profile). Here: dy = γ · rstd · (dx - mean(dx) - x̂ · mean(x̂ · dx)) per group.

Within the block, `torch.nn.functional` calls to `scaled_dot_product_attention` (no mask, no dropout, not
causal), `conv2d`, `linear`, `group_norm` and `layer_norm` go through `autograd.Function`s whose forward is
the original operation (the primal is bit-identical) and whose `jvp` is the formula above; a masked or
causal attention takes the math path. Forward mode only: nothing here supports backward.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
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


def _total(terms: Sequence[torch.Tensor | None], out_shape: torch.Size, like: torch.Tensor) -> torch.Tensor:
    """Sum of the present tangent terms, broadcast to the output's shape (zeros when none is present)."""
    total: torch.Tensor | None = None
    for t in terms:
        if t is not None:
            total = t if total is None else total + t
    if total is None:
        return like.new_zeros(out_shape)
    return total if total.shape == out_shape else total.expand(out_shape).contiguous()


class _Attention(torch.autograd.Function):
    @staticmethod
    def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        ctx.set_materialize_grads(False)  # inputs without a tangent: None, not a tensor of zeros
        q, k, v, scale = inputs
        ctx.save_for_forward(q, k, v, output)
        ctx.scale = scale

    @staticmethod
    def jvp(ctx: Any, dq: Any, dk: Any, dv: Any, _dscale: Any) -> torch.Tensor:
        q, k, v, out = ctx.saved_tensors
        return attention_tangent(q, k, v, out, dq, dk, dv, ctx.scale)


class _Conv2d(torch.autograd.Function):
    @staticmethod
    def forward(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, *conf: Any) -> torch.Tensor:
        return F.conv2d(x, w, b, *conf)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        ctx.set_materialize_grads(False)  # inputs without a tangent: None, not a tensor of zeros
        x, w, _b, *conf = inputs
        ctx.save_for_forward(x, w)
        ctx.conf, ctx.out_shape = conf, output.shape

    @staticmethod
    def jvp(ctx: Any, dx: Any, dw: Any, db: Any, *_: Any) -> torch.Tensor:
        x, w = ctx.saved_tensors
        terms = [
            F.conv2d(dx, w, None, *ctx.conf) if dx is not None else None,
            F.conv2d(x, dw, None, *ctx.conf) if dw is not None else None,
            db.view(1, -1, 1, 1) if db is not None else None,
        ]
        return _total(terms, ctx.out_shape, x)


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        return F.linear(x, w, b)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        ctx.set_materialize_grads(False)  # inputs without a tangent: None, not a tensor of zeros
        x, w, _b = inputs
        ctx.save_for_forward(x, w)
        ctx.out_shape = output.shape

    @staticmethod
    def jvp(ctx: Any, dx: Any, dw: Any, db: Any) -> torch.Tensor:
        x, w = ctx.saved_tensors
        terms = [F.linear(dx, w) if dx is not None else None, F.linear(x, dw) if dw is not None else None, db]
        return _total(terms, ctx.out_shape, x)


def _norm_tangent(
    x: torch.Tensor,
    dx: torch.Tensor | None,
    groups: tuple[int, ...],
    affine_shape: tuple[int, ...],
    weight: torch.Tensor | None,
    dweight: torch.Tensor | None,
    dbias: torch.Tensor | None,
    eps: float,
) -> torch.Tensor:
    """Tangent of (x - mean) * rstd * weight + bias, with statistics over the last dim of x.view(groups)."""
    xg = x.reshape(groups).float()
    var, mean = torch.var_mean(xg, dim=-1, unbiased=False, keepdim=True)
    rstd = torch.rsqrt(var + eps)
    xhat = (xg - mean) * rstd
    out = torch.zeros_like(x, dtype=torch.float32)
    if dx is not None:
        dg = dx.reshape(groups).float()
        dxhat = (dg - dg.mean(dim=-1, keepdim=True) - xhat * (dg * xhat).mean(dim=-1, keepdim=True)) * rstd
        out = dxhat.view(x.shape)
        if weight is not None:
            out = out * weight.float().view(affine_shape)
    if dweight is not None:
        out = out + xhat.view(x.shape) * dweight.float().view(affine_shape)
    if dbias is not None:
        out = out + dbias.float().view(affine_shape)
    return out.to(x.dtype)


class _GroupNorm(torch.autograd.Function):
    @staticmethod
    def forward(
        x: torch.Tensor, num_groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
    ) -> torch.Tensor:
        return F.group_norm(x, num_groups, weight, bias, eps)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        ctx.set_materialize_grads(False)  # inputs without a tangent: None, not a tensor of zeros
        x, num_groups, weight, _bias, eps = inputs
        ctx.save_for_forward(x, weight)
        ctx.num_groups, ctx.eps = num_groups, eps

    @staticmethod
    def jvp(ctx: Any, dx: Any, _dg: Any, dweight: Any, dbias: Any, _deps: Any) -> torch.Tensor:
        x, weight = ctx.saved_tensors
        groups = (x.shape[0], ctx.num_groups, -1)
        affine = (1, x.shape[1]) + (1,) * (x.dim() - 2)
        return _norm_tangent(x, dx, groups, affine, weight, dweight, dbias, ctx.eps)


class _LayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(
        x: torch.Tensor, shape: tuple[int, ...], weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
    ) -> torch.Tensor:
        return F.layer_norm(x, shape, weight, bias, eps)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        ctx.set_materialize_grads(False)  # inputs without a tangent: None, not a tensor of zeros
        x, shape, weight, _bias, eps = inputs
        ctx.save_for_forward(x, weight)
        ctx.shape, ctx.eps = tuple(shape), eps

    @staticmethod
    def jvp(ctx: Any, dx: Any, _ds: Any, dweight: Any, dbias: Any, _deps: Any) -> torch.Tensor:
        x, weight = ctx.saved_tensors
        lead = x.shape[: x.dim() - len(ctx.shape)]
        groups = (*lead, math.prod(ctx.shape))
        affine = (1,) * len(lead) + ctx.shape
        return _norm_tangent(x, dx, groups, affine, weight, dweight, dbias, ctx.eps)


# Argument parsers with the signatures of the functions they stand in for: (Function, args) or None to
# leave the call alone.
def _attention_args(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> tuple[Any, tuple[Any, ...]] | None:
    if attn_mask is not None or dropout_p != 0.0 or is_causal or enable_gqa:
        return None
    return _Attention, (query, key, value, scale)


def _conv2d_args(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    groups: int = 1,
) -> tuple[Any, tuple[Any, ...]]:
    return _Conv2d, (input, weight, bias, stride, padding, dilation, groups)


def _linear_args(
    input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> tuple[Any, tuple[Any, ...]]:
    return _Linear, (input, weight, bias)


def _group_norm_args(
    input: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> tuple[Any, tuple[Any, ...]]:
    return _GroupNorm, (input, num_groups, weight, bias, eps)


def _layer_norm_args(
    input: torch.Tensor,
    normalized_shape: Sequence[int],
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> tuple[Any, tuple[Any, ...]]:
    return _LayerNorm, (input, tuple(normalized_shape), weight, bias, eps)


_PARSERS: dict[Any, Any] = {
    F.scaled_dot_product_attention: _attention_args,
    F.conv2d: _conv2d_args,
    F.linear: _linear_args,
    F.group_norm: _group_norm_args,
    F.layer_norm: _layer_norm_args,
}


class _LeanJvpMode(TorchFunctionMode):
    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        parse = _PARSERS.get(func)
        if parse is not None:
            call = parse(*args, **kwargs)
            if call is not None:
                function, fargs = call
                return function.apply(*fargs)
            if func is F.scaled_dot_product_attention:  # masked or causal: the math path has a JVP
                from torch.nn.attention import SDPBackend, sdpa_kernel

                with sdpa_kernel([SDPBackend.MATH]):
                    return func(*args, **kwargs)
        return func(*args, **kwargs)


@contextmanager
def lean_jvp() -> Iterator[None]:
    """Within this block, `torch.func.jvp` through a UNet is exact, runs fused attention, skips zero terms."""
    with _LeanJvpMode():
        yield
