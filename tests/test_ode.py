"""Flow integrators against the exact flow of a linear system (``expm``), float64."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bea.ode import flow, rk4_flow, scipy_flow

DTYPE = torch.float64


@pytest.fixture
def linear_system():
    """``y' = A y + c`` on a dict with two leaves, and its exact flow."""
    generator = torch.Generator().manual_seed(0)
    A = 0.6 * torch.randn(5, 5, generator=generator, dtype=DTYPE)
    c = torch.randn(5, generator=generator, dtype=DTYPE)
    y0 = torch.randn(5, generator=generator, dtype=DTYPE)

    def field(state):
        y = torch.cat([state["a"].reshape(-1), state["b"].reshape(-1)])
        out = A @ y + c
        return {"a": out[:2].reshape(2, 1), "b": out[2:]}

    def exact(T):
        augmented = torch.zeros(6, 6, dtype=DTYPE)
        augmented[:5, :5], augmented[:5, 5] = A, c
        return (
            torch.linalg.matrix_exp(T * augmented) @ torch.cat([y0, torch.ones(1, dtype=DTYPE)])
        )[:5]

    state = {"a": y0[:2].reshape(2, 1).clone(), "b": y0[2:].clone()}
    return field, state, exact


def flat(state):
    return torch.cat([state["a"].reshape(-1), state["b"].reshape(-1)])


def test_scipy_reference_matches_expm(linear_system):
    field, state, exact = linear_system
    result = scipy_flow(field, state, 0.8)
    error = float((flat(result.state) - exact(0.8)).norm() / exact(0.8).norm())
    assert error < 1e-12, error
    assert result.method == "dop853" and 0 < float(result.error) < 1e-9


def test_rk4_converges_with_order_four(linear_system):
    field, state, exact = linear_system
    errors = [
        float((flat(rk4_flow(field, state, 0.8, steps)[0]) - exact(0.8)).norm())
        for steps in (2, 4, 8, 16)
    ]
    slopes = -np.diff(np.log2(errors))
    assert np.all(np.abs(slopes - 4) < 0.2), slopes


def test_displacement_is_state_minus_start(linear_system):
    field, state, _ = linear_system
    end, displacement = rk4_flow(field, state, 0.3, 3)
    for key in state:
        torch.testing.assert_close(end[key], state[key] + displacement[key], rtol=0, atol=0)


def test_step_doubling_estimate_tracks_the_true_error(linear_system):
    field, state, exact = linear_system
    result = flow(field, state, 0.8, steps=2)
    true_error = float((flat(result.state) - exact(0.8)).norm())
    estimate = float(result.error)
    assert estimate / 3 < true_error < 3 * estimate, (true_error, estimate)


def test_target_error_doubles_the_steps(linear_system):
    field, state, exact = linear_system
    result = flow(field, state, 0.8, steps=1, target_error=1e-8)
    assert float(result.error) <= 1e-8 and result.steps >= 8, (result.error, result.steps)
    assert float((flat(result.state) - exact(0.8)).norm()) < 3e-8


def test_batched_flow_equals_separate_flows():
    generator = torch.Generator().manual_seed(1)
    A = 0.5 * torch.randn(3, 3, generator=generator, dtype=DTYPE)
    starts = torch.randn(4, 3, generator=generator, dtype=DTYPE)
    times = torch.tensor([0.5, 0.25, 0.125, 0.0625], dtype=DTYPE)

    def field(state):  # works on one state or a batch
        return {"y": state["y"] @ A.T}

    batched = flow(field, {"y": starts}, times, steps=2, batched=True)
    for i in range(4):
        single = flow(field, {"y": starts[i]}, float(times[i]), steps=2)
        torch.testing.assert_close(batched.state["y"][i], single.state["y"], rtol=1e-14, atol=1e-15)
        assert math.isclose(
            float(batched.error[i]), float(single.error), rel_tol=1e-6, abs_tol=1e-18
        )


def test_rk4_runs_in_float32():
    end, _ = rk4_flow(lambda s: {"x": -s["x"]}, {"x": torch.ones(2)}, 1.0, 8)
    assert end["x"].dtype == torch.float32
    assert abs(end["x"][0].item() - math.exp(-1)) < 1e-5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"T": -1.0}, r"rk4_flow: T must be a finite number >= 0, got -1.0"),
        ({"T": float("nan")}, r"rk4_flow: T must be a finite number >= 0"),
        ({"steps": 0}, r"rk4_flow: steps must be an int >= 1, got 0"),
        ({"batched": True}, r"rk4_flow: with batched=True, T must be a 1-d tensor"),
    ],
)
def test_bad_arguments(kwargs, message):
    arguments = {"T": 1.0, "steps": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        rk4_flow(lambda s: s, {"x": torch.ones(2)}, **arguments)


def test_batched_layout_must_match_times():
    with pytest.raises(ValueError, match=r"flow: every leaf must have leading batch dimension 3"):
        flow(lambda s: s, {"x": torch.ones(2, 4)}, torch.ones(3), batched=True)


def test_reference_needs_float64():
    with pytest.raises(ValueError, match=r"scipy_flow: the reference integrator needs a float64"):
        scipy_flow(lambda s: s, {"x": torch.ones(2)}, 1.0)
