"""The drift-order checker: does a step follow its modified flow to the claimed order?

For a step map ``step(θ, h)`` and a truncated modified field ``F_h = Σ_{k≤N} h^k f_k``
the *discretization drift* is

    drift(h) = ‖φ_h^{F_h}(θ) − step(θ, h)‖,

the distance after one step between the flow of ``F_h`` run for time ``h`` and the
iterate. Backward error analysis predicts ``drift = O(h^(N+2))``. A check sweeps
``h = 2^-k``, integrates each flow (:func:`bea.ode.flow`, RK4 with a step-doubling
error estimate kept ≥ 100× below the drift, or the exact ``expm`` flow of a linear
field) and fits the log-log slope. It passes when the slope is within ``tol`` of the
expected one *and* the fit is trustworthy:

* no curvature: local slopes between neighbouring ``h`` differ by at most ``2 tol``
  (else the grid is pre-asymptotic and the check says so);
* no point at the rounding floor ``64 ε (‖θ‖ + ‖Δ‖)`` (such points are dropped and
  reported; fewer than three usable points fail the check);
* integration error ≤ drift / 100 at every ``h``.

Settings (design.md §1): one GD step (gradient flow 2, IGR flow 3, order-2 field 4);
one multitask step (gradient flow 2, loss + IGR + conflict 3, without conflict 2);
``n`` consecutive steps on different tasks (gradient flow of ``Σ L_k`` 2, order 1
without bracket 2, with bracket 3, order 2 4); the order effect
``θ_(1→2) − θ_(2→1) − h² [g1, g2]`` (3); random reshuffling (3); quadratics against
exact ``expm`` flows; and the gap between flows with and without the conflict or
bracket term (2). :func:`check_drift` runs the same measurement for any step map.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.func import grad, vmap

from bea._checks import check_callable, check_losses, check_params
from bea.derivatives import lie_bracket
from bea.expansion import (
    check_identity_at_zero,
    gd_steps,
    terms_function,
)
from bea.modified import igr, multitask_terms, order_effect, sequential_modified_terms
from bea.ode import flow

Tree = dict[str, Tensor]
Terms = Callable[[Tree], list[Tree]]

#: Default tolerance on a fitted slope.
SLOPE_TOLERANCE = 0.15
#: The integration error must stay this many times below the drift.
INTEGRATION_MARGIN = 100.0
_LR_KEY = "__bea_verify_lr__"


class DriftCheck(NamedTuple):
    """One drift-order check.

    Attributes:
        name: the setting, e.g. ``"gd-igr-flow/early"``.
        flow: what was compared, in words.
        expected_slope: the order predicted by the theory (``None`` for identity checks).
        fitted_slope: least-squares slope of ``log drift`` against ``log h`` on the
            usable points (``nan`` if fewer than three).
        passed: slope within tolerance and a trustworthy fit (module docstring).
        h: the step sizes.
        drift: the measured drift at each ``h``.
        integration_error: the estimated integration error at each ``h``.
        notes: why a fit is not trusted, or facts worth showing (pattern flips …).
        local_slopes: slopes between neighbouring points.
        extra: further numbers (e.g. activation flips per ``h``).
    """

    name: str
    flow: str
    expected_slope: float | None
    fitted_slope: float
    passed: bool
    h: list[float]
    drift: list[float]
    integration_error: list[float]
    notes: list[str]
    local_slopes: list[float]
    extra: dict

    def as_record(self) -> dict:
        """A JSON-ready dict of the check."""
        record = self._asdict()

        def clean(value):
            if isinstance(value, float) and not math.isfinite(value):
                return None
            if isinstance(value, list):
                return [clean(v) for v in value]
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            return value

        return {k: clean(v) for k, v in record.items()}


# ---------------------------------------------------------------------------------------
# Grids and fits
# ---------------------------------------------------------------------------------------


def h_grid(k_first: int, k_last: int) -> list[float]:
    """``[2^-k_first, …, 2^-k_last]``, largest first."""
    if not (isinstance(k_first, int) and isinstance(k_last, int)) or k_last < k_first + 2:
        raise ValueError(
            f"h_grid: need integers with k_last >= k_first + 2 (three points), got "
            f"{k_first!r}, {k_last!r}"
        )
    return [2.0**-k for k in range(k_first, k_last + 1)]


def _check_grid(call: str, grid) -> list[float]:
    try:
        values = [float(h) for h in grid]
    except (TypeError, ValueError):
        raise TypeError(f"{call}: h grid must be a sequence of numbers, got {grid!r}") from None
    bad = [h for h in values if not (math.isfinite(h) and h > 0)]
    if bad:
        raise ValueError(f"{call}: every h must be a finite number > 0, got {bad[0]}")
    if len(values) < 3:
        raise ValueError(f"{call}: need at least 3 values of h to fit a slope, got {len(values)}")
    return values


def fit_slope(
    h: Sequence[float],
    drift: Sequence[float],
    expected: float | None,
    *,
    tol: float = SLOPE_TOLERANCE,
    floor: Sequence[float] | float = 0.0,
    integration_error: Sequence[float] | None = None,
    exclude: Sequence[bool] | None = None,
    exclude_reason: str = "excluded",
) -> tuple[float, bool, list[str], list[float]]:
    """Fit ``log drift = p log h + c`` and judge it against ``expected``.

    ``exclude`` marks points left out of the fit for a stated reason (e.g. a ReLU
    pattern flipped over the step, where the smooth theory does not apply).

    Returns:
        ``(slope, passed, notes, local_slopes)``; see the module docstring for the rules.

    Example:
        >>> h = [2.0**-k for k in range(3, 7)]
        >>> fit_slope(h, [3 * x**2 for x in h], 2.0)[:2]
        (2.0, True)
    """
    h = np.asarray(h, dtype=float)
    drift = np.asarray(drift, dtype=float)
    floor = np.broadcast_to(np.asarray(floor, dtype=float), h.shape)
    notes = []
    excluded = np.zeros(h.shape, bool) if exclude is None else np.asarray(exclude, bool)
    if excluded.any():
        left_out = ", ".join(f"2^{math.log2(x):.0f}" for x in h[excluded])
        notes.append(f"h = {left_out} left out of the fit: {exclude_reason}")
    non_finite = ~np.isfinite(drift) & ~excluded
    if non_finite.any():
        bad = ", ".join(f"2^{math.log2(x):.0f}" for x in h[non_finite])
        notes.append(f"drift is not finite at h = {bad}: the check fails")
    usable = np.isfinite(drift) & (drift > floor) & (drift > 0)
    if (~usable & ~excluded & ~non_finite).any():
        dropped = ", ".join(f"2^{math.log2(x):.0f}" for x in h[~usable & ~excluded & ~non_finite])
        notes.append(f"drift at the rounding floor at h = {dropped} (dropped from the fit)")
    usable &= ~excluded
    x, y = np.log(h[usable]), np.log(drift[usable])
    local = list(np.diff(y) / np.diff(x)) if usable.sum() >= 2 else []
    if usable.sum() < 3:
        notes.append("fewer than 3 usable points: no slope")
        return float("nan"), False, notes, [float(s) for s in local]
    slope = float(np.polyfit(x, y, 1)[0])
    slope = round(slope, 12)
    passed = True
    if max(local) - min(local) > 2 * tol:
        notes.append(
            f"curvature in the log-log plot (local slopes {min(local):.2f}..{max(local):.2f}): "
            "grid partly outside the asymptotic range"
        )
        passed = False
    if integration_error is not None:
        ratio = np.asarray(integration_error, dtype=float) * INTEGRATION_MARGIN
        if (ratio[usable] > drift[usable]).any():
            notes.append("integration error not 100x below the drift at some h")
            passed = False
    if expected is not None and not abs(slope - expected) <= tol:
        passed = False
    if non_finite.any():
        passed = False
    return slope, passed, notes, [float(s) for s in local]


def _norm(tree: Mapping[str, Tensor]) -> float:
    return float(torch.sqrt(sum((v.double() ** 2).sum() for v in tree.values())))


def _gap(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> float:
    return float(torch.sqrt(sum(((a[k] - b[k]).double() ** 2).sum() for k in a)))


def _rounding_floor(state: Mapping[str, Tensor], displacement: Mapping[str, Tensor]) -> float:
    eps = torch.finfo(next(iter(state.values())).dtype).eps
    return 64 * eps * (_norm(state) + _norm(displacement))


# ---------------------------------------------------------------------------------------
# Flows of h-polynomial fields
# ---------------------------------------------------------------------------------------


def _batched_field(terms: Terms, vectorize: bool) -> Callable[[Tree], Tree]:
    """The field ``Σ h^k f_k`` on a batch of states, ``h`` carried in the state."""
    batched_terms = vmap(terms) if vectorize else None

    def field(augmented: Tree) -> Tree:
        lr = augmented[_LR_KEY]
        state = {k: v for k, v in augmented.items() if k != _LR_KEY}
        if vectorize:
            values = batched_terms(state)
        else:
            rows = [terms({k: v[i] for k, v in state.items()}) for i in range(lr.shape[0])]
            values = [
                {k: torch.stack([row[j][k] for row in rows]) for k in state}
                for j in range(len(rows[0]))
            ]
        out = {}
        for k, v in state.items():
            power = lr.reshape((-1,) + (1,) * (v.ndim - 1))
            out[k] = sum(power**j * term[k] for j, term in enumerate(values))
        out[_LR_KEY] = torch.zeros_like(lr)
        return out

    return field


def flow_displacements(
    terms: Terms,
    state: Mapping[str, Tensor],
    hs: Sequence[float],
    *,
    target: Sequence[float] | None = None,
    vectorize: bool = True,
    steps: int = 1,
    max_steps: int = 64,
) -> tuple[list[Tree], list[float]]:
    """Displacements ``φ_h^{F_h}(θ) − θ`` of ``F_h = Σ h^k f_k`` for each ``h`` in ``hs``.

    All ``h`` are integrated at once (a batch). ``target`` (one per ``h``) is the
    integration error to reach; steps double until it is met or ``max_steps``.

    Returns:
        ``(displacements, error_estimates)``.
    """
    hs = [float(h) for h in hs]
    reference = next(iter(state.values()))
    times = torch.tensor(hs, dtype=reference.dtype, device=reference.device)
    batch = {k: v.unsqueeze(0).expand((len(hs),) + v.shape).clone() for k, v in state.items()}
    batch[_LR_KEY] = times.clone()
    bound = (
        None
        if target is None
        else torch.tensor(target, dtype=reference.dtype, device=reference.device)
    )
    result = flow(
        _batched_field(terms, vectorize),
        batch,
        times,
        steps=steps,
        target_error=bound,
        max_steps=max_steps,
        batched=True,
    )
    moved = [{k: result.displacement[k][i] for k in state} for i in range(len(hs))]
    return moved, [float(e) for e in result.error]


def _step_displacements(step, state: Tree, hs: Sequence[float]) -> list[Tree]:
    reference = next(iter(state.values()))
    out = []
    for h in hs:
        image = step(state, torch.tensor(h, dtype=reference.dtype, device=reference.device))
        out.append({k: (image[k] - state[k]).detach() for k in state})
    return out


def _measure(
    terms: Terms,
    state: Tree,
    hs: Sequence[float],
    discrete: Sequence[Tree],
    vectorize: bool,
    skip: Sequence[bool] | None = None,
) -> tuple[list[Tree], list[float], list[float]]:
    """Flow displacements, drifts and integration errors; steps grow until error ≤ drift/100
    (except at the points marked in ``skip``, which are not fitted)."""
    moved, errors = flow_displacements(terms, state, hs, vectorize=vectorize)
    drift = [_gap(m, d) for m, d in zip(moved, discrete, strict=True)]
    floors = [_rounding_floor(state, d) for d in discrete]
    skip = [False] * len(hs) if skip is None else list(skip)
    needs = [
        e * INTEGRATION_MARGIN > max(x, f) and not s
        for e, x, f, s in zip(errors, drift, floors, skip, strict=True)
    ]
    if any(needs):
        target = [
            math.inf if s else max(x, f) / INTEGRATION_MARGIN
            for x, f, s in zip(drift, floors, skip, strict=True)
        ]
        # one more doubling at most: an unmet target is reported, not chased
        moved, errors = flow_displacements(
            terms, state, hs, target=target, vectorize=vectorize, steps=2, max_steps=8
        )
        drift = [_gap(m, d) for m, d in zip(moved, discrete, strict=True)]
    return moved, drift, errors


def _record(
    name: str,
    flow_text: str,
    expected: float | None,
    hs: Sequence[float],
    drift: Sequence[float],
    errors: Sequence[float],
    floors: Sequence[float],
    tol: float,
    notes: Sequence[str] = (),
    extra: dict | None = None,
    exclude: Sequence[bool] | None = None,
    exclude_reason: str = "excluded",
) -> DriftCheck:
    slope, passed, fit_notes, local = fit_slope(
        hs,
        drift,
        expected,
        tol=tol,
        floor=floors,
        integration_error=errors,
        exclude=exclude,
        exclude_reason=exclude_reason,
    )
    return DriftCheck(
        name=name,
        flow=flow_text,
        expected_slope=expected,
        fitted_slope=slope,
        passed=passed,
        h=[float(h) for h in hs],
        drift=[float(x) for x in drift],
        integration_error=[float(e) for e in errors],
        notes=list(notes) + fit_notes,
        local_slopes=local,
        extra=dict(extra or {}),
    )


def check_drift(
    step: Callable[[Tree, Tensor], Tree],
    state: Mapping[str, Tensor],
    terms: Terms,
    expected_slope: float,
    hs: Sequence[float],
    *,
    name: str = "custom",
    flow_text: str = "",
    tol: float = SLOPE_TOLERANCE,
    vectorize: bool = True,
) -> DriftCheck:
    """Check that ``step`` follows the flow of ``F_h = Σ h^k f_k`` with drift ``O(h^p)``.

    Args:
        step: ``step(state, h) -> state`` (identity at ``h = 0``), e.g.
            :func:`bea.expansion.gd_steps`, or a user's optimizer step.
        state: the point ``θ`` (float64 recommended).
        terms: ``terms(state) -> [f_0, …, f_N]``, the modified field's terms at a
            state, e.g. ``lambda s: bea.sequential_modified_terms(losses, s, 1)`` or
            ``bea.expansion.terms_function(step, 2)``. Evaluated on
            a batch of states with ``torch.func.vmap`` unless ``vectorize=False``.
        expected_slope: the predicted order ``p`` (``N + 2`` for a correct field).
        hs: the step sizes (at least three, all > 0), e.g. :func:`h_grid`.
        name, flow_text: labels of the result.
        tol: allowed ``|fitted − expected|``.

    Returns:
        A :class:`DriftCheck`.

    Raises:
        ValueError: a step that is not the identity at ``h = 0``, a bad grid.

    Example:
        >>> loss = lambda p: (torch.cos(p["x"]) + p["x"] ** 2).sum()
        >>> x = {"x": torch.tensor([0.3, -1.2], dtype=torch.float64)}
        >>> step = gd_steps([loss])
        >>> check = check_drift(step, x, terms_function(step, 1), 3, h_grid(3, 7))
        >>> check.passed, round(check.fitted_slope)
        (True, 3)
    """
    call = "check_drift"
    check_callable(call, step, "step")
    check_callable(call, terms, "terms")
    state = check_params(call, state, "state")
    hs = _check_grid(call, hs)
    check_identity_at_zero(call, step, state)
    discrete = _step_displacements(step, state, hs)
    _, drift, errors = _measure(terms, state, hs, discrete, vectorize)
    floors = [_rounding_floor(state, d) for d in discrete]
    return _record(name, flow_text, expected_slope, hs, drift, errors, floors, tol)


def _gap_check(
    name: str,
    flow_text: str,
    hs: Sequence[float],
    with_term: Sequence[Tree],
    without_term: Sequence[Tree],
    errors: Sequence[float],
    state: Tree,
    tol: float,
) -> DriftCheck:
    """``‖φ_with − φ_without‖`` must scale as ``h²``: the term enters at ``h · h``."""
    gaps = [_gap(a, b) for a, b in zip(with_term, without_term, strict=True)]
    floors = [_rounding_floor(state, a) for a in with_term]
    return _record(name, flow_text, 2.0, hs, gaps, errors, floors, tol)


# ---------------------------------------------------------------------------------------
# Terms of the fields compared
# ---------------------------------------------------------------------------------------


def _gradient_flow_terms(losses: Sequence[Callable], weights=None) -> Terms:
    """``[-Σ α_k ∇L_k]``."""
    weights = [1.0] * len(losses) if weights is None else list(weights)
    total = grad(lambda p: sum(w * loss(p) for w, loss in zip(weights, losses, strict=True)))
    return lambda s: [{k: -v for k, v in total(s).items()}]


def _igr_terms(losses: Sequence[Callable]) -> Terms:
    """``[-Σ g_k, -½ Σ H_k g_k]`` (order 1 without any bracket), via :func:`bea.igr`."""
    total = grad(lambda p: sum(loss(p) for loss in losses))
    regularizer = grad(lambda p: sum(igr(loss, p, 1.0) for loss in losses))

    def terms(s: Tree) -> list[Tree]:
        g, r = total(s), regularizer(s)
        return [{k: -v for k, v in g.items()}, {k: -v for k, v in r.items()}]

    return terms


def _engine_terms(losses: Sequence[Callable], order: int) -> Terms:
    return terms_function(gd_steps(losses), order)


# ---------------------------------------------------------------------------------------
# The settings
# ---------------------------------------------------------------------------------------


def gd_checks(
    loss: Callable,
    params: Mapping[str, Tensor],
    grids: Mapping[str, Sequence[float]],
    *,
    prefix: str = "gd",
    suffix: str = "",
    tol: float = SLOPE_TOLERANCE,
    pattern: Callable[[Tree], Tensor] | None = None,
    orders: Sequence[str] = ("gradient-flow", "igr-flow", "order2"),
) -> list[DriftCheck]:
    """One GD step ``θ - h ∇L``: gradient flow (2), IGR flow ``-∇(L + (h/4)‖∇L‖²)`` (3),
    order-2 field of the expansion engine (4).

    Args:
        grids: ``{"gradient-flow": hs, "igr-flow": hs, "order2": hs}``.
        pattern: for a piecewise-smooth model (ReLU), ``params -> pre-activations``;
            the number of units whose sign changes over the step is reported per ``h``.
    """
    params = check_params("gd_checks", params)
    step = gd_steps([loss])
    fields = {
        "gradient-flow": (_gradient_flow_terms([loss]), 2.0, "gradient flow of L"),
        "igr-flow": (_igr_terms([loss]), 3.0, "flow of L + (h/4)|grad L|^2"),
        "order2": (_engine_terms([loss], 2), 4.0, "order-2 field (expansion engine)"),
    }
    checks = []
    for key in orders:
        terms, expected, text = fields[key]
        hs = _check_grid("gd_checks", grids[key])
        discrete = _step_displacements(step, params, hs)
        notes, extra, exclude = [], {}, None
        if pattern is not None:
            before = pattern(params) > 0
            flips = [
                int(((pattern({k: params[k] + d[k] for k in params}) > 0) != before).sum())
                for d in discrete
            ]
            extra["pattern_flips"] = flips
            notes.append(f"activation pattern flips over the step: {flips}")
            exclude = [count > 0 for count in flips]
        _, drift, errors = _measure(terms, params, hs, discrete, True, skip=exclude)
        floors = [_rounding_floor(params, d) for d in discrete]
        checks.append(
            _record(
                f"{prefix}-{key}{suffix}",
                text,
                expected,
                hs,
                drift,
                errors,
                floors,
                tol,
                notes,
                extra,
                exclude=exclude,
                exclude_reason="activation pattern flipped over the step (loss not smooth there)",
            )
        )
    return checks


def multitask_checks(
    losses: Sequence[Callable],
    params: Mapping[str, Tensor],
    grids: Mapping[str, Sequence[float]],
    *,
    weights: Sequence[float],
    shared=None,
    prefix: str = "multitask",
    suffix: str = "",
    tol: float = SLOPE_TOLERANCE,
) -> list[DriftCheck]:
    """One step on ``L = Σ α_k L_k`` (shared trunk, task heads), Theorem 3.1.

    Flows: gradient flow of ``L`` (2); ``L + IGR + conflict`` assembled from
    :func:`bea.multitask_terms` (3); ``L + IGR`` without the conflict term (2); and the
    gap between the last two (2). ``grids`` has keys ``"gradient-flow"``,
    ``"modified"`` (for the flows with/without conflict and their gap).
    """
    call = "multitask_checks"
    params = check_params(call, params)
    losses = check_losses(call, losses, minimum=2)
    weights = [float(w) for w in weights]
    step = gd_steps([lambda p: sum(w * loss(p) for w, loss in zip(weights, losses, strict=True))])

    def parts(p: Tree, conflict: bool) -> Tensor:
        # lr = 1: the h-coefficient of the modified loss
        terms = multitask_terms(losses, p, 1.0, weights=weights, shared=shared)
        extra = terms.igr_total + terms.unshared_cross_total
        return extra + terms.conflict_total if conflict else extra

    total = grad(lambda p: sum(w * loss(p) for w, loss in zip(weights, losses, strict=True)))
    with_conflict = grad(lambda p: parts(p, True))
    without_conflict = grad(lambda p: parts(p, False))

    def terms_of(first_order):
        def terms(s: Tree) -> list[Tree]:
            g, r = total(s), first_order(s)
            return [{k: -v for k, v in g.items()}, {k: -v for k, v in r.items()}]

        return terms

    checks = []
    hs = _check_grid(call, grids["gradient-flow"])
    discrete = _step_displacements(step, params, hs)
    _, drift, errors = _measure(_gradient_flow_terms(losses, weights), params, hs, discrete, True)
    floors = [_rounding_floor(params, d) for d in discrete]
    checks.append(
        _record(
            f"{prefix}-gradient-flow{suffix}",
            "gradient flow of L",
            2.0,
            hs,
            drift,
            errors,
            floors,
            tol,
        )
    )
    hs = _check_grid(call, grids["modified"])
    discrete = _step_displacements(step, params, hs)
    floors = [_rounding_floor(params, d) for d in discrete]
    moved_with, drift_with, err_with = _measure(terms_of(with_conflict), params, hs, discrete, True)
    moved_without, drift_without, err_without = _measure(
        terms_of(without_conflict), params, hs, discrete, True
    )
    checks.append(
        _record(
            f"{prefix}-igr-conflict{suffix}",
            "flow of L + IGR + conflict",
            3.0,
            hs,
            drift_with,
            err_with,
            floors,
            tol,
        )
    )
    checks.append(
        _record(
            f"{prefix}-igr-no-conflict{suffix}",
            "flow of L + IGR (conflict term left out)",
            2.0,
            hs,
            drift_without,
            err_without,
            floors,
            tol,
        )
    )
    errors = [max(a, b) for a, b in zip(err_with, err_without, strict=True)]
    checks.append(
        _gap_check(
            f"{prefix}-conflict-gap{suffix}",
            "gap between flows with and without the conflict term",
            hs,
            moved_with,
            moved_without,
            errors,
            params,
            tol,
        )
    )
    return checks


def continual_checks(
    losses: Sequence[Callable],
    params: Mapping[str, Tensor],
    grids: Mapping[str, Sequence[float]],
    *,
    prefix: str = "continual",
    suffix: str = "",
    tol: float = SLOPE_TOLERANCE,
    order2: bool = True,
) -> list[DriftCheck]:
    """``n`` consecutive GD steps on ``L_1 … L_n`` (Theorem 4.2 for ``n = 2``).

    Flows: gradient flow of ``Σ L_k`` (2); order 1 without the bracket term (2); with
    it, :func:`bea.sequential_modified_terms` (3); order 2 of the engine (4, if
    ``order2``); the gap between the flows with and without the bracket (2).
    ``grids`` keys: ``"gradient-flow"``, ``"modified"``, ``"order2"``.
    """
    call = "continual_checks"
    params = check_params(call, params)
    losses = check_losses(call, losses, minimum=2)
    step = gd_steps(losses)
    checks = []

    def run(terms, key):
        hs = _check_grid(call, grids[key])
        discrete = _step_displacements(step, params, hs)
        floors = [_rounding_floor(params, d) for d in discrete]
        moved, drift, errors = _measure(terms, params, hs, discrete, True)
        return hs, floors, moved, drift, errors

    hs, floors, _, drift, errors = run(_gradient_flow_terms(losses), "gradient-flow")
    checks.append(
        _record(
            f"{prefix}-gradient-flow{suffix}",
            "gradient flow of sum L_k",
            2.0,
            hs,
            drift,
            errors,
            floors,
            tol,
        )
    )
    hs, floors, moved_without, drift, err_without = run(_igr_terms(losses), "modified")
    checks.append(
        _record(
            f"{prefix}-no-bracket{suffix}",
            "order-1 flow without the bracket term",
            2.0,
            hs,
            drift,
            err_without,
            floors,
            tol,
        )
    )
    with_bracket = lambda s: sequential_modified_terms(losses, s, 1)  # noqa: E731
    hs, floors, moved_with, drift, err_with = run(with_bracket, "modified")
    checks.append(
        _record(
            f"{prefix}-bracket{suffix}",
            "order-1 flow with the bracket term",
            3.0,
            hs,
            drift,
            err_with,
            floors,
            tol,
        )
    )
    errors = [max(a, b) for a, b in zip(err_with, err_without, strict=True)]
    checks.append(
        _gap_check(
            f"{prefix}-bracket-gap{suffix}",
            "gap between flows with and without the bracket term",
            hs,
            moved_with,
            moved_without,
            errors,
            params,
            tol,
        )
    )
    if order2:
        hs, floors, _, drift, errors = run(_engine_terms(losses, 2), "order2")
        checks.append(
            _record(
                f"{prefix}-order2{suffix}",
                "order-2 field (expansion engine)",
                4.0,
                hs,
                drift,
                errors,
                floors,
                tol,
            )
        )
    return checks


def sequence_check(
    losses: Sequence[Callable],
    params: Mapping[str, Tensor],
    hs: Sequence[float],
    *,
    name: str,
    tol: float = SLOPE_TOLERANCE,
) -> DriftCheck:
    """``n`` consecutive steps against the order-1 field with all brackets (slope 3)."""
    losses = check_losses("sequence_check", losses, minimum=2)
    return check_drift(
        gd_steps(losses),
        params,
        lambda s: sequential_modified_terms(losses, s, 1),
        3.0,
        hs,
        name=name,
        flow_text=f"order-1 flow with brackets, {len(losses)} steps",
        tol=tol,
    )


def order_effect_check(
    loss_a: Callable,
    loss_b: Callable,
    params: Mapping[str, Tensor],
    hs: Sequence[float],
    *,
    name: str = "order-effect",
    tol: float = SLOPE_TOLERANCE,
) -> DriftCheck:
    """``‖(θ_(a→b) − θ_(b→a)) − h² [g_a, g_b]‖ = O(h³)`` (:func:`bea.order_effect`)."""
    params = check_params("order_effect_check", params)
    hs = _check_grid("order_effect_check", hs)
    forward = _step_displacements(gd_steps([loss_a, loss_b]), params, hs)
    backward = _step_displacements(gd_steps([loss_b, loss_a]), params, hs)
    errors, floors, sizes = [], [], []
    for h, a, b in zip(hs, forward, backward, strict=True):
        predicted = order_effect(loss_a, loss_b, params, h)
        swap = {k: a[k] - b[k] for k in params}
        errors.append(_gap(swap, predicted))
        sizes.append(_norm(swap))
        floors.append(_rounding_floor(params, a))
    return _record(
        name,
        "theta_(a->b) - theta_(b->a) against h^2 [g_a, g_b]",
        3.0,
        hs,
        errors,
        [0.0] * len(hs),
        floors,
        tol,
        extra={"order_effect_norm": sizes},
    )


def reshuffling_check(
    losses: Sequence[Callable],
    params: Mapping[str, Tensor],
    hs: Sequence[float],
    *,
    name: str = "reshuffling",
    tol: float = SLOPE_TOLERANCE,
) -> DriftCheck:
    """Mean of the ``n``-step iterate over all ``n!`` orders against the bracket-free
    order-1 flow ``-Σ g_k - (h/2) Σ H_k g_k`` (slope 3: the brackets cancel on average)."""
    params = check_params("reshuffling_check", params)
    losses = check_losses("reshuffling_check", losses, minimum=2)
    hs = _check_grid("reshuffling_check", hs)
    orders = list(itertools.permutations(losses))
    per_order = [_step_displacements(gd_steps(list(order)), params, hs) for order in orders]
    mean = [
        {k: sum(run[i][k] for run in per_order) / len(orders) for k in params}
        for i in range(len(hs))
    ]
    _, drift, errors = _measure(_igr_terms(losses), params, hs, mean, True)
    floors = [_rounding_floor(params, d) for d in mean]
    return _record(
        name,
        f"mean over {len(orders)} orders against the bracket-free order-1 flow",
        3.0,
        hs,
        drift,
        errors,
        floors,
        tol,
    )


# ---------------------------------------------------------------------------------------
# Quadratics: exact flows
# ---------------------------------------------------------------------------------------


def _expm_displacement(matrix: Tensor, offset: Tensor, theta: Tensor, T: float) -> Tensor:
    """Exact ``θ(T) − θ`` for ``θ' = Mθ + c`` by the augmented matrix exponential."""
    n = theta.numel()
    augmented = torch.zeros(n + 1, n + 1, dtype=theta.dtype, device=theta.device)
    augmented[:n, :n] = matrix
    augmented[:n, n] = offset
    start = torch.cat([theta, torch.ones(1, dtype=theta.dtype, device=theta.device)])
    return (torch.linalg.matrix_exp(T * augmented) @ start)[:n] - theta


