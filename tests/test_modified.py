"""Modified losses and fields against closed forms, dense oracles and slopes."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

import bea
from bea._tree import tree_ravel
from tests.conftest import assert_close, fitted_slope


def _quadratics(n: int = 4, count: int = 3, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    mats, vecs = [], []
    for _ in range(count):
        s = torch.randn(n, n, generator=gen, dtype=torch.float64)
        mats.append(s @ s.T / n + 0.5 * torch.eye(n, dtype=torch.float64))
        vecs.append(torch.randn(n, generator=gen, dtype=torch.float64))

    def make(a, b):
        return lambda p: 0.5 * p["x"] @ a @ p["x"] - b @ p["x"]

    losses = [make(a, b) for a, b in zip(mats, vecs)]
    theta = torch.randn(n, generator=gen, dtype=torch.float64)
    return losses, mats, vecs, theta


def test_igr_and_modified_loss_closed_form():
    losses, mats, vecs, theta = _quadratics(count=1)
    lr = 0.05
    g = mats[0] @ theta - vecs[0]
    assert_close(bea.igr(losses[0], {"x": theta}, lr), lr / 4 * g @ g, what="igr")
    value = bea.modified_loss(losses[0], lr)({"x": theta})
    assert_close(value, losses[0]({"x": theta}) + lr / 4 * g @ g, what="modified loss")
    # The gradient of the modified loss is the IGR field: g + (h/2) H g.
    field = bea.grad(bea.modified_loss(losses[0], lr), {"x": theta})["x"]
    assert_close(field, g + lr / 2 * mats[0] @ g, what="grad of modified loss")
    cancelled = bea.grad(bea.modified_loss(losses[0], lr, strength=-1.0), {"x": theta})["x"]
    assert_close(cancelled, g - lr / 2 * mats[0] @ g, what="strength -1")


def test_modified_loss_trains_with_autograd():
    """A modified term is differentiable with plain autograd on model parameters."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    loss = bea.bind(
        model, nn.functional.mse_loss, torch.randn(8, 3).double(), torch.randn(8, 1).double()
    )
    params = dict(model.named_parameters())
    total = bea.modified_loss(loss, 0.1)(params)
    total.backward()
    detached = bea.params_of(model)
    expected = bea.grad(bea.modified_loss(loss, 0.1), detached)
    for name, p in model.named_parameters():
        assert_close(p.grad, expected[name], what=f"autograd grad of {name}")


def _multitask_problem(weights=(0.7, 1.6, 1.0), seed=0):
    torch.manual_seed(seed)
    trunk = nn.Sequential(nn.Linear(5, 6), nn.Tanh())
    heads = nn.ModuleList([nn.Linear(6, 2) for _ in weights])

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.trunk, self.heads = trunk, heads

        def forward(self, x):
            features = self.trunk(x)
            return torch.stack([head(features) for head in self.heads])

    model = Net().double()
    x = torch.randn(10, 5, dtype=torch.float64)
    targets = torch.randn(len(weights), 10, 2, dtype=torch.float64)

    def task_loss(k):
        return bea.bind(model, lambda out, y, k=k: ((out[k] - y[k]) ** 2).mean(), x, targets)

    return model, [task_loss(k) for k in range(len(weights))], torch.tensor(weights).double()


def test_multitask_identity_and_parts():
    model, losses, alpha = _multitask_problem()
    params = bea.params_of(model)
    lr = 0.1
    terms = bea.multitask_terms(losses, params, lr, weights=alpha, shared="trunk")

    def total(p):
        return sum(a * loss(p) for a, loss in zip(alpha, losses))

    g = bea.grad(total, params)
    expected = total(params) + lr / 4 * bea.tree_dot(g, g)
    assert_close(terms.modified_loss, expected, rtol=1e-13, what="L̃ = L + (h/4)|∇L|²")
    assert terms.unshared_cross_total == 0.0  # heads are disjoint
    grads = [bea.grad(loss, params) for loss in losses]
    shared = [n for n in params if n.startswith("trunk.")]
    assert terms.shared_names == tuple(shared)
    for i in range(3):
        full = bea.tree_dot(grads[i], grads[i])
        assert_close(terms.igr[i], lr * alpha[i] ** 2 / 4 * full, what=f"igr[{i}]")
        for j in range(3):
            inner = sum((grads[i][n] * grads[j][n]).sum() for n in shared)
            expected_conflict = 0.0 if i == j else lr / 2 * alpha[i] * alpha[j] * inner
            assert_close(terms.conflict[i, j], expected_conflict, atol=1e-300, what=f"c[{i},{j}]")
            norm_i = sum((grads[i][n] ** 2).sum() for n in shared).sqrt()
            norm_j = sum((grads[j][n] ** 2).sum() for n in shared).sqrt()
            assert_close(terms.cosine[i, j], inner / (norm_i * norm_j), what=f"cos[{i},{j}]")
    assert_close(terms.conflict_total, torch.triu(terms.conflict, 1).sum(), what="total")


