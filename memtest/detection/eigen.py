"""Eigen-analysis of H_Δ for small models (SPEC.md §2): Lanczos top-k and a Hutchinson trace.

A learned network's Jacobian is not symmetric, so Lanczos (`scipy.sparse.linalg.eigsh`) runs on the
symmetric part (H + Hᵀ)/2, applied as (Hv + Hᵀv)/2 with one JVP and one VJP. For an exact score model
H is symmetric and this is H itself. The trace is the same for H and its symmetric part.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from memtest.detection.metrics import ScoreFn, hessian_vector_product


def _symmetric_hvp(s_delta: ScoreFn, x: torch.Tensor, method: str = "jvp") -> Callable[[torch.Tensor], torch.Tensor]:
    """v -> (H + Hᵀ) v / 2 at x (one point, or the same point repeated once per vector).

    Hv comes from `hessian_vector_product` (exact `jvp`, or forwards-only `fd`, several times faster
    through a UNet's math attention); Hᵀv from one VJP.
    """

    def apply(v: torch.Tensor) -> torch.Tensor:
        hv = hessian_vector_product(s_delta, x, v, method=method)
        vjp_fn = torch.func.vjp(s_delta, x)[1]
        htv: torch.Tensor = vjp_fn(v)[0]
        return 0.5 * (hv.detach() + htv.detach())

    return apply


@dataclass(frozen=True)
class Spectrum:
    eigenvalues: tuple[float, ...]  # ascending
    which: str

    def to_dict(self) -> dict[str, Any]:
        return {"eigenvalues": list(self.eigenvalues), "which": self.which}


def top_eigenvalues(
    s_delta: ScoreFn,
    x: torch.Tensor,
    k: int = 8,
    which: str = "SA",
    tol: float = 1e-6,
    seed: int = 0,
) -> Spectrum:
    """Top-k eigenvalues of sym(H_Δ) at one point x (shape (1, ...)) by Lanczos over Hessian-vector products.

    `which="SA"` gives the most negative eigenvalues (the sharp directions memorized prompts show),
    `"LA"` the largest, `"LM"` the largest in magnitude.
    """
    from scipy.sparse.linalg import LinearOperator, eigsh

    if x.shape[0] != 1:
        raise ValueError(f"top_eigenvalues takes a single point of shape (1, ...), got {tuple(x.shape)}")
    d = x[0].numel()
    if not 1 <= k < d:
        raise ValueError(f"k must be in [1, {d - 1}] for a {d}-dimensional H, got {k}")
    apply = _symmetric_hvp(s_delta, x)
    dtype = x.dtype

    def matvec(v: np.ndarray) -> np.ndarray:
        vt = torch.as_tensor(np.ascontiguousarray(v).reshape(x.shape), dtype=dtype, device=x.device)
        return apply(vt).detach().to("cpu", torch.float64).numpy().reshape(-1)

    op = LinearOperator((d, d), matvec=matvec, dtype=np.float64)
    v0 = np.random.default_rng(seed).standard_normal(d)
    vals = eigsh(op, k=k, which=which, tol=tol, v0=v0, return_eigenvectors=False)
    return Spectrum(eigenvalues=tuple(float(v) for v in np.sort(vals)), which=which)


def hutchinson_trace(
    s_delta: ScoreFn,
    x: torch.Tensor,
    samples: int = 64,
    method: str = "jvp",
    seed: int = 0,
    h: float | None = None,
) -> tuple[float, float]:
    """Hutchinson estimate of tr H_Δ at one point x: mean of zᵀHz over Rademacher z; returns (mean, stderr)."""
    if x.shape[0] != 1:
        raise ValueError(f"hutchinson_trace takes a single point of shape (1, ...), got {tuple(x.shape)}")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    z = (torch.randint(0, 2, (samples, *x.shape[1:]), generator=gen) * 2 - 1).to(x.dtype).to(x.device)
    xs = x.expand_as(z).contiguous()
    hz = hessian_vector_product(s_delta, xs, z, method=method, h=h)
    est = (z * hz).flatten(1).sum(dim=1).to(torch.float64)
    mean = float(est.mean())
    stderr = float(est.std(unbiased=True) / np.sqrt(samples)) if samples > 1 else float("nan")
    return mean, stderr


def block_eigenvalues(
    s_delta: ScoreFn,
    x: torch.Tensor,
    k: int = 8,
    iters: int = 30,
    oversample: int = 4,
    seed: int = 0,
    method: str = "jvp",
) -> Spectrum:
    """The k largest-magnitude eigenvalues of sym(H_Δ) at x by block subspace iteration.

    ARPACK applies the operator one vector at a time, which on a UNet means thousands of batch-1
    products; here every iteration applies it to all k + oversample vectors in one batched JVP + VJP,
    so a spectrum for the report costs `iters` batched products. Memorized prompts' sharp directions
    are the large negative eigenvalues, which dominate in magnitude.
    """
    if x.shape[0] != 1:
        raise ValueError(f"block_eigenvalues takes a single point of shape (1, ...), got {tuple(x.shape)}")
    d = x[0].numel()
    m = min(k + oversample, d)
    if not 1 <= k <= m:
        raise ValueError(f"k must be in [1, {d}], got {k}")
    xs = x.expand(m, *x.shape[1:]).contiguous()
    apply = _symmetric_hvp(s_delta, xs, method)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    q = torch.linalg.qr(torch.randn(d, m, generator=gen, dtype=torch.float64))[0]

    def op(basis: torch.Tensor) -> torch.Tensor:
        v = basis.T.reshape(m, *x.shape[1:]).to(x.dtype).to(x.device)
        return apply(v).detach().reshape(m, d).T.to("cpu", torch.float64)

    for _ in range(iters):
        q = torch.linalg.qr(op(q))[0]
    aq = op(q)
    small = q.T @ aq
    ritz = torch.linalg.eigvalsh(0.5 * (small + small.T))
    top = ritz[torch.argsort(ritz.abs(), descending=True)[:k]]
    return Spectrum(eigenvalues=tuple(float(v) for v in torch.sort(top).values), which="LM")


def prompt_spectrum(
    scorer: Any, prompt: str, k: int = 8, generation: int = 0, iters: int = 30, method: str = "fd"
) -> Spectrum:
    """Spectrum of sym(H_Δ) of one generation of `prompt` on a `Scorer`'s checkpoint, where the
    detector measures it: at x_T (DDPM families), or after the sampler's lead Euler steps from x_1 (flow
    matching: `Scorer.start_map`) at the first measured timestep."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    seeds = scorer.seeds_for(prompt)
    e_c = scorer.embed([prompt])
    e_0 = scorer.null()
    with torch.no_grad():
        x = scorer.start_map(e_c, e_0)(scorer.noise([seeds[generation]]).to(torch.float32))
    s_fn = scorer.s_delta_fn(scorer.timesteps[0], e_c, e_0)
    with sdpa_kernel([SDPBackend.MATH]):
        return block_eigenvalues(s_fn, x, k=k, iters=iters, method=method)