def quadratic_checks(
    matrices: Sequence[Tensor],
    offsets: Sequence[Tensor],
    theta: Tensor,
    grids: Mapping[str, Sequence[float]],
    *,
    prefix: str = "quadratic",
    tol: float = SLOPE_TOLERANCE,
) -> list[DriftCheck]:
    """Quadratics ``L_i = ½ θᵀA_iθ − b_iᵀθ``: drifts against exact ``expm`` flows.

    Linear fields ``Mθ + c``, flowed exactly:
    one step on ``L_1``: gradient flow (2), IGR ``-(A + (h/2)A²)θ + …`` (3), Hairer's
    order 2 (4); two steps ``L_1, L_2``: without bracket (2), with the closed-form bracket
    ``[g1, g2] = (A2A1 − A1A2)θ − A2b1 + A1b2`` (3), the engine's order-2 field (its
    affine terms read off at ``0`` and the unit vectors) (4). Two identities, judged
    against the rounding level ``100 ε``: the swap of two steps is *exactly*
    ``h² [g1, g2]`` for quadratics, and ``bea.lie_bracket`` equals the closed form.
    ``grids`` keys: ``"order0"``, ``"order1"``, ``"order2"``.
    """
    A1, A2 = (torch.as_tensor(a) for a in matrices[:2])
    b1, b2 = (torch.as_tensor(b) for b in offsets[:2])

    def loss(A, b):
        return lambda p: 0.5 * p["theta"] @ A @ p["theta"] - b @ p["theta"]

    L1, L2 = loss(A1, b1), loss(A2, b2)
    point = {"theta": theta}
    commutator_matrix = A2 @ A1 - A1 @ A2
    commutator_offset = -A2 @ b1 + A1 @ b2

    def engine_linear(losses, order):
        """``(M_k, c_k)`` of each affine term ``f_k(θ) = M_k θ + c_k`` of the engine's field,
        read off at ``0`` and the unit vectors (one batched evaluation)."""
        d = theta.numel()
        corners = torch.cat([torch.zeros(1, d, dtype=theta.dtype), torch.eye(d, dtype=theta.dtype)])
        values = vmap(terms_function(gd_steps(losses), order))({"theta": corners})
        out = []
        for value in values:
            offset = value["theta"][0]
            out.append(((value["theta"][1:] - offset).T, offset))
        return out

    engine_two_steps = engine_linear([L1, L2], 2)

    settings = {
        "gd-gradient-flow": ("order0", 2.0, [L1], lambda h: (-A1, b1)),
        "gd-igr-flow": (
            "order1",
            3.0,
            [L1],
            lambda h: (-A1 - (h / 2) * A1 @ A1, b1 + (h / 2) * A1 @ b1),
        ),
        "gd-order2-hairer": (
            "order2",
            4.0,
            [L1],
            lambda h: (
                -A1 - (h / 2) * A1 @ A1 - (h**2 / 3) * A1 @ A1 @ A1,
                b1 + (h / 2) * A1 @ b1 + (h**2 / 3) * A1 @ A1 @ b1,
            ),
        ),
        "continual-no-bracket": (
            "order1",
            2.0,
            [L1, L2],
            lambda h: (
                -(A1 + A2) - (h / 2) * (A1 @ A1 + A2 @ A2),
                b1 + b2 + (h / 2) * (A1 @ b1 + A2 @ b2),
            ),
        ),
        "continual-bracket": (
            "order1",
            3.0,
            [L1, L2],
            lambda h: (
                -(A1 + A2) - (h / 2) * (A1 @ A1 + A2 @ A2) + (h / 2) * commutator_matrix,
                b1 + b2 + (h / 2) * (A1 @ b1 + A2 @ b2) + (h / 2) * commutator_offset,
            ),
        ),
        "continual-order2": (
            "order2",
            4.0,
            [L1, L2],
            lambda h: (
                sum(h**k * m for k, (m, _) in enumerate(engine_two_steps)),
                sum(h**k * c for k, (_, c) in enumerate(engine_two_steps)),
            ),
        ),
    }
    checks = []
    for key, (grid_key, expected, losses, linear) in settings.items():
        hs = _check_grid("quadratic_checks", grids[grid_key])
        discrete = _step_displacements(gd_steps(losses), point, hs)
        drift, floors = [], []
        for h, step_moved in zip(hs, discrete, strict=True):
            matrix, offset = linear(h)
            exact = _expm_displacement(matrix, offset, theta, h)
            drift.append(float(torch.linalg.norm(exact - step_moved["theta"])))
            floors.append(_rounding_floor(point, step_moved))
        checks.append(
            _record(
                f"{prefix}-{key}",
                "exact (expm) flow of the linear field",
                expected,
                hs,
                drift,
                [0.0] * len(hs),
                floors,
                tol,
                notes=["exact flow: integration error is rounding only"],
            )
        )

    # For quadratics the swap of two steps is exactly h² [g1, g2] (no O(h³) remainder).
    hs = _check_grid("quadratic_checks", grids["order1"])
    closed_bracket = commutator_matrix @ theta + commutator_offset
    forward = _step_displacements(gd_steps([L1, L2]), point, hs)
    backward = _step_displacements(gd_steps([L2, L1]), point, hs)
    eps = torch.finfo(theta.dtype).eps
    bracket_norm = float(torch.linalg.norm(closed_bracket))
    swap_errors, swap_bounds = [], []
    for h, a, b in zip(hs, forward, backward, strict=True):
        gap = float(torch.linalg.norm(a["theta"] - b["theta"] - h**2 * closed_bracket))
        swap_errors.append(gap / (h**2 * bracket_norm))
        # the swap is a difference of two O(|θ|) iterates: rounding eps |θ| over h² |B|
        scale = float(torch.linalg.norm(theta)) + 1.0
        swap_bounds.append(100 * eps * scale / (h**2 * bracket_norm))
    swap_ok = all(e <= b for e, b in zip(swap_errors, swap_bounds, strict=True))
    checks.append(
        DriftCheck(
            name=f"{prefix}-order-effect",
            flow="swap of two steps against h^2 times the closed-form bracket (exact here)",
            expected_slope=None,
            fitted_slope=float("nan"),
            passed=swap_ok,
            h=[float(h) for h in hs],
            drift=[],
            integration_error=[],
            notes=[
                f"relative difference {max(swap_errors):.1e} at most; largest ratio to the "
                f"rounding bound 100 eps |theta| / (h^2 |B|): "
                f"{max(e / b for e, b in zip(swap_errors, swap_bounds, strict=True)):.1e}"
            ],
            local_slopes=[],
            extra={"relative_difference": swap_errors, "rounding_bound": swap_bounds},
        )
    )
    library = lie_bracket(L1, L2, point)["theta"]
    relative = float(torch.linalg.norm(library - closed_bracket) / bracket_norm)
    bound = 100 * eps * (1 + float(torch.linalg.norm(theta)))
    checks.append(
        DriftCheck(
            name=f"{prefix}-bracket-closed-form",
            flow="bea.lie_bracket against (A2A1 - A1A2)theta - A2b1 + A1b2",
            expected_slope=None,
            fitted_slope=float("nan"),
            passed=relative <= bound,
            h=[],
            drift=[],
            integration_error=[],
            notes=[f"relative difference {relative:.2e} (rounding bound {bound:.1e})"],
            local_slopes=[],
            extra={"relative_difference": relative},
        )
    )
    return checks
