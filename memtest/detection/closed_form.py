"""Closed-form score models with analytic Hessians (SPEC.md §2, "Why it works").

- `GaussianScore`: data N(μ, Σ) noised to level ᾱ: linear score, constant Hessian -(Σ_t)⁻¹.
- `EmpiricalScore`: the optimal denoiser of a finite training set (a mixture of point masses), which
  memorizes perfectly; the canonical model a detector must flag.

Both are callables x -> s(x) on batches (B, d) and give exact Hessians for testing metrics and for the
"ideal model" reference on the canary's own data.

Their flow-matching twins (../FAMILIES.md §2), for x_s = (1 − s) x0 + s ε with s ∈ (0, 1] (s = 1 is pure noise):

- `FlowGaussianScore`: data N(μ, Σ): marginal N((1 − s) μ, (1 − s)² Σ + s² I).
- `FlowEmpiricalScore`: the training points y_i: marginal (1/N) Σ_i N((1 − s) y_i, s² I).

Each gives the score and its Hessian (analytic) and, independently of them, the ideal velocity
v(x) = (x − E[x0 | x_s = x]) / s that a flow-matching transformer learns.
"""

from __future__ import annotations

import math

import torch


class GaussianScore:
    """Score of N(√ᾱ μ, ᾱ Σ + (1-ᾱ) I), the Gaussian N(μ, Σ) after forward noising to level ᾱ."""

    def __init__(self, mu: torch.Tensor, cov: torch.Tensor, abar: float) -> None:
        if not 0.0 < abar <= 1.0:
            raise ValueError(f"abar must be in (0, 1], got {abar}")
        self.d = mu.numel()
        self.mean = math.sqrt(abar) * mu.to(torch.float64)
        self.cov_t = abar * cov.to(torch.float64) + (1.0 - abar) * torch.eye(self.d, dtype=torch.float64)
        self.precision = torch.linalg.inv(self.cov_t)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = -(x - self.mean.to(x.dtype)) @ self.precision.to(x.dtype).T
        return out

    def hessian(self) -> torch.Tensor:
        out: torch.Tensor = -self.precision
        return out

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        chol = torch.linalg.cholesky(self.cov_t)
        z = torch.randn(n, self.d, dtype=torch.float64, generator=generator)
        out: torch.Tensor = self.mean + z @ chol.T
        return out


