"""Multitask methods: gradients against torch.func oracles built on the core's modified terms."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch.func import functional_call

import bea
from bea.experiments.methods import (
    ScipyDualConeProjector,
    make_method,
    task_weights,
)
from bea.experiments.models import multitask_mlp

LR = 0.2


def problem(seed=0):
    torch.manual_seed(seed)
    model = multitask_mlp(4, [1, 1], hidden=(5,), activation="tanh", seed=seed).double()
    x = torch.randn(16, 4, dtype=torch.float64)
    y = torch.randn(16, 2, dtype=torch.float64)
    params = dict(model.named_parameters())
    shared = [n for n in params if n.startswith("trunk.")]
    heads = [n for n in params if n not in shared]

    def losses_at(p):
        out = functional_call(model, p, (x,))
        return [((out[k].squeeze(-1) - y[:, k]) ** 2).mean() for k in range(2)]

    return model, params, shared, heads, losses_at


def method_grads(name, alpha, strength=None, seed=0):
    model, params, shared, heads, losses_at = problem(seed)
    losses = torch.stack(losses_at(params))
    update = make_method(name, strength=strength)
    grads, _ = update(losses, alpha, [params[n] for n in shared], [params[n] for n in heads], LR)
    return dict(zip(shared + heads, grads, strict=True)), params, losses_at, shared


def oracle(objective, params):
    detached = {n: p.detach() for n, p in params.items()}
    return torch.func.grad(objective)(detached)


def assert_trees_close(a, b, rtol=1e-9):
    for name in b:
        assert torch.allclose(a[name], b[name], rtol=rtol, atol=1e-12), (
            f"{name}: max abs diff {(a[name] - b[name]).abs().max():.3e}"
        )


def test_task_weights_reduction():
    assert task_weights([1.0, 3.0], 2, "sum").tolist() == [1.0, 3.0]
    assert task_weights(None, 4, "mean").tolist() == [0.25] * 4
    with pytest.raises(ValueError, match="need 2 weights"):
        task_weights([1.0], 2, "sum")
    with pytest.raises(ValueError, match="reduction must be 'sum' or 'mean', got 'avg'"):
        task_weights(None, 2, "avg")


@pytest.mark.parametrize("k", [-1.0, 0.0, 2.5])
def test_conflict_knob_is_the_gradient_of_L_plus_k_conflict_term(k):
    alpha = torch.tensor([1.0, 0.5], dtype=torch.float64)
    grads, params, losses_at, shared = method_grads("conflict", alpha, strength=k)

    def objective(p):
        losses = [lambda q, i=i: losses_at(q)[i] for i in range(2)]
        terms = bea.multitask_terms(losses, p, LR, weights=alpha, shared=shared)
        return terms.weighted_loss + k * terms.conflict_total

    assert_trees_close(grads, oracle(objective, params))


def test_cancel_is_k_minus_one_and_k_zero_is_sgd():
    alpha = torch.ones(2, dtype=torch.float64)
    cancel, *_ = method_grads("cancel", alpha)
    knob, *_ = method_grads("conflict", alpha, strength=-1.0)
    assert_trees_close(cancel, knob, rtol=0)
    zero, *_ = method_grads("conflict", alpha, strength=0.0)
    sgd, *_ = method_grads("sgd", alpha)
    assert_trees_close(zero, sgd)


def test_igr_method_is_the_gradient_of_the_modified_loss():
    alpha = torch.tensor([2.0, 1.0], dtype=torch.float64)
    grads, params, losses_at, _ = method_grads("igr", alpha, strength=1.0)

    def weighted(p):
        a, b = losses_at(p)
        return 2.0 * a + b

    assert_trees_close(grads, oracle(bea.modified_loss(weighted, LR), params))


def test_align_penalty_gradient():
    alpha = torch.ones(2, dtype=torch.float64)
    grads, params, losses_at, shared = method_grads("align", alpha, strength=0.3)

    def objective(p):
        losses = [lambda q, i=i: losses_at(q)[i] for i in range(2)]
        terms = bea.multitask_terms(losses, p, LR, shared=shared)
        return terms.weighted_loss + 0.3 * (1 - terms.cosine[0, 1])

    assert_trees_close(grads, oracle(objective, params))


def test_sum_aggregator_equals_sgd():
    alpha = torch.tensor([1.0, 0.5], dtype=torch.float64)
    summed, *_ = method_grads("sum", alpha)
    sgd, *_ = method_grads("sgd", alpha)
    assert_trees_close(summed, sgd)


def test_pcgrad_removes_the_conflicting_component_for_two_tasks():
    alpha = torch.ones(2, dtype=torch.float64)
    grads, params, losses_at, shared = method_grads("pcgrad", alpha, seed=3)
    detached = {n: p.detach() for n, p in params.items()}
    g = [bea.grad(lambda q, i=i: losses_at(q)[i], detached) for i in range(2)]
    g1, g2 = (torch.cat([gi[n].reshape(-1) for n in shared]) for gi in g)
    update = torch.cat([grads[n].reshape(-1) for n in shared])
    if g1 @ g2 < 0:  # PCGrad: project each onto the normal plane of the other, then add
        expected = (g1 - (g1 @ g2) / (g2 @ g2) * g2) + (g2 - (g1 @ g2) / (g1 @ g1) * g1)
    else:
        expected = g1 + g2
    assert torch.allclose(update, expected, rtol=1e-6, atol=1e-9)


def test_scipy_projector_solves_the_dual_cone_program():
    torch.manual_seed(0)
    jacobian = torch.randn(3, 6, dtype=torch.float64)
    gram = jacobian @ jacobian.T
    weights = torch.eye(3, dtype=torch.float64)
    projector = ScipyDualConeProjector(norm_eps=0.0, reg_eps=0.0)
    v = projector(weights, gram)
    assert (v >= weights - 1e-9).all()
    # KKT: the gradient 2 G v is >= 0 and vanishes where the bound is not active
    for row, u in zip(v, weights, strict=True):
        slope = 2 * gram @ row
        assert (slope >= -1e-6).all()
        free = row > u + 1e-6
        assert torch.allclose(slope[free], torch.zeros_like(slope[free]), atol=1e-6)


def test_upgrad_update_does_not_conflict_with_any_task():
    alpha = torch.ones(2, dtype=torch.float64)
    grads, params, losses_at, shared = method_grads("upgrad", alpha, seed=3)
    detached = {n: p.detach() for n, p in params.items()}
    update = torch.cat([grads[n].reshape(-1) for n in shared])
    for i in range(2):
        g = bea.grad(lambda q, i=i: losses_at(q)[i], detached)
        assert torch.cat([g[n].reshape(-1) for n in shared]) @ update >= -1e-8


@pytest.mark.parametrize(
    "name", ["gradvac", "mgda", "graddrop", "imtlg", "alignedmtl", "cagrad_scipy", "mean"]
)
def test_other_aggregators_run(name):
    grads, params, *_ = method_grads(name, torch.ones(2, dtype=torch.float64))
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert set(grads) == set(params)


@pytest.mark.parametrize(
    ("name", "strength", "message"),
    [
        ("adam", None, r"make_method: unknown method 'adam'"),
        ("conflict", None, r"method 'conflict' needs a strength"),
        ("cancel", 1.0, r"'cancel' fixes strength = -1, got 1\.0"),
        ("pcgrad", 0.5, r"method 'pcgrad' takes no strength, got 0\.5"),
        ("igr", float("nan"), r"strength must be finite"),
    ],
)
def test_bad_methods(name, strength, message):
    with pytest.raises(ValueError, match=message):
        make_method(name, strength=strength)


@pytest.mark.skipif(importlib.util.find_spec("cvxpy") is not None, reason="cvxpy installed")
@pytest.mark.parametrize("name", ["cagrad", "nashmtl"])
def test_optional_aggregators_name_their_packages(name):
    with pytest.raises(ImportError, match=rf"method '{name}' needs the packages cvxpy"):
        make_method(name)


def test_a_large_knob_drives_the_cosine_with_the_predicted_sign():
    """Full-batch steps on L + k·conflict: k = +20 misaligns, k = -20 aligns the tasks."""
    from bea.experiments.data import multi_digits

    data = multi_digits(0, flatten=True, num_train=128)
    x, y = data.x_train, data.y_train

    def cosine_after(k):
        model = multitask_mlp(128, {"l": 10, "r": 10}, hidden=(16,), seed=0)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
        update = make_method("conflict", strength=k)
        params = dict(model.named_parameters())
        shared = [p for n, p in params.items() if n.startswith("trunk.")]
        heads = [p for n, p in params.items() if not n.startswith("trunk.")]
        for _ in range(25):
            out = model(x)
            losses = torch.stack(
                [torch.nn.functional.cross_entropy(out[i], y[:, i]) for i in (0, 1)]
            )
            grads, _ = update(losses, torch.ones(2), shared, heads, 0.2)
            for p, g in zip(shared + heads, grads, strict=True):
                p.grad = g
            optimizer.step()
        out = model(x)
        g = [
            torch.cat(
                [
                    t.reshape(-1)
                    for t in torch.autograd.grad(
                        torch.nn.functional.cross_entropy(out[i], y[:, i]),
                        shared,
                        retain_graph=True,
                    )
                ]
            )
            for i in (0, 1)
        ]
        return float(g[0] @ g[1] / (g[0].norm() * g[1].norm()))

    amplified, plain, cancelled = cosine_after(20.0), cosine_after(0.0), cosine_after(-20.0)
    assert amplified < plain < cancelled, (amplified, plain, cancelled)
    assert amplified < -0.5 and cancelled > 0.2, (amplified, cancelled)


def test_scipy_cagrad_weights_minimize_the_dual_objective():
    from bea.experiments.methods import ScipyCAGrad

    torch.manual_seed(1)
    jacobian = torch.randn(2, 7, dtype=torch.float64)
    jacobian[1] = -0.8 * jacobian[0] + 0.3 * torch.randn(7, dtype=torch.float64)
    gram = (jacobian @ jacobian.T).numpy()
    cagrad = ScipyCAGrad(c=0.5)
    w = cagrad.weights(gram)
    radius = cagrad.radius(gram)

    def objective(a):
        v = torch.tensor([a, 1 - a], dtype=torch.float64).numpy()
        return v @ gram @ [0.5, 0.5] + radius * (v @ gram @ v + 1e-8) ** 0.5

    grid = min(objective(a / 2000) for a in range(2001))
    assert abs(w.sum() - 1) < 1e-9 and (w >= -1e-9).all()
    assert objective(w[0]) <= grid + 1e-7, (objective(w[0]), grid)
    mean = ScipyCAGrad(c=0.0)(jacobian)
    assert torch.allclose(mean, jacobian.mean(dim=0), atol=1e-6)


@pytest.mark.skipif(importlib.util.find_spec("cvxpy") is None, reason="needs torchjd[full]")
def test_nash_mtl_and_cagrad_improve_every_task_to_first_order():
    """Nash-MTL solves (Gα)_i = 1/α_i, so ⟨g_i, d⟩ = 1/α_i > 0 for every task; CAGrad with
    c < 1 keeps ⟨d, g_0⟩ > 0 for the mean gradient g_0."""
    alpha = torch.ones(2, dtype=torch.float64)
    for name in ("nashmtl", "cagrad"):
        grads, params, losses_at, shared = method_grads(name, alpha, seed=3)
        update = torch.cat([grads[n].reshape(-1) for n in shared])
        detached = {n: p.detach() for n, p in params.items()}
        task_grads = [
            torch.cat([g[n].reshape(-1) for n in shared])
            for g in (bea.grad(lambda q, i=i, f=losses_at: f(q)[i], detached) for i in range(2))
        ]
        if name == "nashmtl":
            assert all(float(g @ update) > 0 for g in task_grads), name
        else:
            assert float((task_grads[0] + task_grads[1]) @ update) > 0, name
