"""Input validation shared by the public functions.

Every check raises ``TypeError`` or ``ValueError`` whose message starts with the
name of the public call and shows the offending value, so that a user never sees a
bare traceback from deep inside torch for a mistake of theirs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from torch import Tensor


def check_params(call: str, params, what: str = "params") -> dict[str, Tensor]:
    """``params`` must be a non-empty mapping of names to floating-point tensors."""
    if not isinstance(params, Mapping):
        raise TypeError(
            f"{call}: {what} must be a dict[str, Tensor] (e.g. dict(model.named_parameters())), "
            f"got {type(params).__name__}"
        )
    if len(params) == 0:
        raise ValueError(f"{call}: {what} is empty")
    for name, value in params.items():
        if not isinstance(name, str):
            raise TypeError(f"{call}: {what} keys must be str, got {name!r}")
        if not isinstance(value, Tensor):
            raise TypeError(
                f"{call}: {what}[{name!r}] must be a Tensor, got {type(value).__name__}"
            )
        if not (value.is_floating_point() or value.is_complex()):
            raise TypeError(
                f"{call}: {what}[{name!r}] has dtype {value.dtype}; derivatives need a "
                "floating-point dtype (e.g. torch.float32 or torch.float64)"
            )
    return dict(params)


def check_like(call: str, params: Mapping[str, Tensor], other, what: str) -> dict[str, Tensor]:
    """``other`` must be a tree with exactly the keys and shapes of ``params``."""
    other = check_params(call, other, what)
    if other.keys() != params.keys():
        missing = sorted(set(params) - set(other))
        extra = sorted(set(other) - set(params))
        raise ValueError(
            f"{call}: {what} must have the keys of params (missing: {missing}, unexpected: {extra})"
        )
    for name, value in other.items():
        if value.shape != params[name].shape:
            raise ValueError(
                f"{call}: {what}[{name!r}] has shape {tuple(value.shape)}, "
                f"expected {tuple(params[name].shape)} as in params"
            )
    return other


def check_callable(call: str, fn, what: str) -> Callable:
    if not callable(fn):
        raise TypeError(
            f"{call}: {what} must be callable params -> Tensor, got {type(fn).__name__}"
        )
    return fn


def check_losses(call: str, losses, minimum: int = 1) -> list[Callable]:
    """``losses`` must be a sequence of at least ``minimum`` callables."""
    if callable(losses) or isinstance(losses, (str, bytes)):
        raise TypeError(
            f"{call}: losses must be a sequence of callables, got a single {type(losses).__name__}"
        )
    try:
        losses = list(losses)
    except TypeError:
        raise TypeError(
            f"{call}: losses must be a sequence of callables, got {type(losses).__name__}"
        ) from None
    if len(losses) < minimum:
        raise ValueError(f"{call}: needs at least {minimum} loss(es), got {len(losses)}")
    for index, loss in enumerate(losses):
        check_callable(call, loss, f"losses[{index}]")
    return losses


def check_lr(call: str, lr) -> float:
    """The learning rate must be a finite number > 0."""
    if isinstance(lr, Tensor):
        if lr.numel() != 1:
            raise ValueError(
                f"{call}: lr must be a scalar, got a tensor of shape {tuple(lr.shape)}"
            )
        lr = lr.item()
    if isinstance(lr, bool) or not isinstance(lr, (int, float)):
        raise TypeError(f"{call}: lr must be a number, got {type(lr).__name__}")
    if not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"{call}: lr must be a finite number > 0, got {lr}")
    return float(lr)


def check_scalar_output(call: str, value, what: str = "loss") -> Tensor:
    """A loss must return a real scalar tensor (shape () or (1,))."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{call}: {what} returned {type(value).__name__}, expected a scalar Tensor")
    if value.numel() != 1:
        raise ValueError(f"{call}: {what} returned shape {tuple(value.shape)}, expected a scalar")
    if not value.is_floating_point():
        raise TypeError(
            f"{call}: {what} returned dtype {value.dtype}, expected a floating-point scalar"
        )
    return value.reshape(())


def _is_traced(value: Tensor) -> bool:
    """True inside a torch.func transform, where ``.item()`` would fail."""
    try:
        return torch._C._functorch.is_functorch_wrapped_tensor(value)
    except AttributeError:  # pragma: no cover - older torch
        return False


def check_finite_value(call: str, value: Tensor, what: str = "loss") -> None:
    """Raise ``ValueError`` if a (non-traced) scalar is NaN or infinite."""
    if _is_traced(value):
        return
    if not bool(torch.isfinite(value.detach()).all()):
        raise ValueError(f"{call}: {what} is not finite ({value.detach().item()})")


def check_finite_tree(call: str, tree: Mapping[str, Tensor], what: str) -> None:
    """Raise ``ValueError`` naming the first leaf of ``tree`` that holds NaN or inf."""
    leaves = [v for v in tree.values() if not _is_traced(v)]
    if not leaves:
        return
    # NaN and inf propagate through a sum, so one summing pass and one host sync
    # clear the common case; the entry-wise scan runs only when the sum is not finite
    # (which a sum of large finite numbers can also be: then nothing is raised).
    total = torch.stack([v.detach().sum() for v in leaves]).sum()
    if bool(torch.isfinite(total)):
        return
    for name, value in tree.items():
        if not bool(torch.isfinite(value.detach()).all()):
            bad = value.detach()[~torch.isfinite(value.detach())].flatten()[0].item()
            raise ValueError(f"{call}: {what}[{name!r}] is not finite (contains {bad})")
