"""Bad input raises TypeError/ValueError naming the call and the value."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import bea


@pytest.fixture
def setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x, y = torch.randn(5, 3).double(), torch.randn(5, 2).double()
    loss = bea.bind(model, nn.functional.mse_loss, x, y)
    return model, loss, bea.params_of(model)


def _vector_loss(p):
    return p["0.weight"].sum(dim=1)


def test_non_scalar_loss(setup):
    _, _, params = setup
    for call in (
        lambda: bea.grad(_vector_loss, params),
        lambda: bea.hvp(_vector_loss, params, params),
        lambda: bea.igr(_vector_loss, params, 0.1),
    ):
        with pytest.raises(ValueError, match=r"returned shape \(4,\), expected a scalar"):
            call()
    with pytest.raises(ValueError, match=r"lie_bracket: loss_b returned shape \(4,\)"):
        bea.lie_bracket(setup[1], _vector_loss, params)
    with pytest.raises(ValueError, match=r"bind: criterion returned shape \(5, 2\)"):
        model = setup[0]
        bad = bea.bind(
            model, lambda o, t: (o - t) ** 2, torch.randn(5, 3).double(), torch.zeros(5, 2).double()
        )
        bea.grad(bad, params)


def test_params_not_matching_the_model(setup):
    _, loss, params = setup
    missing = {k: v for k, v in params.items() if k != "2.bias"}
    with pytest.raises(ValueError, match=r"bind: params do not match .*missing: \['2.bias'\]"):
        bea.grad(loss, missing)
    extra = {**params, "head.weight": torch.zeros(2)}
    with pytest.raises(ValueError, match=r"unexpected: \['head.weight'\]"):
        bea.grad(loss, extra)
    wrong = {**params, "0.bias": torch.zeros(5, dtype=torch.float64)}
    with pytest.raises(
        ValueError, match=r"bind: params\['0.bias'\] has shape \(5,\), expected \(4,\)"
    ):
        bea.grad(loss, wrong)


def test_v_with_other_keys_or_shapes(setup):
    _, loss, params = setup
    with pytest.raises(
        ValueError, match=r"hvp: v must have the keys of params \(missing: \['2.bias'\]"
    ):
        bea.hvp(loss, params, {k: v for k, v in params.items() if k != "2.bias"})
    v = {**params, "2.bias": torch.zeros(3, dtype=torch.float64)}
    with pytest.raises(ValueError, match=r"hvp: v\['2.bias'\] has shape \(3,\), expected \(2,\)"):
        bea.hvp(loss, params, v)


def test_integer_tensors_and_wrong_types(setup):
    _, loss, params = setup
    ints = {**params, "2.bias": torch.zeros(2, dtype=torch.int64)}
    with pytest.raises(TypeError, match=r"grad: params\['2.bias'\] has dtype torch.int64"):
        bea.grad(loss, ints)
    with pytest.raises(TypeError, match=r"grad: params must be a dict\[str, Tensor\].*got list"):
        bea.grad(loss, list(params.values()))
    with pytest.raises(TypeError, match=r"hvp: v\['2.bias'\] has dtype torch.int64"):
        bea.hvp(loss, params, ints)
    with pytest.raises(TypeError, match=r"gram: losses must be a sequence of callables"):
        bea.gram(loss, params)
    with pytest.raises(TypeError, match=r"bind: model must be a torch.nn.Module, got str"):
        bea.bind("model", nn.functional.mse_loss, None, None)


@pytest.mark.parametrize("lr", [0.0, -0.1, math.inf, math.nan])
def test_bad_learning_rates(setup, lr):
    _, loss, params = setup
    with pytest.raises(ValueError, match=rf"igr: lr must be a finite number > 0, got {lr}"):
        bea.igr(loss, params, lr)
    with pytest.raises(ValueError, match=r"multitask_terms: lr must be a finite number > 0"):
        bea.multitask_terms([loss, loss], params, lr)
    with pytest.raises(ValueError, match=r"sequential_modified_field: lr must be"):
        bea.sequential_modified_field([loss], params, lr)
    with pytest.raises(ValueError, match=r"order_effect: lr must be"):
        bea.order_effect(loss, loss, params, lr)
    with pytest.raises(ValueError, match=r"modified_loss: lr must be"):
        bea.modified_loss(loss, lr)


def test_non_finite_losses_and_gradients(setup):
    _, loss, params = setup
    nan_params = {**params, "2.bias": torch.tensor([math.nan, 0.0], dtype=torch.float64)}
    with pytest.raises(ValueError, match=r"grad: loss is not finite \(nan\)"):
        bea.grad(loss, nan_params)

    def sqrt_at_zero(p):  # finite value, infinite gradient
        return torch.sqrt(p["2.bias"].abs()).sum()

    zero = {**params, "2.bias": torch.zeros(2, dtype=torch.float64)}
    with pytest.raises(
        ValueError, match=r"grad: gradient of loss\['2.bias'\] is not finite \(contains nan\)"
    ):
        bea.grad(sqrt_at_zero, zero)
    with pytest.raises(
        ValueError, match=r"lie_bracket: gradient of loss_a\['2.bias'\] is not finite"
    ):
        bea.lie_bracket(sqrt_at_zero, loss, zero)


def test_bad_modes_weights_and_selections(setup):
    _, loss, params = setup
    with pytest.raises(
        ValueError, match=r"hvp: mode must be one of \('auto', 'forward', 'reverse'\), got 'fast'"
    ):
        bea.hvp(loss, params, params, mode="fast")
    with pytest.raises(ValueError, match=r"lie_bracket: mode must be one of .* got 'dense'"):
        bea.lie_bracket(loss, loss, params, mode="dense")
    with pytest.raises(
        ValueError,
        match=r"multitask_terms: weights must have one entry per loss \(2\), got shape \(3,\)",
    ):
        bea.multitask_terms([loss, loss], params, 0.1, weights=[1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match=r"multitask_terms: shared='trunk' selects no parameter"):
        bea.multitask_terms([loss, loss], params, 0.1, shared="trunk")
    with pytest.raises(ValueError, match=r"multitask_terms: needs at least 2 loss\(es\), got 1"):
        bea.multitask_terms([loss], params, 0.1)
    with pytest.raises(ValueError, match=r"gram: names=\['nothing'\] selects no parameter"):
        bea.gram([loss], params, names=["nothing"])
    with pytest.raises(ValueError, match=r"sequential_modified_terms: order must be >= 0, got -1"):
        bea.sequential_modified_terms([loss], params, order=-1)
    with pytest.raises(
        ValueError, match=r"bind: mode must be one of \('eval', 'train'\), got 'test'"
    ):
        bea.bind(setup[0], nn.functional.mse_loss, None, None, mode="test")


def test_vector_field_with_bad_output(setup):
    _, _, params = setup
    with pytest.raises(
        TypeError, match=r"vector_field_bracket: F returned Tensor, expected a dict"
    ):
        bea.vector_field_bracket(lambda p: p["0.bias"], lambda p: p, params)
    with pytest.raises(
        ValueError, match=r"vector_field_bracket: the output of G must have the keys"
    ):
        bea.vector_field_bracket(lambda p: p, lambda p: {"x": p["0.bias"]}, params)


def test_bound_loss_called_directly_on_nan(setup):
    _, loss, params = setup
    nan_params = {**params, "2.bias": torch.tensor([math.nan, 0.0], dtype=torch.float64)}
    with pytest.raises(ValueError, match=r"bind: loss is not finite \(nan\)"):
        loss(nan_params)


def test_bind_input_dtype_and_weights_type(setup):
    model, loss, params = setup
    with pytest.raises(
        TypeError, match=r"bind: inputs\[0\] has dtype torch.float32 but .* torch.float64"
    ):
        bea.bind(model, nn.functional.mse_loss, torch.randn(5, 3), torch.randn(5, 2).double())
    with pytest.raises(
        TypeError, match=r"multitask_terms: weights must be a sequence of numbers, got 'ab'"
    ):
        bea.multitask_terms([loss, loss], params, 0.1, weights="ab")
    with pytest.raises(ValueError, match=r"modified_loss: strength must be finite, got nan"):
        bea.modified_loss(loss, 0.1, strength=math.nan)
