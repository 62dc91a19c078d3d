"""Continual strategies against float64 oracles (dense Hessians, hand values, slopes)."""

import numpy as np
import pytest
import torch

from bea._tree import tree_ravel, tree_unravel
from bea.derivatives import lie_bracket
from bea.experiments import continual_strategies as cs

DTYPE = torch.float64


def _setup():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3)).to(
        DTYPE
    )
    params = {n: p.detach().clone() for n, p in model.named_parameters()}

    def loss_fn(p, x, y):
        return torch.nn.functional.cross_entropy(torch.func.functional_call(model, p, (x,)), y)

    gen = torch.Generator().manual_seed(1)
    batch = (
        torch.randn(8, 3, generator=gen, dtype=DTYPE),
        torch.randint(0, 3, (8,), generator=gen),
    )
    replay = (
        torch.randn(8, 3, generator=gen, dtype=DTYPE),
        torch.randint(0, 3, (8,), generator=gen),
    )
    return params, loss_fn, batch, replay


def _dense(loss_fn, params, batch):
    flat = tree_ravel(params)

    def f(v):
        return loss_fn(tree_unravel(v, params), *batch)

    return torch.func.grad(f)(flat), torch.func.jacrev(torch.func.jacrev(f))(flat)


def _slope(hs, values):
    return np.polyfit(np.log(hs), np.log(values), 1)[0]


def test_palindrome_drops_the_bracket_that_the_sequential_order_keeps():
    params, loss_fn, batch, replay = _setup()
    g_n, H_n = _dense(loss_fn, params, batch)
    g_m, H_m = _dense(loss_fn, params, replay)
    flat = tree_ravel(params)
    hs = [2.0**-k for k in range(2, 7)]
    errors_sym, errors_gap = [], []
    for h in hs:
        sym = tree_ravel(
            cs.make_strategy("symmetric_replay").step(params, loss_fn, batch, replay, h, 1)
        )
        seq = tree_ravel(
            cs.make_strategy("sequential_replay").step(params, loss_fn, batch, replay, h, 1)
        )
        predicted_sym = (
            -(h / 2) * (g_n + g_m)
            + (h * h / 8) * (H_n @ g_m + H_m @ g_n)
            + (h * h / 16) * H_m @ g_m
        )
        bracket = H_m @ g_n - H_n @ g_m  # [g_new, g_mem]
        predicted_gap = (h * h / 8) * bracket - (h * h / 16) * H_m @ g_m
        errors_sym.append((sym - flat - predicted_sym).norm().item())
        errors_gap.append((seq - sym - predicted_gap).norm().item())
    assert 2.7 < _slope(hs, errors_sym) < 3.4, f"symmetric step error slopes {errors_sym}"
    assert 2.7 < _slope(hs, errors_gap) < 3.4, f"sequential - symmetric error slopes {errors_gap}"


def test_replay_step_is_sgd_on_the_mean_loss():
    params, loss_fn, batch, replay = _setup()
    g_n, _ = _dense(loss_fn, params, batch)
    g_m, _ = _dense(loss_fn, params, replay)
    new = cs.make_strategy("replay").step(params, loss_fn, batch, replay, 0.1, 1)
    expected = tree_ravel(params) - 0.1 * 0.5 * (g_n + g_m)
    torch.testing.assert_close(tree_ravel(new), expected, rtol=1e-12, atol=1e-14)
    # first task: no memory yet, so replay trains like naive
    first = cs.make_strategy("replay").step(params, loss_fn, batch, None, 0.1, 0)
    torch.testing.assert_close(tree_ravel(first), tree_ravel(params) - 0.1 * g_n)


def test_agem_projection_by_hand():
    g = {"x": torch.tensor([1.0, -2.0], dtype=DTYPE)}
    ref = {"x": torch.tensor([0.0, 2.0], dtype=DTYPE)}
    # <g, ref> = -4, |ref|^2 = 4: g - (-1) ref = (1, 0)
    torch.testing.assert_close(cs.agem_project(g, ref)["x"], torch.tensor([1.0, 0.0], dtype=DTYPE))
    aligned = {"x": torch.tensor([1.0, 1.0], dtype=DTYPE)}
    torch.testing.assert_close(cs.agem_project(aligned, ref)["x"], aligned["x"])


def test_agem_step_never_increases_the_replay_loss_to_first_order():
    params, loss_fn, batch, replay = _setup()
    g_m, _ = _dense(loss_fn, params, replay)
    new = cs.make_strategy("agem").step(params, loss_fn, batch, replay, 0.1, 1)
    displacement = tree_ravel(new) - tree_ravel(params)
    assert (g_m @ displacement).item() <= 1e-12


