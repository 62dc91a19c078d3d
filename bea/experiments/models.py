"""Small models for the experiments: MLPs, a small CNN, a multitask network and a
transformer classifier, each a plain ``torch.nn.Module`` whose parameter names are stable
so that ``dict(model.named_parameters())`` can be fed to the core functions.

Every builder takes ``activation`` (one of :data:`ACTIVATIONS`) and an optional ``seed``:
with a seed the initial parameters depend only on the arguments (the global RNG is left
untouched); without one they come from the global RNG, as in plain PyTorch. Models are
built in float32; call ``.double()`` (or ``.to(dtype)``) for float64 checks.

Smoothness matters for the theory (design.md §1.5): use ``tanh``, ``gelu``, ``softplus``,
``silu`` or ``sigmoid`` for checks of the expansions; for ``relu``-style models report
:func:`count_activation_switches` beside each prediction. Pooling is average pooling, so
the CNN is as smooth as its activation.

Sizes scale from about 1e4 to 1e7 parameters with :func:`scaled_mlp` and
:func:`scaled_transformer`, which choose the width for a target count;
:func:`count_parameters` counts.

Example::

    >>> trunk_and_heads = multitask_mlp(128, {"left": 10, "right": 10}, hidden=(64, 64))
    >>> shared_parameter_names(trunk_and_heads)[:2]
    ('trunk.1.weight', 'trunk.1.bias')
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping, Sequence
from itertools import pairwise
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.func import functional_call

__all__ = [
    "ACTIVATIONS",
    "ActivationSwitches",
    "MultiTaskNet",
    "TransformerBlock",
    "TransformerClassifier",
    "activation_module",
    "count_activation_switches",
    "count_parameters",
    "mlp",
    "multitask_mlp",
    "scaled_mlp",
    "scaled_transformer",
    "shared_parameter_names",
    "small_cnn",
    "transformer_block",
    "transformer_classifier",
]

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "softplus": nn.Softplus,
    "sigmoid": nn.Sigmoid,
    "silu": nn.SiLU,
    "elu": nn.ELU,
    "leaky_relu": lambda: nn.LeakyReLU(0.01),
}
"""Activation names and their module factories. ``relu``, ``leaky_relu`` and ``elu`` are
not twice differentiable at 0; the others are smooth."""

PIECEWISE_ACTIVATIONS: tuple[type[nn.Module], ...] = (nn.ReLU, nn.LeakyReLU, nn.ELU)
"""Activation modules with a kink at 0, whose on/off pattern
:func:`count_activation_switches` tracks."""


def activation_module(name: str, call: str = "activation_module") -> nn.Module:
    """A fresh activation module for ``name`` (one of :data:`ACTIVATIONS`)."""
    if name not in ACTIVATIONS:
        raise ValueError(
            f"{call}: unknown activation {name!r}; valid names are {sorted(ACTIVATIONS)}"
        )
    return ACTIVATIONS[name]()


def _check_int(call: str, name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{call}: {name} must be an int >= {minimum}, got {value!r}")
    return value


def _check_widths(call: str, name: str, widths) -> tuple[int, ...]:
    if isinstance(widths, int):
        widths = (widths,)
    widths = tuple(widths)
    for width in widths:
        _check_int(call, f"{name} entries", width)
    return widths


@contextlib.contextmanager
def _seeded(seed: int | None):
    """Run the body with the CPU RNG seeded, restoring the global state afterwards."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of scalar parameters (only those with ``requires_grad`` by default)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# --------------------------------------------------------------------------------------
# MLP and CNN
# --------------------------------------------------------------------------------------


def mlp(
    in_features: int,
    hidden: Sequence[int] = (64, 64),
    out_features: int = 10,
    activation: str = "tanh",
    *,
    bias: bool = True,
    seed: int | None = None,
) -> nn.Sequential:
    """A fully connected network ``Flatten -> [Linear -> act] * len(hidden) -> Linear``.

    Inputs of any shape ``(N, ...)`` with ``in_features`` values per example are flattened
    first, so images can be passed directly. Parameter names are ``"{i}.weight"``,
    ``"{i}.bias"`` with ``i`` the index in the ``nn.Sequential`` (``1, 3, 5, ...``).
    The number of parameters is ``sum_l (n_l + 1) n_{l+1}`` over consecutive widths.

    Example::

        >>> net = mlp(784, hidden=(400, 400), out_features=10, activation="relu", seed=0)
    """
    call = "mlp"
    in_features = _check_int(call, "in_features", in_features)
    out_features = _check_int(call, "out_features", out_features)
    hidden = _check_widths(call, "hidden", hidden)
    activation_module(activation, call)
    widths = (in_features, *hidden)
    layers: list[nn.Module] = [nn.Flatten(start_dim=1)]
    with _seeded(seed):
        for n_in, n_out in pairwise(widths):
            layers += [nn.Linear(n_in, n_out, bias=bias), activation_module(activation, call)]
        layers.append(nn.Linear(widths[-1], out_features, bias=bias))
    return nn.Sequential(*layers)


