"""Accurate flows of vector fields on parameter trees, with an error estimate.

A field is a pure callable ``F(state) -> tree`` on a ``dict[str, Tensor]``. The flow
``y' = F(y), y(0) = y0`` is integrated over ``[0, T]`` in *displacement form*
``y = y0 + Δ`` (the small ``Δ`` carries the digits that measure a discretization
drift; ``y0`` is never rounded into it).

* :func:`rk4_flow` — fixed-step classical Runge–Kutta (order 4) in torch, on any
  device; with ``batched=True`` every leaf has a leading batch dimension and ``T`` is
  one time per batch element (the field must then accept any batch size, e.g. a
  ``torch.func.vmap``-ed field).
* :func:`flow` — :func:`rk4_flow` with ``n`` and ``2n`` steps and the step-doubling
  (Richardson) estimate ``‖Δ_2n − Δ_n‖ / (2⁴ − 1)`` of the error of the ``2n``-step
  result; ``n`` doubles until the estimate is below ``target_error``. In batched mode
  the ``n``- and ``2n``-step runs share field evaluations (one call per stage).
* :func:`scipy_flow` — SciPy's ``solve_ivp`` with DOP853 (order 8) at ``rtol = 1e-13``,
  the reference; its error estimate is the gap to a run at 1000× looser tolerances.

All results are :class:`FlowResult` tuples.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from bea._checks import check_callable, check_params

Tree = dict[str, Tensor]
Field = Callable[[Tree], Tree]

#: Order of the fixed-step method of :func:`rk4_flow` (used by the error estimate).
RK4_ORDER = 4


class FlowResult(NamedTuple):
    """The end point of a flow and how far it may be from the exact one.

    Attributes:
        state: ``y(T) = y0 + displacement``.
        displacement: ``Δ = y(T) − y0``, computed without rounding ``y0`` into it.
        error: estimate of ``‖y(T) − y_exact(T)‖`` (one per batch element if batched).
        steps: number of steps of the fixed-step method (0 for the adaptive reference).
        method: ``"rk4"`` or ``"dop853"``.
    """

    state: Tree
    displacement: Tree
    error: Tensor
    steps: int
    method: str


def _check_time(call: str, T, batched: bool, like: Tree):
    if batched:
        if not isinstance(T, Tensor) or T.ndim != 1:
            raise ValueError(
                f"{call}: with batched=True, T must be a 1-d tensor of times (one per batch "
                f"element), got {T if not isinstance(T, Tensor) else tuple(T.shape)}"
            )
        batch = {v.shape[0] if v.ndim else None for v in like.values()}
        if batch != {T.shape[0]}:
            raise ValueError(
                f"{call}: every leaf must have leading batch dimension {T.shape[0]} "
                f"(the length of T), got leading sizes {sorted(map(str, batch))}"
            )
        if not bool((T >= 0).all()) or not bool(torch.isfinite(T).all()):
            raise ValueError(f"{call}: T must be finite and >= 0, got {T.tolist()}")
        return T
    if isinstance(T, Tensor):
        if T.numel() != 1:
            raise ValueError(f"{call}: T must be a scalar, got shape {tuple(T.shape)}")
        T = T.item()
    if isinstance(T, bool) or not isinstance(T, (int, float)) or not math.isfinite(T) or T < 0:
        raise ValueError(f"{call}: T must be a finite number >= 0, got {T!r}")
    return float(T)


def _check_steps(call: str, steps) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"{call}: steps must be an int >= 1, got {steps!r}")
    return steps


def _per_element(dt, leaf: Tensor, batched: bool):
    """``dt`` shaped to multiply ``leaf`` (one value per batch element when batched)."""
    if not batched:
        return dt
    return dt.to(leaf.dtype).reshape((-1,) + (1,) * (leaf.ndim - 1))


def _rk4_increment(field: Field, y0: Tree, delta: Tree, dt, batched: bool) -> Tree:
    """One classical RK4 step on ``Δ`` for ``Δ' = F(y0 + Δ)``; returns the new ``Δ``."""

    def at(shift: Tree | None, scale: float) -> Tree:
        point = {
            k: y0[k]
            + delta[k]
            + (0 if shift is None else scale * _per_element(dt, v, batched) * shift[k])
            for k, v in y0.items()
        }
        return field(point)

    k1 = at(None, 0.0)
    k2 = at(k1, 0.5)
    k3 = at(k2, 0.5)
    k4 = at(k3, 1.0)
    return {
        k: delta[k] + _per_element(dt, v, batched) / 6 * (k1[k] + 2 * k2[k] + 2 * k3[k] + k4[k])
        for k, v in y0.items()
    }


