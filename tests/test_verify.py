"""Drift-order checks at small sizes: the slopes of the theory, and honest failures."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bea.expansion import gd_steps, terms_function
from bea.functional import bind, params_of
from bea.modified import sequential_modified_terms
from bea.verify import (
    check_drift,
    continual_checks,
    fit_slope,
    gd_checks,
    h_grid,
    multitask_checks,
    order_effect_check,
    quadratic_checks,
    reshuffling_check,
)

DTYPE = torch.float64


class TwoHeads(nn.Module):
    def __init__(self, index: int, trunk: nn.Module, heads: nn.ModuleList):
        super().__init__()
        self.trunk, self.heads, self.index = trunk, heads, index

    def forward(self, x):
        return self.heads[self.index](self.trunk(x))


def small_problem(activation=nn.Tanh, seed=0):
    """A 4 → 5 → 3 MLP on random data, three class-group tasks, two heads."""
    torch.manual_seed(seed)
    x = 0.8 * torch.randn(24, 4, dtype=DTYPE)
    y = torch.arange(24) % 3
    trunk = nn.Sequential(nn.Linear(4, 5), activation()).to(DTYPE)
    heads = nn.ModuleList([nn.Linear(5, 3), nn.Linear(5, 2)]).to(DTYPE)
    single = nn.Sequential(trunk, heads[0])
    criterion = nn.functional.cross_entropy
    tasks = [bind(single, criterion, x[y == k], y[y == k]) for k in range(3)]
    views = [TwoHeads(0, trunk, heads), TwoHeads(1, trunk, heads)]
    multitask = [bind(views[0], criterion, x, y), bind(views[1], criterion, x, y % 2)]
    return {
        "batch": bind(single, criterion, x, y),
        "tasks": tasks,
        "params": params_of(single),
        "multitask": multitask,
        "multitask_params": params_of(views[0]),
        "x": x,
    }


@pytest.fixture(scope="module")
def problem():
    return small_problem()


def assert_passed(checks):
    failed = [(c.name, c.fitted_slope, c.local_slopes, c.notes) for c in checks if not c.passed]
    assert not failed, failed


def test_fit_slope_of_an_exact_power_law():
    h = h_grid(2, 6)
    slope, passed, notes, local = fit_slope(h, [5 * x**3 for x in h], 3.0)
    assert math.isclose(slope, 3.0, abs_tol=1e-9) and passed and not notes
    assert all(math.isclose(s, 3.0, abs_tol=1e-9) for s in local)


def test_fit_slope_reports_curvature_instead_of_passing():
    h = h_grid(0, 6)
    drift = [x**3 + 0.05 * x**2 for x in h]  # the h² term wins only at small h
    slope, passed, notes, _ = fit_slope(h, drift, 2.0)
    assert not passed and any("curvature" in n for n in notes), (slope, notes)


def test_fit_slope_drops_points_at_the_rounding_floor():
    h = h_grid(2, 7)
    drift = [1e-6 * x**4 for x in h]
    slope, passed, notes, _ = fit_slope(h, drift, 4.0, floor=1e-13)
    assert any("rounding floor at h = 2^-6, 2^-7" in n for n in notes), notes
    assert passed and math.isclose(slope, 4.0, abs_tol=1e-9)
    _, passed, notes, _ = fit_slope(h, drift, 4.0, floor=1e-10)
    assert not passed and any("fewer than 3" in n for n in notes)


def test_fit_slope_flags_large_integration_error():
    h = h_grid(2, 6)
    drift = [x**2 for x in h]
    _, passed, notes, _ = fit_slope(h, drift, 2.0, integration_error=[d / 10 for d in drift])
    assert not passed and any("integration error" in n for n in notes)


def test_gd_slopes(problem):
    """(The order-2 field's slope is tested in test_expansion.py.)"""
    grid = h_grid(3, 6)
    checks = gd_checks(
        problem["batch"],
        problem["params"],
        {"gradient-flow": grid, "igr-flow": grid},
        orders=("gradient-flow", "igr-flow"),
    )
    assert [c.expected_slope for c in checks] == [2.0, 3.0]
    assert_passed(checks)


def test_a_wrong_claim_fails(problem):
    """Gradient flow claimed to order 3: the checker must say no."""
    step = gd_steps([problem["batch"]])
    check = check_drift(step, problem["params"], terms_function(step, 0), 3.0, h_grid(3, 6))
    assert not check.passed and abs(check.fitted_slope - 2.0) < 0.15


def test_multitask_slopes(problem):
    grid = h_grid(3, 6)
    checks = multitask_checks(
        problem["multitask"],
        problem["multitask_params"],
        {"gradient-flow": grid, "modified": grid},
        weights=(1.0, 0.5),
        shared="trunk",
    )
    assert [c.expected_slope for c in checks] == [2.0, 3.0, 2.0, 2.0]
    assert_passed(checks)


def test_continual_slopes(problem):
    """(Order 2 for two steps is tested in test_expansion.py.)"""
    grid = h_grid(3, 6)
    checks = continual_checks(
        problem["tasks"][:2],
        problem["params"],
        {"gradient-flow": grid, "modified": grid},
        order2=False,
    )
    assert [c.expected_slope for c in checks] == [2.0, 2.0, 3.0, 2.0]
    assert_passed(checks)


@pytest.mark.parametrize("count", [3])
def test_n_steps_and_reshuffling(problem, count):
    losses = problem["tasks"][:count]
    grid = h_grid(3, 6)
    sequence = check_drift(
        gd_steps(losses),
        problem["params"],
        lambda s: sequential_modified_terms(losses, s, 1),
        3.0,
        grid,
    )
    shuffled = reshuffling_check(losses, problem["params"], grid)
    assert_passed([sequence, shuffled])


def test_order_effect(problem):
    first, second = problem["tasks"][:2]
    assert_passed([order_effect_check(first, second, problem["params"], h_grid(3, 7))])


def test_quadratics_against_expm():
    generator = torch.Generator().manual_seed(0)
    matrices = []
    for _ in range(2):
        q = torch.randn(4, 4, generator=generator, dtype=DTYPE)
        matrices.append(q @ q.T / 4 + 0.5 * torch.eye(4, dtype=DTYPE))
    offsets = [torch.randn(4, generator=generator, dtype=DTYPE) for _ in range(2)]
    theta = torch.randn(4, generator=generator, dtype=DTYPE)
    grid = h_grid(4, 8)
    checks = quadratic_checks(
        matrices, offsets, theta, {"order0": grid, "order1": grid, "order2": grid}
    )
    assert_passed(checks)
    assert {c.name for c in checks} >= {
        "quadratic-continual-bracket",
        "quadratic-bracket-closed-form",
    }


def test_relu_model_reports_pattern_flips():
    relu = small_problem(nn.ReLU, seed=1)
    x = relu["x"]

    def pattern(p):
        return x @ p["0.0.weight"].T + p["0.0.bias"]

    checks = gd_checks(
        relu["batch"],
        relu["params"],
        {"gradient-flow": [0.5, 0.25, 2.0**-9, 2.0**-10, 2.0**-11]},
        pattern=pattern,
        orders=("gradient-flow",),
    )
    flips = checks[0].extra["pattern_flips"]
    assert len(flips) == 5 and flips[0] > 0 and flips[-1] == 0, flips
    assert any("left out of the fit: activation pattern flipped" in n for n in checks[0].notes)


@pytest.mark.parametrize(
    ("grid", "error", "message"),
    [
        (
            [0.1, -0.05, 0.025],
            ValueError,
            r"check_drift: every h must be a finite number > 0, got -0.05",
        ),
        ([0.1, 0.05], ValueError, r"check_drift: need at least 3 values of h"),
        ("abc", TypeError, r"check_drift: h grid must be a sequence of numbers"),
    ],
)
def test_bad_grids(problem, grid, error, message):
    step = gd_steps([problem["batch"]])
    with pytest.raises(error, match=message):
        check_drift(step, problem["params"], terms_function(step, 0), 2.0, grid)


def test_h_grid_needs_three_points():
    with pytest.raises(ValueError, match=r"h_grid: need integers with k_last >= k_first \+ 2"):
        h_grid(3, 4)


def test_record_is_json_ready(problem):
    import json

    step = gd_steps([problem["batch"]])
    check = check_drift(
        step, problem["params"], terms_function(step, 1), 3.0, h_grid(3, 5), name="gd-x"
    )
    record = json.loads(json.dumps(check.as_record()))
    assert record["name"] == "gd-x" and record["expected_slope"] == 3.0
    assert len(record["h"]) == len(record["drift"]) == 3


def test_non_finite_drift_fails_the_check_and_says_so():
    from bea.verify import fit_slope

    hs = [2.0**-k for k in range(3, 9)]
    drift = [h**3 for h in hs]
    slope, passed, _, _ = fit_slope(hs, drift, 3.0)
    assert passed and abs(slope - 3) < 1e-9
    drift[2] = float("nan")
    slope, passed, notes, _ = fit_slope(hs, drift, 3.0)
    assert not passed
    assert any("drift is not finite at h = 2^-5" in note for note in notes), notes
