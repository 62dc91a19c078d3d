"""bind(): purity, buffers, modes, frozen parameters."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import bea
from tests.cases import batchnorm_net, dropout_net
from tests.conftest import assert_close


def _buffers(model):
    return {name: b.clone() for name, b in model.named_buffers()}


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_batchnorm_buffers_are_read_never_written(mode):
    torch.manual_seed(0)
    model = batchnorm_net().double()
    model.train()
    with torch.no_grad():
        model(torch.randn(16, 4).double() + 3)
    before = _buffers(model)
    model.eval()
    loss = bea.bind(
        model,
        nn.functional.cross_entropy,
        torch.randn(8, 4).double(),
        torch.randint(0, 3, (8,)),
        mode=mode,
    )
    loss2 = bea.bind(
        model,
        nn.functional.cross_entropy,
        torch.randn(8, 4).double(),
        torch.randint(0, 3, (8,)),
        mode=mode,
    )
    params = bea.params_of(model)
    v = {k: torch.ones_like(t) for k, t in params.items()}
    bea.grad(loss, params)
    bea.hvp(loss, params, v)
    bea.lie_bracket(loss, loss2, params)
    bea.multitask_terms([loss, loss2], params, 0.1)
    after = _buffers(model)
    for name in before:
        assert torch.equal(before[name], after[name]), f"buffer {name} changed in mode {mode}"
    assert not model.training, "bind must restore the module's own mode"


def test_batchnorm_modes_differ_and_eval_uses_running_stats():
    torch.manual_seed(0)
    model = batchnorm_net().double()
    model.train()
    with torch.no_grad():
        model(torch.randn(16, 4).double() * 3 + 2)
    x, y = torch.randn(8, 4).double(), torch.randint(0, 3, (8,))
    params = bea.params_of(model)
    eval_value = bea.bind(model, nn.functional.cross_entropy, x, y)(params)
    train_value = bea.bind(model, nn.functional.cross_entropy, x, y, mode="train")(params)
    model.eval()
    assert_close(eval_value, nn.functional.cross_entropy(model(x), y), what="eval mode")
    model.train()
    with torch.no_grad():
        direct = nn.functional.cross_entropy(model(x), y)  # batch statistics
    assert_close(train_value, direct, what="train mode")
    assert not torch.isclose(eval_value, train_value)


def test_dropout_is_fixed_per_loss_and_off_in_eval():
    torch.manual_seed(0)
    model = dropout_net().double()
    x, y = torch.randn(8, 4).double(), torch.randn(8, 3).double()
    params = bea.params_of(model)
    train = bea.bind(model, nn.functional.mse_loss, x, y, mode="train", dropout_seed=3)
    assert torch.equal(train(params), train(params))
    other_seed = bea.bind(model, nn.functional.mse_loss, x, y, mode="train", dropout_seed=4)
    assert not torch.equal(train(params), other_seed(params))
    evaluation = bea.bind(model, nn.functional.mse_loss, x, y)
    model.eval()
    assert_close(evaluation(params), nn.functional.mse_loss(model(x), y), what="eval dropout off")
    # Derivatives see the same masks as the value: grad matches a finite difference.
    direction = {k: torch.randn_like(t) for k, t in params.items()}
    eps = 1e-6
    shifted = [{k: params[k] + s * eps * direction[k] for k in params} for s in (1, -1)]
    fd = (train(shifted[0]) - train(shifted[1])) / (2 * eps)
    assert_close(bea.tree_dot(bea.grad(train, params), direction), fd, rtol=1e-7, what="fd")


def test_global_rng_untouched_by_dropout_losses():
    model = dropout_net().double()
    loss = bea.bind(
        model,
        nn.functional.mse_loss,
        torch.randn(4, 4).double(),
        torch.randn(4, 3).double(),
        mode="train",
    )
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    loss(bea.params_of(model))
    assert torch.equal(torch.rand(3), expected)


def test_frozen_parameters_left_out_unless_asked():
    model = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1)).double()
    model[0].weight.requires_grad_(False)
    x, y = torch.randn(5, 2).double(), torch.randn(5, 1).double()
    params = bea.params_of(model)
    assert "0.weight" not in params
    loss = bea.bind(model, nn.functional.mse_loss, x, y)
    assert set(bea.grad(loss, params)) == {"0.bias", "2.weight", "2.bias"}
    everything = bea.params_of(model, include_frozen=True)
    full = bea.bind(model, nn.functional.mse_loss, x, y, include_frozen=True)
    assert set(bea.grad(full, everything)) == set(everything)
    assert_close(full(everything), loss(params), what="same value")


def test_params_of_tracks_the_model_and_bind_evaluates_other_points():
    model = nn.Linear(3, 1).double()
    x, y = torch.randn(4, 3).double(), torch.randn(4, 1).double()
    loss = bea.bind(model, nn.functional.mse_loss, x, y)
    zero = {k: torch.zeros_like(v) for k, v in bea.params_of(model).items()}
    assert_close(loss(zero), (y**2).mean(), what="loss at zero params")
    with torch.no_grad():  # the module's own parameters were not touched
        assert not torch.equal(model.weight, torch.zeros_like(model.weight))
