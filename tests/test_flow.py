"""Flow matching (FAMILIES.md §2): the velocity-space metric against closed forms, and the SD3 / Flux families."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from memtest.closed_form import (
    FlowEmpiricalScore,
    FlowGaussianScore,
    analytic_sharpness,
    flow_score_factor,
)
from memtest.metrics import hessian_vector_product

Fn = Callable[[torch.Tensor], torch.Tensor]

# -- closed forms -----------------------------------------------------------------------------------


def _gaussian_pair(seed: int, d: int, s: float) -> tuple[FlowGaussianScore, FlowGaussianScore]:
    """A narrow conditional Gaussian (a prompt close to memorized) and a broad unconditional one."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    broad = a @ a.T / d + 0.5 * torch.eye(d, dtype=torch.float64)
    b = torch.randn(d, d, generator=g, dtype=torch.float64)
    narrow = 0.05 * b @ b.T / d + 1e-3 * torch.eye(d, dtype=torch.float64)
    mu_c = torch.randn(d, generator=g, dtype=torch.float64)
    mu_0 = 0.3 * torch.randn(d, generator=g, dtype=torch.float64)
    return FlowGaussianScore(mu_c, narrow, s), FlowGaussianScore(mu_0, broad, s)


def _difference(cond: Fn, uncond: Fn) -> Fn:
    return lambda x: cond(x) - uncond(x)


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return float(((got - want).norm() / want.norm()).item())


@pytest.mark.parametrize("s", [0.3, 0.7, 0.95, 0.993])
@pytest.mark.parametrize(("method", "tol"), [("jvp", 1e-4), ("fd", 1e-2)])
def test_velocity_product_times_factor_is_the_gaussian_score_product(s: float, method: str, tol: float) -> None:
    """((1 - s)/s)^2 J_dv dv = H_delta s_delta, with H_delta and s_delta from the analytic scores."""
    cond, uncond = _gaussian_pair(0, 6, s)
    x = uncond.sample(5, torch.Generator().manual_seed(1))
    dv = _difference(cond.velocity, uncond.velocity)
    product = hessian_vector_product(dv, x, dv(x), method=method)  # default fd step, as memtest scores
    s_delta = cond(x) - uncond(x)
    h_delta = cond.hessian() - uncond.hessian()
    want = s_delta @ h_delta.T
    assert _rel(flow_score_factor(s) * product, want) <= tol
    sharp = product.pow(2).sum(1) * flow_score_factor(s) ** 2
    assert _rel(sharp, analytic_sharpness(h_delta, s_delta)) <= 2 * tol
    # and s_delta itself is -((1 - s)/s) dv
    torch.testing.assert_close(-((1 - s) / s) * dv(x), s_delta, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("s", [0.5, 0.8, 0.95, 0.99])
@pytest.mark.parametrize(("method", "tol"), [("jvp", 1e-4), ("fd", 1e-2)])
def test_velocity_product_times_factor_is_the_empirical_score_product(s: float, method: str, tol: float) -> None:
    """The optimal (memorizing) model of a training set: a prompt of 2 points against all 12."""
    g = torch.Generator().manual_seed(3)
    points = torch.randn(12, 5, generator=g, dtype=torch.float64)
    cond, uncond = FlowEmpiricalScore(points[:2], s), FlowEmpiricalScore(points, s)
    x = torch.randn(4, 5, generator=g, dtype=torch.float64)
    dv = _difference(cond.velocity, uncond.velocity)
    product = hessian_vector_product(dv, x, dv(x), method=method)
    s_delta = cond(x) - uncond(x)
    h_delta = cond.hessian(x) - uncond.hessian(x)
    want = torch.einsum("bij,bj->bi", h_delta, s_delta)
    assert _rel(flow_score_factor(s) * product, want) <= tol
    sharp = product.pow(2).sum(1) * flow_score_factor(s) ** 2
    assert _rel(sharp, analytic_sharpness(h_delta, s_delta)) <= 2 * tol


@pytest.mark.parametrize("method", ["jvp", "fd"])
def test_ideal_sharpness_at_s_one_is_zero_for_every_prompt(method: str) -> None:
    """At s = 1 the ideal velocity is x - E[x0 | c]: dv is constant in x, so J_dv dv = 0 (while ||dv|| is not)."""
    g = torch.Generator().manual_seed(5)
    points = torch.randn(20, 8, generator=g, dtype=torch.float64)
    x = torch.randn(4, 8, generator=g, dtype=torch.float64)
    uncond = FlowEmpiricalScore(points, 1.0)
    gauss_c, gauss_0 = _gaussian_pair(2, 8, 1.0)
    pairs = [(FlowEmpiricalScore(points[i : i + 1], 1.0).velocity, uncond.velocity) for i in range(3)]
    pairs.append((gauss_c.velocity, gauss_0.velocity))
    for vc, v0 in pairs:
        dv = _difference(vc, v0)
        u = dv(x)
        sharp = hessian_vector_product(dv, x, u, method=method).pow(2).sum(1)
        assert float(sharp.max()) < 1e-20 * float(u.pow(2).sum(1).min()) ** 2
        assert float(u.norm(dim=1).min()) > 0.1  # Wen's score norm is not degenerate there
    assert flow_score_factor(1.0) == 0.0


def test_one_guided_euler_step_separates_memorized_prompts() -> None:
    """FAMILIES.md §5 in small: after one guided Euler step from x_1, prompts conditioned on one training
    point are sharper than prompts conditioned on many; at s = 1 nothing separates them."""
    g = torch.Generator().manual_seed(0)
    d, n_points = 16, 60
    points = torch.randn(n_points, d, generator=g, dtype=torch.float64)
    mem = [points[i : i + 1] for i in range(6)]
    non = [points[torch.randperm(n_points, generator=g)[:15]] for _ in range(6)]
    x1 = torch.randn(4, d, generator=g, dtype=torch.float64)

    def score(pts: torch.Tensor, s: float) -> float:
        x = x1.clone()
        if s < 1.0:
            vc, v0 = FlowEmpiricalScore(pts, 1.0).velocity(x), FlowEmpiricalScore(points, 1.0).velocity(x)
            x = x + (s - 1.0) * (v0 + 7.5 * (vc - v0))
        dv = _difference(FlowEmpiricalScore(pts, s).velocity, FlowEmpiricalScore(points, s).velocity)
        return float(hessian_vector_product(dv, x, dv(x), method="jvp").pow(2).sum(1).mean())

    s = 0.97
    assert min(score(p, s) for p in mem) > 10 * max(score(p, s) for p in non)
    assert max(score(p, 1.0) for p in mem + non) < 1e-20
