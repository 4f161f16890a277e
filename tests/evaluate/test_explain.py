"""Integrated Gradients on small analytical models whose exact attributions are known."""

from __future__ import annotations

import math

import pytest
import torch

from shoestring.evaluate.explain import integrated_gradients


def test_product_and_linear_terms_match_closed_form() -> None:
    # f(x) = x1*x2 + 3*x3 from a zero baseline: along the path f = a^2 x1 x2 + 3 a x3, so
    # IG gives x1*x2/2 to each of x1 and x2 and 3*x3 to x3 (exact, any quadrature >= 2 points).
    def f(x: torch.Tensor) -> torch.Tensor:
        return x[:, 0] * x[:, 1] + 3 * x[:, 2]

    x = torch.tensor([[2.0, -1.5, 0.7]], dtype=torch.float64)
    res = integrated_gradients(f, x, torch.zeros_like(x), steps=8, tolerance=1e-5)
    attr = res["attributions"][0].tolist()
    assert attr == pytest.approx([-1.5, -1.5, 2.1], abs=1e-6)  # captum integrates in float32
    assert res["within_tolerance"] and res["gap"] < 1e-6
    assert res["f_x"] - res["f_baseline"] == pytest.approx(sum(attr))


def test_exponential_model_and_step_doubling() -> None:
    # f(x) = exp(sum x): every gradient on the path is exp(a*s), so IG_i = x_i (e^s - 1) / s.
    def f(x: torch.Tensor) -> torch.Tensor:
        return torch.exp(x.sum(dim=1))

    x = torch.tensor([[0.5, 1.0, -0.25, 0.75]], dtype=torch.float64)
    s = float(x.sum())
    exact = [float(v) * (math.exp(s) - 1) / s for v in x[0]]
    # A left Riemann sum under-estimates a growing integrand: 4 steps are far off, so the
    # step count must be doubled until the completeness gap is within 1%.
    res = integrated_gradients(f, x, torch.zeros_like(x), steps=4, max_steps=1024, tolerance=0.01, method="riemann_left")
    assert res["history"][0][1] > 0.01 and res["steps"] > 4 and res["within_tolerance"]
    assert [h[0] for h in res["history"]] == [4 * 2**i for i in range(len(res["history"]))]
    assert res["attributions"][0].tolist() == pytest.approx(exact, rel=0.02)
    # Gauss-Legendre (the default) is near exact at the first try.
    gl = integrated_gradients(f, x, torch.zeros_like(x), steps=16, tolerance=1e-5)
    assert gl["steps"] == 16 and gl["attributions"][0].tolist() == pytest.approx(exact, rel=1e-5)
    # With a cap the gap is reported honestly, not hidden.
    capped = integrated_gradients(f, x, torch.zeros_like(x), steps=4, max_steps=8, tolerance=1e-4, method="riemann_left")
    assert capped["steps"] == 8 and not capped["within_tolerance"] and capped["relative_gap"] > 1e-4


def test_batched_inputs_report_the_worst_example() -> None:
    def f(x: torch.Tensor) -> torch.Tensor:
        return (x**3).sum(dim=1)

    x = torch.tensor([[1.0, 2.0], [0.1, 0.2]], dtype=torch.float64)
    res = integrated_gradients(f, x, torch.zeros_like(x), steps=4, max_steps=4, tolerance=1e-9, method="riemann_left")
    per_example = (x**3).tolist()  # IG of x^3 from 0 is exactly x^3 per coordinate
    assert res["attributions"].shape == x.shape
    assert res["relative_gap"] > 0 and res["attributions"][0, 1].item() == pytest.approx(per_example[0][1], rel=0.5)
