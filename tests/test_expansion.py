"""The expansion engine against closed forms built from dense derivatives (float64).

Oracles: ``torch.func.hessian`` and ``jacfwd(hessian)`` of a tiny tanh MLP give ``H``
and the third-derivative tensor ``T``; Hairer's order-2 formula, the order-1 field of
``n`` steps (design.md §1.3), and hand-derived fields of heavy-ball and preconditioned
steps are then checked term by term, and the orders are measured as drift slopes.
"""

from __future__ import annotations

import pytest
import torch
from torch.func import grad, hessian, jacfwd

from bea._tree import tree_ravel, tree_unravel
from bea.expansion import (
    check_identity_at_zero,
    gd_steps,
    heavy_ball_state,
    heavy_ball_step,
    modified_field,
    modified_field_functions,
    modified_field_terms,
    preconditioned_step,
    split_heavy_ball_state,
    terms_function,
)
from bea.verify import check_drift, h_grid

DTYPE = torch.float64


def tiny_mlp_losses(count: int, seed: int = 0):
    """``count`` tanh-MLP regression losses (3 → 4 → 2) on disjoint batches, and a point."""
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return scale * torch.randn(*shape, generator=generator, dtype=DTYPE)

    params = {"w1": randn(4, 3, scale=0.6), "b1": randn(4, scale=0.3), "w2": randn(2, 4, scale=0.6)}
    losses = []
    for _ in range(count):
        x, y = randn(5, 3, scale=0.7), randn(5, 2, scale=0.5)

        def loss(p, x=x, y=y):
            return 0.25 * ((torch.tanh(x @ p["w1"].T + p["b1"]) @ p["w2"].T - y) ** 2).mean()

        losses.append(loss)
    return losses, params


def dense(loss, params):
    """``(g, H, T)`` of ``loss`` at ``params`` on the flat vector."""
    flat = tree_ravel(params)

    def flat_loss(x):
        return loss(tree_unravel(x, params))

    return grad(flat_loss)(flat), hessian(flat_loss)(flat), jacfwd(hessian(flat_loss))(flat)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_one_step_matches_hairer_order_two():
    (loss,), params = tiny_mlp_losses(1)
    g, H, T = dense(loss, params)
    f0, f1, f2 = (tree_ravel(t) for t in modified_field_terms(gd_steps([loss]), params, 2))
    # f = -g: f'f = H g, f'f'f = -H² g, f''(f, f) = -T[g, g]
    expected_f2 = -(1 / 12) * torch.einsum("ijk,j,k->i", T, g, g) - (1 / 3) * H @ H @ g
    assert relative(f0, -g) < 1e-12, relative(f0, -g)
    assert relative(f1, -0.5 * H @ g) < 1e-12, relative(f1, -0.5 * H @ g)
    assert relative(f2, expected_f2) < 1e-10, f"f2 differs by {relative(f2, expected_f2):.2e}"


@pytest.mark.parametrize("count", [2, 3], ids=["n2", "n3"])
def test_n_steps_match_order_one_closed_form(count):
    losses, params = tiny_mlp_losses(count)
    parts = [dense(loss, params)[:2] for loss in losses]
    expected_f0 = -sum(g for g, _ in parts)
    expected_f1 = -0.5 * sum(H @ g for g, H in parts)
    for i in range(count):
        for j in range(i + 1, count):
            (g_i, H_i), (g_j, H_j) = parts[i], parts[j]
            expected_f1 = expected_f1 + 0.5 * (H_j @ g_i - H_i @ g_j)
    f0, f1 = (tree_ravel(t) for t in modified_field_terms(gd_steps(losses), params, 1))
    assert relative(f0, expected_f0) < 1e-12
    assert relative(f1, expected_f1) < 1e-12, f"f1 differs by {relative(f1, expected_f1):.2e}"


def test_terms_function_and_field_functions_agree_with_terms():
    losses, params = tiny_mlp_losses(2)
    step = gd_steps(losses)
    shared = terms_function(step, 2)(params)
    separate = [f(params) for f in modified_field_functions(step, 2)]
    for a, b in zip(shared, separate, strict=True):
        assert relative(tree_ravel(a), tree_ravel(b)) < 1e-13


def test_modified_field_sums_the_terms():
    losses, params = tiny_mlp_losses(2)
    h = 0.07
    terms = modified_field_terms(gd_steps(losses), params, 2)
    field = modified_field(gd_steps(losses), 2, lr=h)(params)
    expected = sum(h**k * tree_ravel(t) for k, t in enumerate(terms))
    assert relative(tree_ravel(field), expected) < 1e-14


@pytest.mark.parametrize("count", [1, 2, 3], ids=["n1", "n2", "n3"])
def test_order_two_fields_have_drift_slope_four(count):
    losses, params = tiny_mlp_losses(count, seed=1)
    step = gd_steps(losses)
    check = check_drift(step, params, terms_function(step, 2), 4.0, h_grid(3, 6))
    assert check.passed, (check.fitted_slope, check.local_slopes, check.notes)