def rk4_flow(field: Field, state: Mapping[str, Tensor], T, steps: int, batched: bool = False):
    """Flow of ``field`` for time ``T`` by ``steps`` classical RK4 steps (error ``O(T⁵/steps⁴)``
    per unit of the field's scale).

    Args:
        field: ``F(state) -> tree`` with the keys and shapes of ``state``.
        state: the start ``y0``.
        T: time (a number; a 1-d tensor of times if ``batched``).
        steps: number of equal steps.
        batched: leaves carry a leading batch dimension, one flow per element.

    Returns:
        ``(y(T), Δ)`` with ``Δ = y(T) − y0`` accumulated on its own.

    Example:
        >>> y, d = rk4_flow(lambda s: {"x": -s["x"]}, {"x": torch.tensor([1.0])}, 1.0, 8)
        >>> round(y["x"].item(), 5)                               # exp(-1)
        0.36788
    """
    call = "rk4_flow"
    check_callable(call, field, "field")
    state = check_params(call, state, "state")
    T = _check_time(call, T, batched, state)
    steps = _check_steps(call, steps)
    dt = T / steps
    delta = {k: torch.zeros_like(v) for k, v in state.items()}
    for _ in range(steps):
        delta = _rk4_increment(field, state, delta, dt, batched)
    return {k: state[k] + delta[k] for k in state}, delta


def _tree_gap(a: Tree, b: Tree, batched: bool) -> Tensor:
    """``‖a − b‖`` over all leaves (per batch element if batched)."""
    if batched:
        squares = [((a[k] - b[k]) ** 2).reshape(a[k].shape[0], -1).sum(1) for k in a]
    else:
        squares = [((a[k] - b[k]) ** 2).sum() for k in a]
    return torch.sqrt(torch.stack(squares).sum(0))


def _coarse_and_fine(field: Field, y0: Tree, T, steps: int, batched: bool):
    """RK4 with ``steps`` and ``2 steps``; batched runs share one field call per stage."""
    if not batched:
        return (
            rk4_flow(field, y0, T, steps)[1],
            rk4_flow(field, y0, T, 2 * steps)[1],
        )
    size = next(iter(y0.values())).shape[0]
    fine = {k: torch.zeros_like(v) for k, v in y0.items()}
    coarse = {k: torch.zeros_like(v) for k, v in y0.items()}
    for index in range(2 * steps):
        if index % 2 == 0:
            # advance both runs with one stacked call per stage
            start = {k: torch.cat([y0[k], y0[k]]) for k in y0}
            delta = {k: torch.cat([fine[k], coarse[k]]) for k in y0}
            dt = torch.cat([T / (2 * steps), T / steps])
            moved = _rk4_increment(field, start, delta, dt, True)
            fine = {k: v[:size] for k, v in moved.items()}
            coarse = {k: v[size:] for k, v in moved.items()}
        else:
            fine = _rk4_increment(field, y0, fine, T / (2 * steps), True)
    return coarse, fine


