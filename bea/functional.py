"""Turn an ``nn.Module`` and a batch into a pure loss ``params -> scalar``.

The loss is built on :func:`torch.func.functional_call`, so it can be
differentiated with every ``torch.func`` transform (``grad``, ``jvp``, ``vjp``,
``hessian``) and evaluated at any parameter dict without touching the module's
own parameters.

Determinism
-----------
A bound loss evaluated twice at the same parameters returns the same value:

* ``mode="eval"`` (the default) runs the module in eval mode: Dropout is off and
  BatchNorm normalizes with its running statistics.
* ``mode="train"`` runs it in training mode: BatchNorm normalizes with the batch's
  statistics, and Dropout draws its masks from a generator re-seeded with
  ``dropout_seed`` at each call, so every call (and every derivative of it) sees
  the same masks. This is the loss of one fixed stochastic network.

In neither mode does a call update buffers: running statistics are read, never
written, by a bound loss or any derivative of it.

Attention runs on PyTorch's math kernel for scaled dot-product attention, the
one whose second derivatives exist (the fused CPU kernels have none).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from bea._checks import check_finite_value, check_scalar_output

_MODES = ("eval", "train")


def params_of(model: nn.Module, include_frozen: bool = False) -> dict[str, Tensor]:
    """The module's parameters as a detached ``dict[str, Tensor]``.

    The tensors share storage with the module (no copy). Parameters with
    ``requires_grad=False`` are left out unless ``include_frozen=True``.

    Example:
        >>> params = params_of(torch.nn.Linear(3, 2))
        >>> sorted(params)
        ['bias', 'weight']
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"params_of: model must be a torch.nn.Module, got {type(model).__name__}")
    return {
        name: p.detach()
        for name, p in model.named_parameters()
        if include_frozen or p.requires_grad
    }