def test_multitask_all_parameters_equals_shared_trunk_with_disjoint_heads():
    model, losses, alpha = _multitask_problem(seed=2)
    params = bea.params_of(model)
    everything = bea.multitask_terms(losses, params, 0.2, weights=alpha)
    trunk = bea.multitask_terms(losses, params, 0.2, weights=alpha, shared="trunk")
    assert_close(everything.conflict_total, trunk.conflict_total, rtol=1e-13, what="conflict")
    assert_close(everything.modified_loss, trunk.modified_loss, rtol=1e-14, what="modified")


def test_multitask_conflict_cancellation_has_zero_conflict_gradient_term():
    """Training on L − conflict: its gradient is ∇L − ∇conflict, by autograd through the terms."""
    model, losses, alpha = _multitask_problem(seed=3)
    params = bea.params_of(model)

    def cancelled(p):
        terms = bea.multitask_terms(losses, p, 0.1, weights=alpha, shared="trunk")
        return terms.weighted_loss - terms.conflict_total

    def conflict(p):
        return bea.multitask_terms(losses, p, 0.1, weights=alpha, shared="trunk").conflict_total

    def weighted(p):
        return sum(a * loss(p) for a, loss in zip(alpha, losses))

    got = tree_ravel(bea.grad(cancelled, params))
    expected = tree_ravel(bea.grad(weighted, params)) - tree_ravel(bea.grad(conflict, params))
    assert_close(got, expected, what="grad of L - conflict")
    # The conflict gradient is a mixed HVP: (h/2) Σ_{i≠j} α_iα_j H_i^θ g_j^θ restricted to shared;
    # check it by finite differences of the conflict term in float64.
    direction = {k: torch.randn_like(v) for k, v in params.items()}
    eps = 1e-6
    plus = conflict({k: params[k] + eps * direction[k] for k in params})
    minus = conflict({k: params[k] - eps * direction[k] for k in params})
    fd = (plus - minus) / (2 * eps)
    analytic = bea.tree_dot(bea.grad(conflict, params), direction)
    assert_close(analytic, fd, rtol=1e-7, what="conflict directional derivative")


def test_sequential_field_order_one_closed_form():
    losses, mats, vecs, theta = _quadratics(count=3)
    params = {"x": theta}
    g = [a @ theta - b for a, b in zip(mats, vecs)]
    f1 = -0.5 * sum(a @ gk for a, gk in zip(mats, g))
    for i in range(3):
        for j in range(i + 1, 3):
            f1 = f1 + 0.5 * (mats[j] @ g[i] - mats[i] @ g[j])
    terms = bea.sequential_modified_terms(losses, params, order=1)
    assert_close(terms[0]["x"], -sum(g), what="f0")
    assert_close(terms[1]["x"], f1, what="f1")
    lr = 0.03
    field = bea.sequential_modified_field(losses, params, lr)["x"]
    assert_close(field, -sum(g) + lr * f1, what="f0 + h f1")
    # Two losses: f1 is -½(H1g1 + H2g2) + ½[g1, g2] with bea's own bracket.
    two = bea.sequential_modified_terms(losses[:2], params, order=1)[1]["x"]
    bracket = bea.lie_bracket(losses[0], losses[1], params)["x"]
    hg = bea.hvp(losses[0], params, {"x": g[0]})["x"] + bea.hvp(losses[1], params, {"x": g[1]})["x"]
    assert_close(two, -0.5 * hg + 0.5 * bracket, what="Theorem 4.2 field")