def _pair(call: str, name: str, value) -> tuple[int, int]:
    if isinstance(value, int):
        value = (value, value)
    value = tuple(value)
    if len(value) != 2:
        raise ValueError(f"{call}: {name} must be an int or (height, width), got {value!r}")
    for v in value:
        _check_int(call, name, v)
    return value  # type: ignore[return-value]


def small_cnn(
    in_channels: int = 1,
    num_classes: int = 10,
    image_size: int | tuple[int, int] = 28,
    activation: str = "relu",
    *,
    channels: Sequence[int] = (16, 32),
    hidden: int = 64,
    seed: int | None = None,
) -> nn.Sequential:
    """A small CNN: ``[Conv3x3(pad 1) -> act -> AvgPool2] per channel entry -> Flatten ->
    Linear(hidden) -> act -> Linear(num_classes)``.

    Average pooling (not max) keeps the network as smooth as its activation. Spatial sizes
    halve (floor) at each pool, and pooling stops once a side is 1, so 8x8 digits and
    28x28 MNIST both work.
    """
    call = "small_cnn"
    in_channels = _check_int(call, "in_channels", in_channels)
    num_classes = _check_int(call, "num_classes", num_classes)
    hidden = _check_int(call, "hidden", hidden)
    height, width = _pair(call, "image_size", image_size)
    channels = _check_widths(call, "channels", channels)
    activation_module(activation, call)
    layers: list[nn.Module] = []
    with _seeded(seed):
        previous = in_channels
        for out_channels in channels:
            layers += [
                nn.Conv2d(previous, out_channels, kernel_size=3, padding=1),
                activation_module(activation, call),
            ]
            if min(height, width) >= 2:
                layers.append(nn.AvgPool2d(2))
                height, width = height // 2, width // 2
            previous = out_channels
        layers += [
            nn.Flatten(start_dim=1),
            nn.Linear(previous * height * width, hidden),
            activation_module(activation, call),
            nn.Linear(hidden, num_classes),
        ]
    return nn.Sequential(*layers)


# --------------------------------------------------------------------------------------
# Multitask network
# --------------------------------------------------------------------------------------


class MultiTaskNet(nn.Module):
    """A shared trunk followed by one head per task.

    ``forward(x)`` returns a tuple ``(head_1(trunk(x)), ..., head_K(trunk(x)))`` in the order
    of ``task_names``. Parameters are named ``"trunk.<...>"`` (shared) and
    ``"heads.<task>.<...>"`` (task-specific), so ``shared_parameter_names(model)`` selects the
    shared block for ``bea.multitask_terms(..., shared=...)``.
    """

    def __init__(self, trunk: nn.Module, heads: Mapping[str, nn.Module]):
        super().__init__()
        if not isinstance(heads, Mapping) or len(heads) == 0:
            raise ValueError(f"MultiTaskNet: heads must be a non-empty mapping, got {heads!r}")
        for name in heads:
            if not isinstance(name, str) or not name or "." in name:
                raise ValueError(
                    f"MultiTaskNet: head names must be non-empty str without '.', got {name!r}"
                )
        self.trunk = trunk
        self.heads = nn.ModuleDict(dict(heads))

    @property
    def task_names(self) -> tuple[str, ...]:
        return tuple(self.heads.keys())

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        features = self.trunk(x)
        return tuple(head(features) for head in self.heads.values())