def flow(
    field: Field,
    state: Mapping[str, Tensor],
    T,
    *,
    steps: int = 1,
    target_error=None,
    max_steps: int = 64,
    batched: bool = False,
) -> FlowResult:
    """Flow of ``field`` for time ``T`` by RK4 with a step-doubling error estimate.

    Runs ``n = steps`` and ``2n`` steps and returns the ``2n``-step result with error
    estimate ``‖Δ_2n − Δ_n‖ / 15`` (Richardson for an order-4 method). If
    ``target_error`` is given (a number, or a tensor with one bound per batch element),
    ``n`` doubles until every estimate is at or below it, up to ``max_steps``; the
    returned estimate says whether the target was met.

    Raises:
        ValueError: negative or non-finite ``T``, ``steps < 1``, a bad batch layout.

    Example:
        >>> result = flow(lambda s: {"x": -s["x"]}, {"x": torch.tensor([1.0])}, 1.0, steps=4)
        >>> bool(abs(result.state["x"].item() - math.exp(-1)) < 10 * result.error.item())
        True
    """
    call = "flow"
    check_callable(call, field, "field")
    state = check_params(call, state, "state")
    T = _check_time(call, T, batched, state)
    steps = _check_steps(call, steps)
    max_steps = _check_steps(call, max_steps)
    while True:
        coarse, fine = _coarse_and_fine(field, state, T, steps, batched)
        error = _tree_gap(fine, coarse, batched) / (2**RK4_ORDER - 1)
        done = target_error is None or bool((error <= target_error).all())
        if done or 2 * steps > max_steps:
            return FlowResult(
                state={k: state[k] + fine[k] for k in state},
                displacement=fine,
                error=error,
                steps=2 * steps,
                method="rk4",
            )
        steps *= 2


def scipy_flow(
    field: Field,
    state: Mapping[str, Tensor],
    T,
    *,
    rtol: float = 1e-13,
    atol: float | None = None,
) -> FlowResult:
    """Reference flow by SciPy's ``solve_ivp(method="DOP853")`` in float64 on the CPU.

    The state must be float64 (tolerances near ``1e-13`` are meaningless in float32).

    The displacement ``Δ`` is integrated (``Δ(0) = 0``). ``atol`` defaults to
    ``1e-3 · rtol · T · max|F(y0)|`` (the scale of ``Δ``). The error estimate is
    ``‖Δ − Δ_loose‖`` with ``Δ_loose`` run at 1000× looser tolerances, an
    over-estimate of the error of ``Δ``.

    Example:
        >>> start = {"x": torch.tensor([1.0], dtype=torch.float64)}
        >>> result = scipy_flow(lambda s: {"x": -s["x"]}, start, 1.0)
        >>> bool(abs(result.state["x"].item() - math.exp(-1)) < 1e-12)
        True
    """
    from scipy.integrate import solve_ivp

    call = "scipy_flow"
    check_callable(call, field, "field")
    state = check_params(call, state, "state")
    T = _check_time(call, T, False, state)
    if not (isinstance(rtol, (int, float)) and 0 < rtol < 1):
        raise ValueError(f"{call}: rtol must be in (0, 1), got {rtol!r}")
    names = list(state)
    not_double = sorted({str(v.dtype) for v in state.values() if v.dtype != torch.float64})
    if not_double:
        raise ValueError(
            f"{call}: the reference integrator needs a float64 state (rtol={rtol:g}), got "
            f"{', '.join(not_double)}"
        )
    shapes = [state[k].shape for k in names]
    sizes = [state[k].numel() for k in names]
    dtype, device = state[names[0]].dtype, state[names[0]].device

    def unflatten(flat: np.ndarray) -> Tree:
        pieces = torch.split(torch.as_tensor(flat, dtype=torch.float64), sizes)
        return {
            k: p.reshape(s).to(dtype=dtype, device=device)
            for k, p, s in zip(names, pieces, shapes, strict=True)
        }

    def rhs(_t, flat_delta):
        delta = unflatten(flat_delta)
        value = field({k: state[k] + delta[k] for k in names})
        return torch.cat([value[k].detach().reshape(-1).double().cpu() for k in names]).numpy()

    total = sum(sizes)
    if atol is None:
        scale = float(np.max(np.abs(rhs(0.0, np.zeros(total))))) if total else 0.0
        atol = max(1e-3 * rtol * T * scale, 1e-300)

    def solve(rtol_, atol_):
        solution = solve_ivp(
            rhs, (0.0, T), np.zeros(total), method="DOP853", rtol=rtol_, atol=atol_
        )
        if not solution.success:
            raise ValueError(f"{call}: solve_ivp failed: {solution.message}")
        return solution.y[:, -1]

    tight = solve(rtol, atol)
    loose = solve(min(1e3 * rtol, 1e-3), 1e3 * atol)
    delta = unflatten(tight)
    error = torch.tensor(float(np.linalg.norm(tight - loose)), dtype=dtype)
    return FlowResult(
        state={k: state[k] + delta[k] for k in names},
        displacement=delta,
        error=error,
        steps=0,
        method="dop853",
    )