class BoundLoss:
    """A pure loss ``params -> criterion(model(inputs; params), targets)``.

    Made by :func:`bind`; see there. Attributes ``model``, ``criterion``,
    ``inputs``, ``targets``, ``mode`` and ``param_shapes`` describe it.
    """

    def __init__(
        self,
        model: nn.Module,
        criterion: Callable[[Tensor, Tensor], Tensor],
        inputs,
        targets,
        mode: str,
        include_frozen: bool,
        dropout_seed: int,
    ):
        self.model = model
        self.criterion = criterion
        self.inputs = inputs
        self.targets = targets
        self.mode = mode
        self.dropout_seed = dropout_seed
        self.param_shapes = {
            name: p.shape
            for name, p in model.named_parameters()
            if include_frozen or p.requires_grad
        }
        if not self.param_shapes:
            raise ValueError(
                "bind: the model has no trainable parameters "
                "(pass include_frozen=True to differentiate frozen ones)"
            )
        self._rng_devices = sorted(
            {p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"}
        )
        # Frozen parameters enter the call as constants.
        self._constants = {
            name: p.detach()
            for name, p in model.named_parameters()
            if name not in self.param_shapes
        }

    def _check(self, params) -> None:
        if not isinstance(params, Mapping):
            raise TypeError(
                f"bind: the loss takes a dict[str, Tensor] of parameters, got {type(params).__name__}"
            )
        if params.keys() != self.param_shapes.keys():
            missing = sorted(set(self.param_shapes) - set(params))
            extra = sorted(set(params) - set(self.param_shapes))
            raise ValueError(
                "bind: params do not match the model's parameters "
                f"(missing: {missing}, unexpected: {extra})"
            )
        for name, shape in self.param_shapes.items():
            value = params[name]
            if not isinstance(value, Tensor):
                raise TypeError(
                    f"bind: params[{name!r}] must be a Tensor, got {type(value).__name__}"
                )
            if value.shape != shape:
                raise ValueError(
                    f"bind: params[{name!r}] has shape {tuple(value.shape)}, "
                    f"expected {tuple(shape)} as in the model"
                )

    def __call__(self, params: Mapping[str, Tensor]) -> Tensor:
        self._check(params)
        tensors = {**self._constants, **params}
        with (
            sdpa_kernel([SDPBackend.MATH]),
            _module_mode(self.model, self.mode),
            _dropout_rng(self.mode, self.dropout_seed, self._rng_devices),
        ):
            buffers = {name: b for name, b in self.model.named_buffers()}
            args = self.inputs if isinstance(self.inputs, tuple) else (self.inputs,)
            output = functional_call(self.model, {**buffers, **tensors}, args, strict=False)
        value = check_scalar_output("bind", self.criterion(output, self.targets), "criterion")
        check_finite_value("bind", value, "loss")
        return value

    def __repr__(self) -> str:
        return (
            f"BoundLoss(model={type(self.model).__name__}, criterion={self.criterion!r}, "
            f"mode={self.mode!r}, params={len(self.param_shapes)})"
        )


def bind(
    model: nn.Module,
    criterion: Callable[[Tensor, Tensor], Tensor],
    inputs,
    targets,
    *,
    mode: str = "eval",
    include_frozen: bool = False,
    dropout_seed: int = 0,
) -> BoundLoss:
    """Bind a model, a criterion and one batch into a pure loss.

    ``loss(params) = criterion(model(inputs; params), targets)``, where ``params``
    is a ``dict[str, Tensor]`` with the names and shapes of the model's trainable
    parameters (see :func:`params_of`).

    Args:
        model: any ``nn.Module``.
        criterion: ``(output, targets) -> scalar``, e.g. ``nn.functional.cross_entropy``.
        inputs: a tensor, or a tuple of tensors passed positionally to the model.
        targets: passed to the criterion as is.
        mode: ``"eval"`` (default: Dropout off, BatchNorm on running statistics) or
            ``"train"`` (BatchNorm on batch statistics, Dropout with masks fixed by
            ``dropout_seed``). Buffers are never updated in either mode.
        include_frozen: also differentiate parameters with ``requires_grad=False``.
        dropout_seed: seed of the Dropout masks in ``mode="train"``.

    Returns:
        A :class:`BoundLoss`, callable as ``loss(params) -> Tensor`` (0-dim).

    Raises:
        TypeError: ``model`` is not a module or ``criterion`` is not callable.
        ValueError: an unknown ``mode``, or a model without trainable parameters.
        The returned loss raises ``ValueError`` on params whose names or shapes do
        not match the model, a non-scalar criterion output, or a non-finite value.

    Example:
        >>> model = torch.nn.Linear(2, 1)
        >>> loss = bind(model, torch.nn.functional.mse_loss, torch.ones(4, 2), torch.zeros(4, 1))
        >>> loss(params_of(model)).shape
        torch.Size([])
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"bind: model must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(criterion):
        raise TypeError(f"bind: criterion must be callable, got {type(criterion).__name__}")
    if mode not in _MODES:
        raise ValueError(f"bind: mode must be one of {_MODES}, got {mode!r}")
    _check_input_dtypes(model, inputs)
    return BoundLoss(model, criterion, inputs, targets, mode, include_frozen, dropout_seed)


def _check_input_dtypes(model: nn.Module, inputs) -> None:
    """Floating inputs must have the dtype of the floating parameters (a common slip)."""
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if len(dtypes) != 1:
        return
    (dtype,) = dtypes
    for index, x in enumerate(inputs if isinstance(inputs, tuple) else (inputs,)):
        if isinstance(x, Tensor) and x.is_floating_point() and x.dtype != dtype:
            raise TypeError(
                f"bind: inputs[{index}] has dtype {x.dtype} but the model's parameters are "
                f"{dtype}; convert one of them (e.g. model.to({dtype}) or inputs.to({dtype}))"
            )


_NORMS_WITH_STATS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)


@contextlib.contextmanager
def _module_mode(model: nn.Module, mode: str) -> Iterator[None]:
    """Put the module in ``mode`` for one call, with running statistics read-only.

    In training mode a norm layer would update its running statistics in place;
    we detach them for the call (``track_running_stats=False`` and no running
    buffers makes the layer use batch statistics and write nothing), and restore
    the module exactly afterwards.
    """
    was_training = {m: m.training for m in model.modules()}
    saved = []
    try:
        model.train(mode == "train")
        if mode == "train":
            for m in model.modules():
                if isinstance(m, _NORMS_WITH_STATS) and m.track_running_stats:
                    saved.append((m, m.running_mean, m.running_var, m.num_batches_tracked))
                    m.track_running_stats = False
                    m.running_mean = None
                    m.running_var = None
                    m.num_batches_tracked = None
        yield
    finally:
        for m, mean, var, count in saved:
            m.running_mean, m.running_var, m.num_batches_tracked = mean, var, count
            m.track_running_stats = True
        for m, training in was_training.items():
            m.training = training


@contextlib.contextmanager
def _dropout_rng(mode: str, seed: int, cuda_devices: list[int]) -> Iterator[None]:
    if mode != "train":
        yield
        return
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(seed)
        yield