def multitask_mlp(
    in_features: int,
    task_outputs: Mapping[str, int] | Sequence[int],
    hidden: Sequence[int] = (64, 64),
    activation: str = "tanh",
    *,
    head_hidden: Sequence[int] = (),
    seed: int | None = None,
) -> MultiTaskNet:
    """A :class:`MultiTaskNet` with an MLP trunk and an MLP head per task.

    The trunk is ``Flatten -> [Linear -> act] * len(hidden)`` (it ends with an
    activation), each head ``[Linear -> act] * len(head_hidden) -> Linear(outputs)``.
    ``task_outputs`` maps task names to output sizes (a sequence ``(10, 10)`` names the
    tasks ``"task0", "task1", ...``); for ``MultitaskData`` pass
    ``dict(zip(data.task_names, data.num_classes_per_task))``.
    """
    call = "multitask_mlp"
    in_features = _check_int(call, "in_features", in_features)
    hidden = _check_widths(call, "hidden", hidden)
    head_hidden = _check_widths(call, "head_hidden", head_hidden)
    if len(hidden) == 0:
        raise ValueError(f"{call}: hidden must have at least one width (the trunk), got {hidden}")
    if not isinstance(task_outputs, Mapping):
        task_outputs = {f"task{k}": size for k, size in enumerate(task_outputs)}
    if len(task_outputs) == 0:
        raise ValueError(f"{call}: task_outputs is empty")
    activation_module(activation, call)
    with _seeded(seed):
        trunk_layers: list[nn.Module] = [nn.Flatten(start_dim=1)]
        widths = (in_features, *hidden)
        for n_in, n_out in pairwise(widths):
            trunk_layers += [nn.Linear(n_in, n_out), activation_module(activation, call)]
        heads = {}
        for name, size in task_outputs.items():
            _check_int(call, f"task_outputs[{name!r}]", size)
            head_widths = (hidden[-1], *head_hidden)
            layers: list[nn.Module] = []
            for n_in, n_out in pairwise(head_widths):
                layers += [nn.Linear(n_in, n_out), activation_module(activation, call)]
            layers.append(nn.Linear(head_widths[-1], size))
            heads[name] = nn.Sequential(*layers)
        return MultiTaskNet(nn.Sequential(*trunk_layers), heads)


def shared_parameter_names(model: nn.Module) -> tuple[str, ...]:
    """Names of the trainable trunk parameters (``"trunk.*"``) of a :class:`MultiTaskNet`.

    Raises:
        TypeError: ``model`` is not a :class:`MultiTaskNet`.
        ValueError: the trunk has no trainable parameters.
    """
    if not isinstance(model, MultiTaskNet):
        raise TypeError(
            f"shared_parameter_names: model must be a MultiTaskNet, got {type(model).__name__}"
        )
    names = tuple(
        name
        for name, p in model.named_parameters()
        if name.startswith("trunk.") and p.requires_grad
    )
    if not names:
        raise ValueError("shared_parameter_names: the trunk has no trainable parameters")
    return names


# --------------------------------------------------------------------------------------
# Transformer
# --------------------------------------------------------------------------------------


class TransformerBlock(nn.Module):
    """Pre-norm transformer block: ``x + MHA(LN(x))`` then ``x + FF(LN(x))``.

    Attention is written with plain matrix products and ``softmax`` (no fused kernels), so
    forward-mode and higher-order derivatives (``bea.hvp``) work through it. Input and
    output are ``(N, T, d_model)``. Parameters: ``4 d^2 + 2 d d_ff + 9 d + d_ff``.
    """

    def __init__(self, d_model: int, n_heads: int, d_ff: int, activation: str = "gelu"):
        super().__init__()
        call = "transformer_block"
        _check_int(call, "d_model", d_model)
        _check_int(call, "n_heads", n_heads)
        _check_int(call, "d_ff", d_ff)
        if d_model % n_heads:
            raise ValueError(
                f"{call}: d_model must be divisible by n_heads, "
                f"got d_model={d_model}, n_heads={n_heads}"
            )
        self.n_heads = n_heads
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(
            nn.Linear(d_model, d_ff), activation_module(activation, call), nn.Linear(d_ff, d_model)
        )

    def forward(self, x: Tensor) -> Tensor:
        n, t, d = x.shape
        head_dim = d // self.n_heads
        q, k, v = self.qkv(self.norm1(x)).split(d, dim=-1)
        q, k, v = (z.reshape(n, t, self.n_heads, head_dim).transpose(1, 2) for z in (q, k, v))
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(head_dim), dim=-1)
        attended = (weights @ v).transpose(1, 2).reshape(n, t, d)
        x = x + self.proj(attended)
        return x + self.ff(self.norm2(x))