def test_heavy_ball_order_one_closed_form():
    (loss,), params = tiny_mlp_losses(1)
    gamma = 0.7
    velocity = {k: 0.3 * torch.ones_like(v) for k, v in params.items()}
    state = heavy_ball_state(params, velocity)
    g, H, _ = dense(loss, params)
    v = tree_ravel(velocity)
    f0, f1 = modified_field_terms(heavy_ball_step(loss, gamma), state, 1)
    theta0, v0 = (tree_ravel(t) for t in split_heavy_ball_state(f0))
    theta1, v1 = (tree_ravel(t) for t in split_heavy_ball_state(f1))
    # f0 = (v, -γv - g); f1 = (-(γv + g)/2, -(γ²v + γg - Hv)/2)
    assert relative(theta0, v) < 1e-13
    assert relative(v0, -gamma * v - g) < 1e-13
    assert relative(theta1, -0.5 * (gamma * v + g)) < 1e-12
    assert relative(v1, -0.5 * (gamma**2 * v + gamma * g - H @ v)) < 1e-12


@pytest.mark.parametrize("order", [1, 2])
def test_heavy_ball_drift_orders(order):
    (loss,), params = tiny_mlp_losses(1, seed=2)
    state = heavy_ball_state(params, {k: 0.2 * torch.ones_like(v) for k, v in params.items()})
    step = heavy_ball_step(loss, 0.5)
    check = check_drift(step, state, terms_function(step, order), order + 2.0, h_grid(3, 6))
    assert check.passed, (check.fitted_slope, check.local_slopes, check.notes)


def test_diagonal_preconditioner_closed_form():
    (loss,), params = tiny_mlp_losses(1)
    diagonal = {
        k: 0.5 + torch.arange(v.numel(), dtype=DTYPE).reshape(v.shape) / v.numel()
        for k, v in params.items()
    }
    P = torch.diag(tree_ravel(diagonal))
    g, H, _ = dense(loss, params)
    f0, f1 = (
        tree_ravel(t) for t in modified_field_terms(preconditioned_step(loss, diagonal), params, 1)
    )
    assert relative(f0, -P @ g) < 1e-13
    assert relative(f1, -0.5 * P @ H @ P @ g) < 1e-12


def test_state_dependent_preconditioner_drift_order_three():
    (loss,), params = tiny_mlp_losses(1, seed=3)

    def rms_like(p, g):  # P(θ) = 1 / (1 + θ²), elementwise
        return {k: g[k] / (1 + p[k] ** 2) for k in g}

    step = preconditioned_step(loss, rms_like)
    check = check_drift(step, params, terms_function(step, 1), 3.0, h_grid(3, 7))
    assert check.passed, (check.fitted_slope, check.local_slopes, check.notes)


def test_quadratic_order_two_closed_form():
    generator = torch.Generator().manual_seed(0)
    A = torch.randn(4, 4, generator=generator, dtype=DTYPE)
    A = A @ A.T / 4 + torch.eye(4, dtype=DTYPE)
    b = torch.randn(4, generator=generator, dtype=DTYPE)
    theta = {"x": torch.randn(4, generator=generator, dtype=DTYPE)}

    def loss(p):
        return 0.5 * p["x"] @ A @ p["x"] - b @ p["x"]

    residual = A @ theta["x"] - b
    terms = modified_field_terms(gd_steps([loss]), theta, 2)
    expected = [-residual, -0.5 * A @ residual, -(1 / 3) * A @ A @ residual]
    for k, (term, value) in enumerate(zip(terms, expected, strict=True)):
        assert relative(term["x"], value) < 1e-13, f"f{k}"


def test_float32_in_gives_float32_out():
    (loss,), params = tiny_mlp_losses(1)
    params32 = {k: v.float() for k, v in params.items()}
    terms = modified_field_terms(
        gd_steps([lambda p: loss({k: v.double() for k, v in p.items()}).float()]), params32, 1
    )
    assert all(v.dtype == torch.float32 for t in terms for v in t.values())


def test_map_not_identity_at_zero_is_rejected():
    def shifted(state, h):
        return {"x": state["x"] + 1.0 + h * state["x"]}

    with pytest.raises(
        ValueError, match=r"modified_field_terms: step is not the identity at h = 0"
    ):
        modified_field_terms(shifted, {"x": torch.ones(2, dtype=DTYPE)}, 1)
    with pytest.raises(ValueError, match=r"check_drift: step is not the identity"):
        check_drift(shifted, {"x": torch.ones(2, dtype=DTYPE)}, lambda s: [s], 2.0, h_grid(3, 5))


def test_step_returning_other_keys_is_rejected():
    with pytest.raises(ValueError, match=r"must return a dict with the keys of state"):
        check_identity_at_zero("demo", lambda s, h: {"y": s["x"]}, {"x": torch.ones(2)})


@pytest.mark.parametrize(
    ("order", "error", "message"),
    [(-1, ValueError, "order must be >= 0, got -1"), (1.5, TypeError, "order must be an int")],
)
def test_bad_order(order, error, message):
    (loss,), params = tiny_mlp_losses(1)
    with pytest.raises(error, match=message):
        modified_field_terms(gd_steps([loss]), params, order)


def test_bad_lr_and_preconditioner():
    (loss,), params = tiny_mlp_losses(1)
    with pytest.raises(
        ValueError, match=r"modified_field: lr must be a finite number > 0, got -0.1"
    ):
        modified_field(gd_steps([loss]), 1, lr=-0.1)
    with pytest.raises(TypeError, match=r"preconditioned_step: preconditioner must be"):
        preconditioned_step(loss, 3.0)
    with pytest.raises(ValueError, match=r"heavy_ball_step: gamma must be a finite number"):
        heavy_ball_step(loss, float("nan"))
    with pytest.raises(ValueError, match=r"split_heavy_ball_state: state must hold"):
        split_heavy_ball_state({"w": torch.ones(1)})
