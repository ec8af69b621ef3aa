"""The model-agnostic metrics against closed-form models with analytic Hessians."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from memtest.detection.closed_form import EmpiricalScore, GaussianScore, analytic_sharpness
from memtest.detection.eigen import hutchinson_trace, top_eigenvalues
from memtest.detection.metrics import hessian_vector_product, sharpness


@pytest.fixture(autouse=True)
def _float64_default() -> Any:
    # Closed-form checks run in float64; restore the default so other modules are unaffected.
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _gaussian(seed: int, d: int, abar: float) -> GaussianScore:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    scales = torch.rand(d, generator=g, dtype=torch.float64) * 2.0
    cov = a @ a.T / d * scales.mean() + 1e-3 * torch.eye(d, dtype=torch.float64)
    mu = torch.randn(d, generator=g, dtype=torch.float64)
    return GaussianScore(mu, cov, abar)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    d=st.integers(1, 12),
    abar=st.floats(0.01, 0.99),
    method=st.sampled_from(["jvp", "fd", "fd-forward"]),
)
def test_sharpness_matches_gaussian_closed_form(seed: int, d: int, abar: float, method: str) -> None:
    model = _gaussian(seed, d, abar)
    x = model.sample(5, torch.Generator().manual_seed(seed + 1))
    got = sharpness(model, x, method=method, h=1e-5)
    want = analytic_sharpness(model.hessian(), model(x))
    # The Gaussian score is linear, so even finite differences are exact up to round-off.
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    d=st.integers(1, 8),
    n_points=st.integers(1, 6),
    abar=st.floats(0.05, 0.9),
    method=st.sampled_from(["jvp", "fd"]),
)
def test_sharpness_matches_optimal_denoiser_closed_form(
    seed: int, d: int, n_points: int, abar: float, method: str
) -> None:
    g = torch.Generator().manual_seed(seed)
    points = torch.rand(n_points, d, generator=g, dtype=torch.float64) * 2 - 1
    model = EmpiricalScore(points, abar)
    x = torch.randn(4, d, generator=g, dtype=torch.float64)
    got = sharpness(model, x, method=method, h=1e-5)
    want = analytic_sharpness(model.hessian(x), model(x))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-10)


def test_hvp_methods_agree_and_fd_forward_reuses_base_point() -> None:
    model = EmpiricalScore(torch.tensor([[0.5, -0.2, 0.1], [-0.4, 0.3, 0.9]]), 0.3)
    x = torch.randn(3, 3, generator=torch.Generator().manual_seed(0))
    v = torch.randn(3, 3, generator=torch.Generator().manual_seed(1))
    exact = hessian_vector_product(model, x, v, method="jvp")
    want = torch.einsum("bij,bj->bi", model.hessian(x), v)
    torch.testing.assert_close(exact, want)
    fwd = hessian_vector_product(model, x, v, method="fd-forward", h=1e-6, s_at_x=model(x))
    torch.testing.assert_close(fwd, want, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="Unknown method 'exact'"):
        hessian_vector_product(model, x, v, method="exact")
    with pytest.raises(ValueError, match="same shape"):
        hessian_vector_product(model, x, v[:2], method="jvp")


def test_gaussian_identities_hold_to_monte_carlo_accuracy() -> None:
    # E||s||^2 = -tr H and E||Hs||^2 = -tr H^3 for x drawn from the noised Gaussian itself.
    model = _gaussian(7, 6, 0.4)
    x = model.sample(40_000, torch.Generator().manual_seed(3))
    s = model(x)
    h = model.hessian()
    s2 = s.pow(2).sum(1)
    hs2 = sharpness(model, x, method="jvp")
    for samples, expected in ((s2, -torch.trace(h)), (hs2, -torch.trace(h @ h @ h))):
        stderr = samples.std() / math.sqrt(samples.numel())
        assert abs(samples.mean() - expected) < 5 * stderr, (samples.mean(), expected, stderr)


def test_lanczos_matches_eigvalsh_of_analytic_hessian() -> None:
    model = _gaussian(11, 40, 0.2)
    x = model.sample(1, torch.Generator().manual_seed(0))
    exact = np.linalg.eigvalsh(model.hessian().numpy())
    got = top_eigenvalues(model, x, k=5, which="SA")
    np.testing.assert_allclose(got.eigenvalues, exact[:5], rtol=1e-6)
    top = top_eigenvalues(model, x, k=3, which="LA")
    np.testing.assert_allclose(top.eigenvalues, exact[-3:], rtol=1e-6)


def test_lanczos_on_optimal_denoiser_point_hessian() -> None:
    g = torch.Generator().manual_seed(5)
    model = EmpiricalScore(torch.rand(4, 12, generator=g) * 2 - 1, 0.5)
    x = torch.randn(1, 12, generator=g)
    exact = np.linalg.eigvalsh(model.hessian(x)[0].numpy())
    got = top_eigenvalues(model, x, k=3, which="SA")
    np.testing.assert_allclose(got.eigenvalues, exact[:3], rtol=1e-6)


def test_hutchinson_trace_estimates_trace() -> None:
    model = _gaussian(2, 20, 0.5)
    x = model.sample(1, torch.Generator().manual_seed(0))
    mean, stderr = hutchinson_trace(model, x, samples=400, seed=1)
    exact = float(torch.trace(model.hessian()))
    assert stderr > 0
    assert abs(mean - exact) < 5 * stderr + 1e-9


def test_block_iteration_matches_largest_magnitude_eigenvalues() -> None:
    from memtest.detection.eigen import block_eigenvalues

    g = torch.Generator().manual_seed(3)
    q = torch.linalg.qr(torch.randn(30, 30, generator=g))[0]
    spectrum = torch.cat([-torch.tensor([40.0, 25.0, 12.0]), -torch.rand(27, generator=g)])
    h = q @ torch.diag(spectrum) @ q.T

    def s_delta(x: torch.Tensor) -> torch.Tensor:
        return x @ h.T

    got = block_eigenvalues(s_delta, torch.randn(1, 30, generator=g), k=3, iters=40)
    np.testing.assert_allclose(got.eigenvalues, [-40.0, -25.0, -12.0], rtol=1e-6)


def test_prompt_spectrum_on_a_real_unet(tiny_eps: object) -> None:
    torch.set_default_dtype(torch.float32)
    from memtest.detection.eigen import prompt_spectrum
    from memtest.detection.scoring import Scorer, ScoreSettings

    scorer = Scorer(tiny_eps, ScoreSettings(n=1))
    spec = prompt_spectrum(scorer, "zorblax poster of 3", k=2, iters=3)
    assert len(spec.eigenvalues) == 2 and all(math.isfinite(v) for v in spec.eigenvalues)
    assert list(spec.eigenvalues) == sorted(spec.eigenvalues)