def test_sequential_field_on_network_matches_dense(small_bound):
    b = small_bound
    ha, hb = b.dense_hessian(b.loss_a), b.dense_hessian(b.loss_b)
    ga, gb = b.dense_grad(b.loss_a), b.dense_grad(b.loss_b)
    expected = -0.5 * (ha @ ga + hb @ gb) + 0.5 * (hb @ ga - ha @ gb)
    f1 = bea.sequential_modified_terms([b.loss_a, b.loss_b], b.params, order=1)[1]
    assert_close(tree_ravel(f1), expected, atol=1e-14, what="f1 (dense)")


def _gd(losses, theta, lr):
    x = theta.clone()
    for loss in losses:
        x = x - lr * bea.grad(loss, {"x": x})["x"]
    return x


def test_order_effect_slope():
    """θ_(1→2) − θ_(2→1) − h²[g1, g2] = O(h³)."""
    losses, _, _, theta = _quadratics(count=2, seed=5)
    quartic = [lambda p, f=f: f(p) + 0.1 * (p["x"] ** 4).sum() for f in losses]
    hs = [2.0**-k for k in range(4, 9)]
    errors = []
    for h in hs:
        swap = _gd(quartic, theta, h) - _gd(quartic[::-1], theta, h)
        predicted = bea.order_effect(quartic[0], quartic[1], {"x": theta}, h)["x"]
        errors.append(float((swap - predicted).norm()))
    slope = fitted_slope(hs, errors)
    assert abs(slope - 3) < 0.15, f"order-effect error slope {slope:.3f}, expected 3"


def _affine_flow(field, theta, time):
    """Exact flow of an affine field x ↦ M x + c (read off by differentiation) by expm."""
    n = theta.numel()
    m = torch.func.jacrev(field)(theta)
    c = field(torch.zeros_like(theta))
    augmented = np.zeros((n + 1, n + 1))
    augmented[:n, :n] = m.numpy()
    augmented[:n, n] = c.numpy()
    return torch.from_numpy(scipy.linalg.expm(time * augmented)[:n] @ np.append(theta.numpy(), 1.0))


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_sequential_field_drift_slopes_on_quadratics(steps):
    """Flow of f0 (+ h f1) for time h vs n GD steps: drift O(h²) and O(h³), by expm."""
    losses, _, _, theta = _quadratics(count=steps, seed=7)
    hs = [2.0**-k for k in range(6, 11)]
    drift = {0: [], 1: []}
    for h in hs:
        target = _gd(losses, theta, h)
        for order in (0, 1):

            def field(x, order=order, h=h):
                return bea.sequential_modified_field(losses, {"x": x}, h, order=order)["x"]

            drift[order].append(float((_affine_flow(field, theta, h) - target).norm()))
    for order, expected in ((0, 2), (1, 3)):
        slope = fitted_slope(hs, drift[order])
        assert abs(slope - expected) < 0.15, f"n={steps} order {order}: slope {slope:.3f}"


def test_sgd_on_igr_cancelled_loss_follows_gradient_flow_to_third_order():
    """One SGD step on L − (h/4)‖∇L‖² matches the gradient flow of L with drift O(h³);
    a plain SGD step only with O(h²)."""
    from bea.ode import rk4_flow

    gen = torch.Generator().manual_seed(8)
    a = torch.randn(4, 4, generator=gen, dtype=torch.float64)

    def loss(p):
        return torch.log1p((a @ p["x"]) ** 2).sum() + 0.1 * (p["x"] ** 4).sum()

    theta = {"x": torch.tensor([0.4, -0.3, 0.2, 0.1], dtype=torch.float64)}
    hs = [2.0**-k for k in range(4, 9)]
    drift = {"plain": [], "cancelled": []}
    for h in hs:
        exact, _ = rk4_flow(lambda p: bea.tree_scale(bea.grad(loss, p), -1.0), theta, h, 64)
        for name, strength in (("plain", 0.0), ("cancelled", -1.0)):
            g = bea.grad(bea.modified_loss(loss, h, strength=strength), theta)
            stepped = theta["x"] - h * g["x"]
            drift[name].append(float((stepped - exact["x"]).norm()))
    plain, cancelled = fitted_slope(hs, drift["plain"]), fitted_slope(hs, drift["cancelled"])
    assert abs(plain - 2) < 0.15, f"plain SGD drift slope {plain:.3f}, expected 2"
    assert abs(cancelled - 3) < 0.15, f"IGR-cancelled SGD drift slope {cancelled:.3f}, expected 3"
