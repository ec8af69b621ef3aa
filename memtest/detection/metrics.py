"""Model-agnostic detection metrics (SPEC.md §2).

Everything here takes `s_delta`, any callable mapping a batch x of shape (B, ...) to the guided score
difference s_Δ(x) of the same shape, so users with their own score networks (and closed-form tests)
get exactly the quantities memtest computes on diffusers checkpoints.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any, Literal

import torch

from memtest.detection.settings import HVP_METHODS

ScoreFn = Callable[[torch.Tensor], torch.Tensor]
Method = Literal["jvp", "fd", "fd-forward"]

#: Default finite-difference step, relative to sqrt(d) (the norm of a standard Gaussian x_T):
#: float32 central differences with this step matched the exact JVP within 0.5% (SPEC.md).
DEFAULT_FD_H = 1e-3


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 norm, shaped to broadcast against t."""
    norms: torch.Tensor = t.flatten(1).norm(dim=1)
    return norms.view(-1, *([1] * (t.dim() - 1)))


def fd_step(x: torch.Tensor, h: float | None) -> float:
    """Absolute finite-difference step: `h` if given, else DEFAULT_FD_H * sqrt(d)."""
    if h is not None:
        if not (h > 0 and math.isfinite(h)):
            raise ValueError(f"finite-difference step h must be a positive finite number, got {h!r}")
        return float(h)
    d = x[0].numel()
    return DEFAULT_FD_H * math.sqrt(d)


def check_method(method: str) -> None:
    if method not in HVP_METHODS:
        raise ValueError(f"Unknown method {method!r}. Choose one of: {', '.join(HVP_METHODS)}.")


def hessian_vector_product(
    s_delta: ScoreFn,
    x: torch.Tensor,
    v: torch.Tensor,
    method: str = "jvp",
    h: float | None = None,
    s_at_x: torch.Tensor | None = None,
) -> torch.Tensor:
    """H_Δ(x) v per sample, where H_Δ = ∂s_Δ/∂x, never forming H.

    - ``jvp``: exact forward-mode AD (`torch.func.jvp`).
    - ``fd``: central difference along u = v/‖v‖ with step h: (s(x+hu) - s(x-hu)) ‖v‖ / 2h.
    - ``fd-forward``: forward difference (s(x+hu) - s(x)) ‖v‖ / h; reuses `s_at_x` when given,
      so sharpness costs two evaluations in all (the floor).
    """
    check_method(method)
    if x.shape != v.shape:
        raise ValueError(f"x and v must have the same shape, got {tuple(x.shape)} and {tuple(v.shape)}")
    if method == "jvp":
        hv: torch.Tensor = torch.func.jvp(s_delta, (x,), (v,))[1]
        return hv
    step = fd_step(x, h)
    vnorm = _flat_norm(v)
    u = v / vnorm.clamp_min(torch.finfo(v.dtype).tiny)
    if method == "fd":
        both = s_delta(torch.cat([x + step * u, x - step * u]))
        plus, minus = both.chunk(2)
        return (plus - minus) * (vnorm / (2 * step))
    base = s_delta(x) if s_at_x is None else s_at_x
    return (s_delta(x + step * u) - base) * (vnorm / step)


def squared_norm(t: torch.Tensor) -> torch.Tensor:
    """‖t‖² per sample, shape (B,), in float32 or wider."""
    return t.flatten(1).to(torch.promote_types(t.dtype, torch.float32)).pow(2).sum(dim=1)


def sharpness(
    s_delta: ScoreFn, x: torch.Tensor, method: str = "jvp", h: float | None = None, s_at_x: torch.Tensor | None = None
) -> torch.Tensor:
    """‖H_Δ(x) s_Δ(x)‖² per sample, shape (B,), in float32 or wider; `s_at_x` reuses s_Δ(x) when known.

    The one implementation of the sharpness: the scorer, SAIL's acceptance check and the baselines all take it
    from here (`measure_sharpness` is this without autograd).
    """
    s = s_delta(x) if s_at_x is None else s_at_x
    hs = hessian_vector_product(s_delta, x, s, method=method, h=h, s_at_x=s)
    return squared_norm(hs)


def _hvp_context(method: str) -> contextlib.AbstractContextManager[Any]:
    if method != "jvp":
        return contextlib.nullcontext()
    # Fused SDPA kernels have no forward-mode derivative (pytorch#128971): use the math path.
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


def measure_sharpness(
    s_delta: ScoreFn, x: torch.Tensor, method: str = "fd", h: float | None = None, s_at_x: torch.Tensor | None = None
) -> torch.Tensor:
    """`sharpness` as a measurement: no autograd graph (finite differences run under no_grad, `jvp` on the math
    attention path), detached; `s_at_x` reuses s_Δ(x) when known."""
    with torch.no_grad():
        s = s_delta(x) if s_at_x is None else s_at_x
    with _hvp_context(method), contextlib.nullcontext() if method == "jvp" else torch.no_grad():
        return sharpness(s_delta, x, method, h, s_at_x=s).detach()
