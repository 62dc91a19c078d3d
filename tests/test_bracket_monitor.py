"""Bracket monitor against float64 oracles: dense Hessians, explicit steps, slope tests."""

import math

import numpy as np
import pytest
import torch

from bea._tree import tree_ravel, tree_unravel
from bea.diagnostics.bracket_monitor import BracketMonitor, bracket_step_diagnostics
from bea.loggers import MemoryLogger

DTYPE = torch.float64


def _mlp(activation):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), activation(), torch.nn.Linear(5, 2)).to(
        DTYPE
    )
    return model


def _batch(seed, n=6):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=gen, dtype=DTYPE)
    y = torch.randint(0, 2, (n,), generator=gen)
    return x, y


def _loss(model, x, y):
    names = [n for n, _ in model.named_parameters()]

    def loss(params):
        out = torch.func.functional_call(model, {n: params[n] for n in names}, (x,))
        return torch.nn.functional.cross_entropy(out, y)

    return loss


@pytest.fixture
def tanh_setup():
    model = _mlp(torch.nn.Tanh)
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = [_loss(model, *_batch(s)) for s in (1, 2, 3)]
    return params, losses


def _dense(loss, params):
    """Flat gradient and dense Hessian by torch.func on the raveled parameters."""
    flat = tree_ravel(params)

    def flat_loss(v):
        return loss(tree_unravel(v, params))

    return (
        torch.func.grad(flat_loss)(flat),
        torch.func.jacrev(torch.func.jacrev(flat_loss))(flat),
        flat_loss,
    )


def test_bracket_quantities_match_dense_hessians(tanh_setup):
    params, (loss_a, loss_b, _) = tanh_setup
    g_a, H_a, _ = _dense(loss_a, params)
    g_b, H_b, _ = _dense(loss_b, params)
    bracket = H_b @ g_a - H_a @ g_b
    rec = bracket_step_diagnostics(loss_a, loss_b, params, 0.1, order_effect=False)
    norm = bracket.norm().item()
    assert rec["bracket_norm"] == pytest.approx(norm, rel=1e-10)
    assert rec["bracket_relative"] == pytest.approx(
        norm / (g_a.norm() * g_b.norm()).item(), rel=1e-10
    )
    assert rec["bracket_push"] == pytest.approx((g_a @ bracket).item(), rel=1e-9, abs=1e-14)
    cosine = (g_a @ g_b / (g_a.norm() * g_b.norm())).item()
    assert rec["grad_cosine"] == pytest.approx(cosine, rel=1e-10)


def test_loss_change_decomposition_matches_dense_and_sums(tanh_setup):
    params, (loss_a, loss_b, loss_old) = tanh_setup
    h = 0.05
    g_old, H_old, flat_old = _dense(loss_old, params)
    g_new, _, _ = _dense(loss_b, params)
    rec = bracket_step_diagnostics(loss_a, loss_b, params, h, old_loss=loss_old, order_effect=False)
    first = (-h * g_old @ g_new).item()
    curvature = (0.5 * h * h * g_new @ H_old @ g_new).item()
    flat = tree_ravel(params)
    measured = (flat_old(flat - h * g_new) - flat_old(flat)).item()
    assert rec["delta_first_order"] == pytest.approx(first, rel=1e-10)
    assert rec["delta_curvature"] == pytest.approx(curvature, rel=1e-9)
    assert rec["delta_measured"] == pytest.approx(measured, rel=1e-10)
    total = rec["delta_first_order"] + rec["delta_curvature"] + rec["delta_rest"]
    assert total == pytest.approx(measured, rel=1e-12, abs=1e-16)
    # the bracket of the old loss against the new batch, too
    _, H_b, _ = _dense(loss_b, params)
    old_bracket = H_b @ g_old - H_old @ g_new
    assert rec["old_bracket_norm"] == pytest.approx(old_bracket.norm().item(), rel=1e-10)