def test_ewc_penalty_and_fisher_by_hand():
    params = {"w": torch.tensor([1.0, 2.0], dtype=DTYPE)}
    anchors = [
        ({"w": torch.tensor([2.0, 0.5], dtype=DTYPE)}, {"w": torch.tensor([0.0, 0.0], dtype=DTYPE)})
    ]
    # (3/2) * (2 * 1 + 0.5 * 4) = 6
    assert cs.ewc_penalty(params, anchors, 3.0).item() == pytest.approx(6.0)
    _, loss_fn, batch, _ = _setup()
    model_params = _setup()[0]
    fisher = cs.empirical_fisher_diagonal(loss_fn, model_params, *batch, chunk=3)
    squares = [
        torch.func.grad(lambda p, i=i: loss_fn(p, batch[0][i : i + 1], batch[1][i : i + 1]))(
            model_params
        )
        for i in range(batch[0].shape[0])
    ]
    for k in fisher:
        expected = torch.stack([s[k] ** 2 for s in squares]).mean(0)
        torch.testing.assert_close(fisher[k], expected, rtol=1e-10, atol=1e-14)


def test_ewc_step_pulls_towards_the_anchor():
    params, loss_fn, batch, _ = _setup()
    ewc = cs.make_strategy("ewc", strength=10.0, fisher_samples=8)
    ewc.end_task(params, loss_fn, 0, *batch)
    moved = {k: v + 0.1 for k, v in params.items()}
    plain = cs.make_strategy("naive").step(moved, loss_fn, batch, None, 0.01, 1)
    pulled = ewc.step(moved, loss_fn, batch, None, 0.01, 1)
    fisher, anchor = ewc.anchors[0]
    for k in params:  # the extra displacement is exactly -h * λ F (θ - θ*)
        torch.testing.assert_close(
            pulled[k] - plain[k],
            -0.01 * 10.0 * fisher[k] * (moved[k] - anchor[k]),
            rtol=1e-10,
            atol=1e-14,
        )


def test_bracket_penalty_is_the_squared_bracket_and_differentiable():
    params, loss_fn, batch, replay = _setup()
    value = cs.bracket_penalty(loss_fn, params, replay, batch)
    bracket = lie_bracket(lambda p: loss_fn(p, *replay), lambda p: loss_fn(p, *batch), params)
    assert value.item() == pytest.approx(
        sum((b**2).sum() for b in bracket.values()).item(), rel=1e-10
    )
    # gradient against a central finite difference along a random direction
    gradient = torch.func.grad(lambda p: cs.bracket_penalty(loss_fn, p, replay, batch))(params)
    direction = {k: torch.randn_like(v) for k, v in params.items()}
    eps = 1e-5
    plus = cs.bracket_penalty(
        loss_fn, {k: params[k] + eps * direction[k] for k in params}, replay, batch
    )
    minus = cs.bracket_penalty(
        loss_fn, {k: params[k] - eps * direction[k] for k in params}, replay, batch
    )
    fd = (plus - minus).item() / (2 * eps)
    analytic = sum((gradient[k] * direction[k]).sum() for k in params).item()
    assert analytic == pytest.approx(fd, rel=1e-6)


def test_replay_buffer_is_seeded_and_samples():
    x = torch.arange(20, dtype=DTYPE)[:, None]
    y = torch.arange(20)
    one, two = cs.ReplayBuffer(5, seed=3), cs.ReplayBuffer(5, seed=3)
    one.add_task(0, x, y)
    two.add_task(0, x, y)
    assert len(one) == 5 and torch.equal(one.x[0], two.x[0])
    xb, yb = one.sample(3, torch.Generator().manual_seed(0))
    assert xb.shape == (3, 1) and set(yb.tolist()) <= set(one.y[0].tolist())
    restored = cs.ReplayBuffer(5, seed=3)
    restored.load_state_dict(one.state_dict())
    assert len(restored) == 5


BAD = [
    (
        lambda: cs.ReplayBuffer(5).sample(3, torch.Generator()),
        ValueError,
        r"ReplayBuffer.sample: the replay buffer is empty",
    ),
    (lambda: cs.ReplayBuffer(0), ValueError, r"ReplayBuffer: per_task must be an int >= 1, got 0"),
    (
        lambda: cs.make_strategy("agem").step(*_setup()[:3], None, 0.1, 2),
        ValueError,
        r"agem: task 2 needs a replay batch but the replay buffer is empty",
    ),
    (
        lambda: cs.make_strategy("magic"),
        ValueError,
        r"unknown strategy 'magic' \(known: naive, replay",
    ),
    (
        lambda: cs.make_strategy("naive", strength=1.0),
        TypeError,
        r"naive: unexpected options \['strength'\]",
    ),
    (
        lambda: cs.make_strategy("ewc", strength=-1.0),
        ValueError,
        r"ewc: strength must be >= 0, got -1.0",
    ),
]


def _twice():
    buffer = cs.ReplayBuffer(2)
    buffer.add_task(0, torch.zeros(3, 1), torch.zeros(3, dtype=torch.long))
    buffer.add_task(0, torch.zeros(3, 1), torch.zeros(3, dtype=torch.long))


BAD.append((_twice, ValueError, r"task 0 is already stored"))


@pytest.mark.parametrize("call, error, match", BAD, ids=[b[2][:40] for b in BAD])
def test_bad_input_is_named(call, error, match):
    with pytest.raises(error, match=match):
        call()
