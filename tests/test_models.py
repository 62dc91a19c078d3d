"""Tests of bea.experiments.models: shapes, parameter names and counts, seeding,
smooth-derivative support, and activation-switch counting against a hand computation."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, jvp

from bea.experiments import models as M


def params_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


# --------------------------------------------------------------------------------------
# MLP and CNN
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("activation", sorted(M.ACTIVATIONS))
def test_mlp_shapes_and_parameter_count(activation):
    net = M.mlp(12, hidden=(7, 5), out_features=3, activation=activation, seed=0)
    assert net(torch.randn(4, 3, 4)).shape == (4, 3)
    assert M.count_parameters(net) == (12 + 1) * 7 + (7 + 1) * 5 + (5 + 1) * 3
    assert [name for name, _ in net.named_parameters()] == [
        "1.weight",
        "1.bias",
        "3.weight",
        "3.bias",
        "5.weight",
        "5.bias",
    ]


def test_seed_fixes_the_initialisation_and_leaves_the_global_rng_alone():
    state = torch.random.get_rng_state()
    first = params_of(M.mlp(6, (4,), 2, seed=1))
    assert torch.equal(state, torch.random.get_rng_state())
    again = params_of(M.mlp(6, (4,), 2, seed=1))
    other = params_of(M.mlp(6, (4,), 2, seed=2))
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["1.weight"], other["1.weight"])


@pytest.mark.parametrize(
    "image_size", [(8, 8), (8, 16), (28, 28), (7, 7), (14, 28)], ids=lambda s: f"{s[0]}x{s[1]}"
)
def test_small_cnn_accepts_each_data_set_image_size(image_size):
    net = M.small_cnn(1, 10, image_size, "tanh", seed=0)
    assert net(torch.rand(2, 1, *image_size)).shape == (2, 10)
    assert not any(isinstance(m, nn.MaxPool2d) for m in net.modules())


# --------------------------------------------------------------------------------------
# Multitask network
# --------------------------------------------------------------------------------------


@pytest.fixture
def multitask_net() -> M.MultiTaskNet:
    return M.multitask_mlp(8, {"left": 3, "right": 2}, hidden=(6, 5), head_hidden=(4,), seed=0)


def test_multitask_net_names_and_outputs(multitask_net):
    outputs = multitask_net(torch.randn(7, 8))
    assert isinstance(outputs, tuple) and [o.shape for o in outputs] == [(7, 3), (7, 2)]
    assert multitask_net.task_names == ("left", "right")
    names = [name for name, _ in multitask_net.named_parameters()]
    shared = M.shared_parameter_names(multitask_net)
    assert shared == tuple(n for n in names if n.startswith("trunk."))
    assert all(n.startswith(("trunk.", "heads.left.", "heads.right.")) for n in names)
    assert len(shared) == 4


def test_each_head_depends_only_on_its_own_and_the_shared_parameters(multitask_net):
    params = params_of(multitask_net)
    x = torch.randn(5, 8)

    def output_sum(p, task):
        return functional_call(multitask_net, p, (x,))[task].sum()

    for task, name in enumerate(multitask_net.task_names):
        grads = grad(output_sum)(params, task)
        for key, value in grads.items():
            own = key.startswith(("trunk.", f"heads.{name}."))
            assert bool(value.abs().sum() > 0) == own, key


def test_multitask_mlp_accepts_a_sequence_of_output_sizes():
    net = M.multitask_mlp(4, (1, 1, 1), hidden=(3,), seed=0)
    assert net.task_names == ("task0", "task1", "task2")
    assert [o.shape for o in net(torch.randn(2, 4))] == [(2, 1)] * 3


# --------------------------------------------------------------------------------------
# Transformer
# --------------------------------------------------------------------------------------


def test_transformer_block_parameter_count_formula():
    d, d_ff = 8, 12
    block = M.transformer_block(d, 2, d_ff, seed=0)
    assert M.count_parameters(block) == 4 * d * d + 2 * d * d_ff + 9 * d + d_ff


def test_transformer_block_is_permutation_equivariant():
    block = M.transformer_block(8, 2, 16, seed=0).double()
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    order = torch.tensor([3, 0, 4, 1, 2])
    torch.testing.assert_close(block(x[:, order]), block(x)[:, order], rtol=1e-12, atol=1e-12)


def test_transformer_classifier_accepts_images_and_flat_inputs():
    net = M.transformer_classifier((8, 16), 10, patch_size=4, d_model=8, n_heads=2, seed=0)
    x = torch.rand(3, 1, 8, 16)
    torch.testing.assert_close(net(x), net(x.reshape(3, -1)), rtol=0, atol=0)
    assert net(x).shape == (3, 10)


def test_transformer_supports_forward_over_reverse_hessian_vector_products():
    net = M.transformer_classifier(4, 3, patch_size=2, d_model=4, n_heads=2, depth=1, seed=0)
    net = net.double()
    params = params_of(net)
    x = torch.rand(5, 1, 4, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1])

    def loss(p):
        return nn.functional.cross_entropy(functional_call(net, p, (x,)), y)

    v = {k: torch.randn_like(t) for k, t in params.items()}
    _, hv = jvp(grad(loss), (params,), (v,))
    step = 1e-5
    plus = grad(loss)({k: params[k] + step * v[k] for k in params})
    minus = grad(loss)({k: params[k] - step * v[k] for k in params})
    for key in params:
        fd = (plus[key] - minus[key]) / (2 * step)
        torch.testing.assert_close(
            hv[key], fd, rtol=1e-5, atol=1e-8, msg=lambda m, k=key: f"{k}: {m}"
        )


# --------------------------------------------------------------------------------------
# Sizing
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", [1e4, 1e5, 1e6, 1e7])
def test_scaled_mlp_width_is_the_closest_to_the_target(target):
    net = M.scaled_mlp(784, 10, target, depth=2, seed=0)
    width = net[1].out_features
    count = M.count_parameters(net)
    for neighbour in (width - 1, width + 1):
        other = M.count_parameters(M.mlp(784, (neighbour, neighbour), 10))
        assert abs(count - target) <= abs(other - target), (width, count, neighbour, other)
    assert abs(count - target) / target < 0.05, count


@pytest.mark.parametrize("target", [1e4, 1e5, 1e6])
def test_scaled_transformer_d_model_is_the_closest_to_the_target(target):
    net = M.scaled_transformer(target, 28, 10, n_heads=4, seed=0)
    d_model = net.embed.out_features
    count = M.count_parameters(net)
    assert d_model % 4 == 0
    for neighbour in (d_model - 4, d_model + 4):
        other = M.count_parameters(M.transformer_classifier(28, 10, d_model=neighbour, n_heads=4))
        assert abs(count - target) <= abs(other - target), (d_model, count, neighbour, other)


# --------------------------------------------------------------------------------------
# Activation switches
# --------------------------------------------------------------------------------------


def test_activation_switches_match_a_hand_count_of_sign_changes():
    net = M.mlp(5, (6,), 2, activation="relu", seed=0).double()
    before = params_of(net)
    generator = torch.Generator().manual_seed(1)
    after = {
        k: v + 0.3 * torch.randn(v.shape, generator=generator, dtype=v.dtype)
        for k, v in before.items()
    }
    x = torch.randn(40, 5, generator=generator, dtype=torch.float64)

    def pattern(p):
        return (x @ p["1.weight"].T + p["1.bias"]) > 0

    expected = int((pattern(before) != pattern(after)).sum())
    result = M.count_activation_switches(net, before, after, x)
    assert expected > 0
    assert result.total == expected and result.per_layer == {"2": expected}
    assert result.num_units == 40 * 6
    assert result.fraction == pytest.approx(expected / 240)
    assert M.count_activation_switches(net, before, before, x).total == 0


def test_activation_switches_are_zero_for_smooth_models():
    net = M.mlp(5, (6,), 2, activation="tanh", seed=0)
    params = params_of(net)
    moved = {k: v + 1.0 for k, v in params.items()}
    result = M.count_activation_switches(net, params, moved, torch.randn(4, 5))
    assert result == M.ActivationSwitches(0, 0, 0.0, {})


# --------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------


BAD_CALLS = [
    (
        "unknown-activation",
        lambda: M.mlp(4, (3,), 2, activation="swish"),
        ValueError,
        r"mlp: unknown activation 'swish'; valid names are \[",
    ),
    (
        "zero-width",
        lambda: M.mlp(4, (0,), 2),
        ValueError,
        r"mlp: hidden entries must be an int >= 1, got 0",
    ),
    (
        "heads-not-divisible",
        lambda: M.transformer_block(10, 3, 8),
        ValueError,
        r"transformer_block: d_model must be divisible by n_heads, got d_model=10, n_heads=3",
    ),
    (
        "patch-size",
        lambda: M.transformer_classifier(28, 10, patch_size=5),
        ValueError,
        r"transformer_classifier: patch_size must divide the image size 28x28, got 5",
    ),
    (
        "not-multitask",
        lambda: M.shared_parameter_names(nn.Linear(2, 2)),
        TypeError,
        r"shared_parameter_names: model must be a MultiTaskNet, got Linear",
    ),
    (
        "empty-heads",
        lambda: M.MultiTaskNet(nn.Identity(), {}),
        ValueError,
        r"MultiTaskNet: heads must be a non-empty mapping",
    ),
    (
        "dotted-head",
        lambda: M.MultiTaskNet(nn.Identity(), {"a.b": nn.Linear(2, 2)}),
        ValueError,
        r"MultiTaskNet: head names must be non-empty str without '.', got 'a.b'",
    ),
    (
        "switch-keys",
        lambda: M.count_activation_switches(
            nn.Linear(2, 2), {"weight": torch.zeros(2, 2)}, {}, torch.zeros(1, 2)
        ),
        ValueError,
        r"count_activation_switches: params_before and params_after have different keys",
    ),
]


@pytest.mark.parametrize(
    ("call", "error", "message"), [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS]
)
def test_bad_input_names_the_call_and_the_value(call, error, message):
    with pytest.raises(error, match=message):
        call()