def _slope(hs, values):
    return np.polyfit(np.log(hs), np.log(np.abs(values)), 1)[0]


def test_remainder_of_the_loss_change_is_third_order(tanh_setup):
    params, (loss_a, loss_b, loss_old) = tanh_setup
    hs = [2.0**-k for k in range(5, 10)]
    rests = [
        bracket_step_diagnostics(loss_a, loss_b, params, h, old_loss=loss_old, order_effect=False)[
            "delta_rest"
        ]
        for h in hs
    ]
    slope = _slope(hs, rests)
    assert 2.7 < slope < 3.3, f"delta_rest ~ h^{slope:.2f}, expected h^3; rests={rests}"


def test_order_effect_prediction_error_is_third_order(tanh_setup):
    params, (loss_a, loss_b, _) = tanh_setup
    hs = [2.0**-k for k in range(5, 10)]
    recs = [bracket_step_diagnostics(loss_a, loss_b, params, h) for h in hs]
    # ‖θ_ab - θ_ba - h²[g_a, g_b]‖ = relative error × ‖θ_ab - θ_ba‖ must shrink as h³
    errors = [r["order_effect_error"] * r["order_effect_measured"] for r in recs]
    slope = _slope(hs, errors)
    assert 2.7 < slope < 3.3, f"order-effect error ~ h^{slope:.2f}, expected h^3"
    # and the measured order effect itself is second order, matching h²‖[g_a, g_b]‖
    small = recs[-1]
    assert small["order_effect_measured"] == pytest.approx(
        small["order_effect_predicted"], rel=0.05
    )
    loss_slope = _slope(hs, [r["order_loss_measured"] - r["order_loss_predicted"] for r in recs])
    assert loss_slope > 2.7, f"order-loss error ~ h^{loss_slope:.2f}, expected >= h^3"


def test_disjoint_losses_commute_exactly():
    params = {"u": torch.tensor([1.0, -2.0], dtype=DTYPE), "v": torch.tensor([0.5], dtype=DTYPE)}

    def loss_u(p):
        return (p["u"] ** 4).sum() + 0.0 * p["v"].sum()

    def loss_v(p):
        return torch.cosh(p["v"]).sum() + 0.0 * p["u"].sum()

    rec = bracket_step_diagnostics(loss_u, loss_v, params, 0.1)
    assert rec["bracket_norm"] == 0.0
    assert rec["order_effect_measured"] == 0.0


def _relu_switches(model):
    """Independent counter: hidden units whose sign pattern differs on a probe batch."""
    probe, _ = _batch(99, n=20)
    names = [n for n, _ in model.named_parameters()]

    def pattern(params):
        hidden = torch.func.functional_call(
            model[0], {"weight": params[names[0]], "bias": params[names[1]]}, (probe,)
        )
        return hidden > 0

    return lambda before, after: int((pattern(before) != pattern(after)).sum())


def test_relu_switches_are_counted_and_flagged():
    model = _mlp(torch.nn.ReLU)
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss_a, loss_b = (_loss(model, *_batch(s)) for s in (1, 2))
    counter = _relu_switches(model)
    big = bracket_step_diagnostics(loss_a, loss_b, params, 5.0, count_switches=counter)
    assert big["units_switched"] > 0
    assert "units_switched" in big["flags"] and not big["valid"]
    tiny = bracket_step_diagnostics(loss_a, loss_b, params, 1e-6, count_switches=counter)
    assert tiny["units_switched"] == 0
    assert "units_switched" not in tiny["flags"]