class EmpiricalScore:
    """Score of (1/N) Σ_i N(√ᾱ y_i, (1-ᾱ) I): the exact optimal denoiser of training points y_i."""

    def __init__(self, points: torch.Tensor, abar: float) -> None:
        if points.dim() != 2 or points.shape[0] < 1:
            raise ValueError("points must have shape (N, d) with N >= 1")
        if not 0.0 < abar < 1.0:
            raise ValueError(f"abar must be in (0, 1), got {abar}")
        self.centres = math.sqrt(abar) * points.to(torch.float64)
        self.var = 1.0 - abar

    def _weights(self, x: torch.Tensor) -> torch.Tensor:
        c = self.centres.to(x.dtype)
        sq = (x[:, None, :] - c[None, :, :]).pow(2).sum(-1)  # cdist has no forward-mode AD
        return torch.softmax(-sq / (2 * self.var), dim=1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        w = self._weights(x)
        return (w @ self.centres.to(x.dtype) - x) / self.var

    def hessian(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sample Hessians (B, d, d): -I/σ² + Cov_w(centres)/σ⁴."""
        w = self._weights(x)
        c = self.centres.to(x.dtype)
        mean = w @ c
        second = torch.einsum("bn,ni,nj->bij", w, c, c)
        cov = second - torch.einsum("bi,bj->bij", mean, mean)
        eye = torch.eye(x.shape[1], dtype=x.dtype)
        return -eye / self.var + cov / self.var**2


def analytic_sharpness(hessian: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """‖H s‖² per sample from explicit Hessians: hessian (d, d) or (B, d, d), score (B, d)."""
    hs = score @ hessian.T if hessian.dim() == 2 else torch.einsum("bij,bj->bi", hessian, score)
    return hs.pow(2).sum(dim=1)


def _check_flow_level(s: float) -> None:
    if not 0.0 < s <= 1.0:
        raise ValueError(f"flow-matching noise level s must be in (0, 1], got {s}")


class FlowGaussianScore:
    """N(μ, Σ) under flow-matching noise at level s: score, Hessian, posterior mean and ideal velocity."""

    def __init__(self, mu: torch.Tensor, cov: torch.Tensor, s: float) -> None:
        _check_flow_level(s)
        self.s = s
        self.d = mu.numel()
        self.mu = mu.to(torch.float64)
        self.cov = cov.to(torch.float64)
        self.mean = (1.0 - s) * self.mu
        self.cov_t = (1.0 - s) ** 2 * self.cov + s**2 * torch.eye(self.d, dtype=torch.float64)
        self.precision = torch.linalg.inv(self.cov_t)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = -(x - self.mean.to(x.dtype)) @ self.precision.to(x.dtype).T
        return out

    def hessian(self) -> torch.Tensor:
        out: torch.Tensor = -self.precision
        return out

    def denoised(self, x: torch.Tensor) -> torch.Tensor:
        """E[x0 | x_s = x] = μ + (1 − s) Σ Σ_s⁻¹ (x − (1 − s) μ)."""
        gain = (1.0 - self.s) * self.cov @ self.precision
        out: torch.Tensor = self.mu.to(x.dtype) + (x - self.mean.to(x.dtype)) @ gain.to(x.dtype).T
        return out

    def velocity(self, x: torch.Tensor) -> torch.Tensor:
        """The ideal velocity E[ε − x0 | x_s = x] = (x − E[x0 | x]) / s."""
        return (x - self.denoised(x)) / self.s

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        chol = torch.linalg.cholesky(self.cov_t)
        z = torch.randn(n, self.d, dtype=torch.float64, generator=generator)
        out: torch.Tensor = self.mean + z @ chol.T
        return out


class FlowEmpiricalScore:
    """Training points y_i under flow-matching noise at level s: the optimal (memorizing) model."""

    def __init__(self, points: torch.Tensor, s: float) -> None:
        if points.dim() != 2 or points.shape[0] < 1:
            raise ValueError("points must have shape (N, d) with N >= 1")
        _check_flow_level(s)
        self.s = s
        self.points = points.to(torch.float64)
        self.centres = (1.0 - s) * self.points
        self.var = s**2

    def _weights(self, x: torch.Tensor) -> torch.Tensor:
        c = self.centres.to(x.dtype)
        sq = (x[:, None, :] - c[None, :, :]).pow(2).sum(-1)  # cdist has no forward-mode AD
        return torch.softmax(-sq / (2 * self.var), dim=1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        w = self._weights(x)
        return (w @ self.centres.to(x.dtype) - x) / self.var

    def hessian(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sample Hessians (B, d, d): −I/s² + Cov_w((1 − s) y)/s⁴."""
        w = self._weights(x)
        c = self.centres.to(x.dtype)
        mean = w @ c
        second = torch.einsum("bn,ni,nj->bij", w, c, c)
        cov = second - torch.einsum("bi,bj->bij", mean, mean)
        eye = torch.eye(x.shape[1], dtype=x.dtype)
        return -eye / self.var + cov / self.var**2

    def denoised(self, x: torch.Tensor) -> torch.Tensor:
        """E[x0 | x_s = x]: the posterior-weighted training points."""
        return self._weights(x) @ self.points.to(x.dtype)

    def velocity(self, x: torch.Tensor) -> torch.Tensor:
        """The ideal velocity (x − E[x0 | x]) / s."""
        return (x - self.denoised(x)) / self.s


def flow_score_factor(s: float) -> float:
    """((1 − s)/s)²: H_Δ s_Δ = flow_score_factor(s) · J_Δv Δv at noise level s (FAMILIES.md §2)."""
    _check_flow_level(s)
    return ((1.0 - s) / s) ** 2