def transformer_block(
    d_model: int, n_heads: int, d_ff: int, activation: str = "gelu", *, seed: int | None = None
) -> TransformerBlock:
    """A :class:`TransformerBlock` (pre-norm, plain-op attention)."""
    with _seeded(seed):
        return TransformerBlock(d_model, n_heads, d_ff, activation)


class TransformerClassifier(nn.Module):
    """Patch transformer for ``(N, C, H, W)`` images (or their flattening ``(N, C*H*W)``).

    ``patch_size x patch_size`` patches -> linear embedding + learned positions ->
    ``depth`` :class:`TransformerBlock` -> mean over tokens -> LayerNorm -> Linear.
    """

    def __init__(
        self,
        image_size: tuple[int, int],
        in_channels: int,
        num_classes: int,
        patch_size: int,
        d_model: int,
        n_heads: int,
        d_ff: int,
        depth: int,
        activation: str,
    ):
        super().__init__()
        call = "transformer_classifier"
        height, width = image_size
        if height % patch_size or width % patch_size:
            raise ValueError(
                f"{call}: patch_size must divide the image size {height}x{width}, got {patch_size}"
            )
        self.image_size = (height, width)
        self.in_channels = in_channels
        self.patch_size = patch_size
        num_tokens = (height // patch_size) * (width // patch_size)
        self.embed = nn.Linear(in_channels * patch_size * patch_size, d_model)
        self.position = nn.Parameter(0.02 * torch.randn(num_tokens, d_model))
        self.blocks = nn.Sequential(
            *(TransformerBlock(d_model, n_heads, d_ff, activation) for _ in range(depth))
        )
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        height, width = self.image_size
        p = self.patch_size
        x = x.reshape(x.shape[0], self.in_channels, height, width)
        patches = x.unfold(2, p, p).unfold(3, p, p)  # (N, C, H/p, W/p, p, p)
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(
            x.shape[0], -1, self.in_channels * p * p
        )
        tokens = self.blocks(self.embed(patches) + self.position)
        return self.head(self.norm(tokens.mean(dim=1)))


def transformer_classifier(
    image_size: int | tuple[int, int] = 28,
    num_classes: int = 10,
    *,
    in_channels: int = 1,
    patch_size: int = 4,
    d_model: int = 64,
    n_heads: int = 4,
    d_ff: int | None = None,
    depth: int = 2,
    activation: str = "gelu",
    seed: int | None = None,
) -> TransformerClassifier:
    """A small patch-transformer classifier built from :func:`transformer_block`.

    ``d_ff`` defaults to ``2 * d_model``. With the defaults on 28x28 images it has about
    7e4 parameters; :func:`scaled_transformer` picks ``d_model`` for a target count.
    """
    call = "transformer_classifier"
    size = _pair(call, "image_size", image_size)
    for name, value in (
        ("in_channels", in_channels),
        ("num_classes", num_classes),
        ("patch_size", patch_size),
        ("d_model", d_model),
        ("n_heads", n_heads),
        ("depth", depth),
    ):
        _check_int(call, name, value)
    d_ff = 2 * d_model if d_ff is None else _check_int(call, "d_ff", d_ff)
    activation_module(activation, call)
    with _seeded(seed):
        return TransformerClassifier(
            size, in_channels, num_classes, patch_size, d_model, n_heads, d_ff, depth, activation
        )


# --------------------------------------------------------------------------------------
# Sizing
# --------------------------------------------------------------------------------------


def _meta_count(build: Callable[[], nn.Module]) -> int:
    """Parameter count of ``build()`` without allocating memory (meta device)."""
    with torch.device("meta"):
        return count_parameters(build())


def _smallest_width_reaching(count_at: Callable[[int], int], target: int, step: int = 1) -> int:
    """The multiple of ``step`` whose count is closest to ``target``.

    Assumes the count grows with the width."""
    low, high = 1, 1
    while count_at(high * step) < target:
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        if count_at(middle * step) < target:
            low = middle
        else:
            high = middle
    candidates = [w * step for w in (low, high)]
    return min(candidates, key=lambda w: abs(count_at(w) - target))


def scaled_mlp(
    in_features: int,
    out_features: int,
    num_params: int,
    depth: int = 2,
    activation: str = "tanh",
    *,
    seed: int | None = None,
) -> nn.Sequential:
    """An :func:`mlp` with ``depth`` hidden layers of one width chosen so that its parameter
    count is as close as possible to ``num_params`` (e.g. 1e4 .. 1e7)."""
    call = "scaled_mlp"
    depth = _check_int(call, "depth", depth)
    num_params = _check_int(call, "num_params", int(num_params))

    def count_at(width: int) -> int:
        widths = (in_features, *(width,) * depth, out_features)
        return sum((a + 1) * b for a, b in pairwise(widths))

    width = _smallest_width_reaching(count_at, num_params)
    return mlp(in_features, (width,) * depth, out_features, activation, seed=seed)


def scaled_transformer(
    num_params: int,
    image_size: int | tuple[int, int] = 28,
    num_classes: int = 10,
    *,
    depth: int = 2,
    n_heads: int = 4,
    patch_size: int = 4,
    in_channels: int = 1,
    activation: str = "gelu",
    seed: int | None = None,
) -> TransformerClassifier:
    """A :func:`transformer_classifier` whose ``d_model`` (a multiple of ``n_heads``, with
    ``d_ff = 2 d_model``) makes its parameter count closest to ``num_params``."""
    call = "scaled_transformer"
    num_params = _check_int(call, "num_params", int(num_params))
    n_heads = _check_int(call, "n_heads", n_heads)

    def build(d_model: int) -> nn.Module:
        return transformer_classifier(
            image_size,
            num_classes,
            in_channels=in_channels,
            patch_size=patch_size,
            d_model=d_model,
            n_heads=n_heads,
            depth=depth,
            activation=activation,
        )

    d_model = _smallest_width_reaching(lambda d: _meta_count(lambda: build(d)), num_params, n_heads)
    with _seeded(seed):
        return build(d_model)


# --------------------------------------------------------------------------------------
# Activation patterns
# --------------------------------------------------------------------------------------


class ActivationSwitches(NamedTuple):
    """Result of :func:`count_activation_switches`.

    Attributes:
        total: number of (example, unit) pairs whose pattern ``pre-activation > 0`` differs
            between the two parameter settings.
        num_units: number of (example, unit) pairs inspected.
        fraction: ``total / num_units`` (0.0 when there are no piecewise activations).
        per_layer: ``{module name: switches}`` for each piecewise activation module.
    """

    total: int
    num_units: int
    fraction: float
    per_layer: dict[str, int]


def _patterns(model: nn.Module, params: Mapping[str, Tensor], inputs: Tensor, kinds) -> dict:
    patterns: dict[str, Tensor] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, kinds):

            def hook(module, args, name=name):
                patterns[name] = args[0] > 0

            handles.append(module.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            functional_call(model, dict(params), (inputs,))
    finally:
        for handle in handles:
            handle.remove()
    return patterns


def count_activation_switches(
    model: nn.Module,
    params_before: Mapping[str, Tensor],
    params_after: Mapping[str, Tensor],
    inputs: Tensor,
    *,
    kinds: tuple[type[nn.Module], ...] = PIECEWISE_ACTIVATIONS,
) -> ActivationSwitches:
    """How many units change their on/off pattern between two parameter settings.

    For every activation module of a type in ``kinds`` (ReLU, LeakyReLU, ELU by default:
    the ones with a kink at 0), the pattern of a unit on an example is ``pre-activation > 0``.
    The model runs on ``inputs`` with ``params_before`` and with ``params_after`` (through
    ``torch.func.functional_call``; parameters missing from the dicts come from the model),
    in eval mode, without gradients; the count is the number of (example, unit) pairs
    whose pattern differs. A nonzero count means a step crossed a kink, where the
    backward-error expansions do not hold (design.md §1.5). Models without such
    activations give ``total = 0``.

    Raises:
        ValueError: the two parameter dicts have different keys.
    """
    call = "count_activation_switches"
    if set(params_before) != set(params_after):
        raise ValueError(
            f"{call}: params_before and params_after have different keys "
            f"({sorted(set(params_before) ^ set(params_after))})"
        )
    was_training = model.training
    model.eval()
    try:
        before = _patterns(model, params_before, inputs, kinds)
        after = _patterns(model, params_after, inputs, kinds)
    finally:
        model.train(was_training)
    per_layer = {name: int((before[name] != after[name]).sum()) for name in before}
    total = sum(per_layer.values())
    num_units = sum(int(pattern.numel()) for pattern in before.values())
    fraction = total / num_units if num_units else 0.0
    return ActivationSwitches(
        total=total, num_units=num_units, fraction=fraction, per_layer=per_layer
    )