def test_monitor_schedule_and_groups(tanh_setup):
    params, (loss_a, loss_b, loss_c) = tanh_setup
    logger = MemoryLogger()
    monitor = BracketMonitor(0.1, every=100, around=2, logger=logger, order_effect=False)
    tasks = [0, 0, 0, 0, 1, 1, 1, 1]
    measured = []
    for step, task in enumerate(tasks):
        loss = (loss_a, loss_b)[step % 2] if task == 0 else (loss_c, loss_a)[step % 2]
        if monitor.observe(step, params, loss, task) is not None:
            measured.append(step)
    # step 0 (every divides it) has no previous batch; the switch at 4 and one step after
    assert measured == [4, 5]
    summary = monitor.summary()
    assert summary["cross"]["bracket_norm"]["count"] == 1
    assert summary["within"]["bracket_norm"]["count"] == 1
    steps, values = logger.series("bracket/bracket_relative")
    assert steps == [4, 5] and all(v > 0 for v in values)
    assert logger.records[0]["bracket/cross_task"] is True
    # One cross (step 4) and one within (step 5) record: the ratio is theirs, read from the log.
    assert summary["ratio"]["bracket_relative"] == pytest.approx(values[0] / values[1])


def test_monitor_known_switch_and_state_round_trip(tanh_setup):
    params, (loss_a, loss_b, _) = tanh_setup
    monitor = BracketMonitor(0.1, every=100, around=1, switch_steps=[3], order_effect=False)
    got = [monitor.observe(s, params, (loss_a, loss_b)[s % 2], 0) is not None for s in range(4)]
    assert got == [False, False, True, False]  # the step just before the known switch
    clone = BracketMonitor(0.1, every=100, around=1, order_effect=False)
    clone.load_state_dict(monitor.state_dict())
    assert clone.summary() == monitor.summary()
    assert not clone.due(5, 0)  # no previous batch after a restore ...
    clone.remember(loss_a, 0)
    assert clone.due(100, 0)  # ... until remember() gives one


BAD = [
    (
        lambda: BracketMonitor(-0.1),
        ValueError,
        r"BracketMonitor: lr must be a finite number > 0, got -0.1",
    ),
    (
        lambda: BracketMonitor(0.1, every=0),
        ValueError,
        r"BracketMonitor: every must be an int >= 1, got 0",
    ),
    (
        lambda: BracketMonitor(0.1, logger=object()),
        TypeError,
        r"BracketMonitor: logger must have a log",
    ),
    (
        lambda: bracket_step_diagnostics(lambda p: p["x"].sum(), "nope", {"x": torch.ones(2)}, 0.1),
        TypeError,
        r"bracket_step_diagnostics: batch_loss must be callable",
    ),
    (
        lambda: bracket_step_diagnostics(
            lambda p: p["x"].sum(),
            lambda p: p["x"].sum(),
            {"x": torch.ones(2)},
            0.1,
            validity_ratio=0,
        ),
        ValueError,
        r"validity_ratio must be a number > 0, got 0",
    ),
]


@pytest.mark.parametrize("call, error, match", BAD, ids=[b[2][:40] for b in BAD])
def test_bad_input_is_named(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_float32_in_gives_finite_float_records():
    model = _mlp(torch.nn.Tanh).float()
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    x, y = _batch(1)
    loss_a = _loss(model, x.float(), y)
    x, y = _batch(2)
    loss_b = _loss(model, x.float(), y)
    rec = bracket_step_diagnostics(loss_a, loss_b, params, 0.1)
    assert all(
        math.isfinite(rec[k]) for k in ("bracket_norm", "delta_measured", "order_effect_error")
    )


def test_non_finite_loss_change_is_flagged_not_valid():
    """A step into a region where the old loss is NaN must not be reported as valid."""
    from bea.diagnostics.bracket_monitor import bracket_step_diagnostics

    params = {"x": torch.tensor([0.5, 1.0], dtype=torch.float64)}

    def old(p):
        return torch.sqrt(p["x"]).sum()

    def new(p):
        return (3.0 * p["x"]).sum()  # the step x - h*3 goes negative at h = 1

    record = bracket_step_diagnostics(old, new, params, 1.0, order_effect=False)
    assert math.isnan(record["delta_measured"])
    assert "non_finite" in record["flags"].split(",")
    assert record["valid"] is False
