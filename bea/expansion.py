"""Modified equations of any discrete step map, to any order, by Taylor mode in ``h``.

A one-step method ``state' = step(state, h)`` that is the identity at ``h = 0`` is
expanded in the step size,

    step(θ, h) = θ + h d_1(θ) + h² d_2(θ) + h³ d_3(θ) + …,    d_j = (1/j!) ∂_h^j step(θ, 0),

by nested forward-mode derivatives in the scalar ``h`` (``torch.func.jvp``) through the
step. The flow of the modified field ``F_h = f_0 + h f_1 + h² f_2 + …`` run for time ``h``
is ``exp(h L_F) id``, where ``L_F u = u' F`` is the Lie derivative along ``F``;
expanding it and matching powers of ``h`` gives (Hairer, Lubich & Wanner, *Geometric
Numerical Integration*, ch. IX)

    d_j = Σ_{m=1..j} (1/m!) Σ_{k_1+…+k_m = j-m} L_{f_{k_1}} ⋯ L_{f_{k_{m-1}}} f_{k_m},

so that ``f_{j-1} = d_j - Σ_{m≥2} (…)`` involves only ``f_0 … f_{j-2}``. The fields are
built recursively as functions of the state (closures over ``torch.func.jvp``), so each
one can be differentiated again by the next order. Nothing is hand-coded per method:
for one gradient step on ``L`` (``f = -∇L``) the engine reproduces

    f̃ = f - (h/2) f'f + h² ((1/12) f''(f, f) + (1/3) f'f'f) + O(h³),

and for ``n`` consecutive gradient steps the order-1 field of design.md §1.3.

The state is a ``dict[str, Tensor]``; ``h`` is passed to ``step`` as a 0-dim tensor of
the state's dtype, and the step must be written with ``torch`` operations (it is
differentiated with ``torch.func``). The cost of order ``N`` grows quickly with ``N``
(derivatives of order ``N + 1`` of the step); orders up to 3 are practical on small
models.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from functools import cache

import torch
from torch import Tensor
from torch.func import grad, jvp

from bea._checks import _is_traced, check_callable, check_losses, check_lr, check_params

Tree = dict[str, Tensor]
StepMap = Callable[[Tree, Tensor], Tree]
Field = Callable[[Tree], Tree]

#: Key prefixes of the heavy-ball state ``(θ, v)`` used by :func:`heavy_ball_step`.
THETA_PREFIX = "theta/"
VELOCITY_PREFIX = "velocity/"


# ---------------------------------------------------------------------------------------
# Step maps
# ---------------------------------------------------------------------------------------


def gd_steps(losses: Sequence[Callable[[Tree], Tensor]]) -> StepMap:
    """The map of ``n`` consecutive gradient steps, one on each loss in order.

        θ_k = θ_{k-1} - h ∇L_k(θ_{k-1}),   k = 1..n;   step(θ_0, h) = θ_n.

    Args:
        losses: callables ``params -> scalar Tensor`` (``L_1`` first).

    Returns:
        ``step(params, h) -> params``, the identity at ``h = 0``.

    Example:
        >>> step = gd_steps([lambda p: (p["x"] ** 2).sum()])
        >>> step({"x": torch.tensor([1.0])}, torch.tensor(0.25))["x"]
        tensor([0.5000])
    """
    losses = check_losses("gd_steps", losses)
    gradients = [grad(loss) for loss in losses]

    def step(params: Tree, h: Tensor) -> Tree:
        for gradient in gradients:
            g = gradient(params)
            params = {k: params[k] - h * g[k] for k in params}
        return params

    return step


def preconditioned_step(
    loss: Callable[[Tree], Tensor],
    preconditioner: Mapping[str, Tensor] | Callable[[Tree, Tree], Tree],
) -> StepMap:
    """One preconditioned gradient step ``θ' = θ - h P(θ) ∇L(θ)``.

    Args:
        loss: callable ``params -> scalar Tensor``.
        preconditioner: either a dict of tensors shaped like the parameters (a diagonal
            ``P``, applied elementwise), or a callable ``(params, gradient) -> direction``
            returning ``P(θ) ∇L(θ)`` (it may depend on ``θ``; write it with torch ops).

    Returns:
        ``step(params, h) -> params``.
    """
    check_callable("preconditioned_step", loss, "loss")
    gradient = grad(loss)
    if isinstance(preconditioner, Mapping):
        diagonal = check_params("preconditioned_step", preconditioner, "preconditioner")

        def apply(params: Tree, g: Tree) -> Tree:
            if diagonal.keys() != g.keys():
                raise ValueError(
                    "preconditioned_step: preconditioner keys "
                    f"{sorted(diagonal)} differ from the parameter keys {sorted(g)}"
                )
            return {k: diagonal[k] * g[k] for k in g}

    elif callable(preconditioner):
        apply = preconditioner
    else:
        raise TypeError(
            "preconditioned_step: preconditioner must be a dict of tensors or a callable "
            f"(params, gradient) -> direction, got {type(preconditioner).__name__}"
        )

    def step(params: Tree, h: Tensor) -> Tree:
        direction = apply(params, gradient(params))
        return {k: params[k] - h * direction[k] for k in params}

    return step


def heavy_ball_state(params: Mapping[str, Tensor], velocity: Mapping[str, Tensor] | None = None):
    """The state ``(θ, v)`` of :func:`heavy_ball_step` as one flat dict.

    Keys are ``"theta/<name>"`` and ``"velocity/<name>"``; ``velocity`` defaults to zeros.
    """
    params = check_params("heavy_ball_state", params)
    if velocity is None:
        velocity = {k: torch.zeros_like(v) for k, v in params.items()}
    velocity = check_params("heavy_ball_state", velocity, "velocity")
    if velocity.keys() != params.keys():
        raise ValueError(
            f"heavy_ball_state: velocity keys {sorted(velocity)} differ from params keys "
            f"{sorted(params)}"
        )
    state = {THETA_PREFIX + k: v for k, v in params.items()}
    state.update({VELOCITY_PREFIX + k: v for k, v in velocity.items()})
    return state


def split_heavy_ball_state(state: Mapping[str, Tensor]) -> tuple[Tree, Tree]:
    """Inverse of :func:`heavy_ball_state`: ``(params, velocity)``."""
    params = {k[len(THETA_PREFIX) :]: v for k, v in state.items() if k.startswith(THETA_PREFIX)}
    velocity = {
        k[len(VELOCITY_PREFIX) :]: v for k, v in state.items() if k.startswith(VELOCITY_PREFIX)
    }
    if not params or params.keys() != velocity.keys() or len(state) != 2 * len(params):
        raise ValueError(
            "split_heavy_ball_state: state must hold 'theta/<name>' and 'velocity/<name>' keys "
            f"for the same names, got {sorted(state)}"
        )
    return params, velocity


def heavy_ball_step(loss: Callable[[Tree], Tensor], gamma: float) -> StepMap:
    """Heavy-ball momentum in near-identity form on the pair ``(θ, v)``:

        v' = v - h (γ v + ∇L(θ)),    θ' = θ + h v'.

    (With ``v = -u / h`` this is SGD with momentum ``β = 1 - γh`` and learning rate
    ``h²``; the form is chosen so that the map is the identity at ``h = 0``.)

    The state is built by :func:`heavy_ball_state`.
    """
    check_callable("heavy_ball_step", loss, "loss")
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not math.isfinite(gamma):
        raise ValueError(f"heavy_ball_step: gamma must be a finite number, got {gamma!r}")
    gradient = grad(loss)

    def step(state: Tree, h: Tensor) -> Tree:
        params, velocity = split_heavy_ball_state(state)
        g = gradient(params)
        new_velocity = {k: velocity[k] - h * (gamma * velocity[k] + g[k]) for k in velocity}
        new_params = {k: params[k] + h * new_velocity[k] for k in params}
        return heavy_ball_state(new_params, new_velocity)

    return step


# ---------------------------------------------------------------------------------------
# The engine
# ---------------------------------------------------------------------------------------


def _h_coefficients(step: StepMap, state: Tree, j: int) -> list[Tree]:
    """``[d_1(θ), …, d_j(θ)]``, ``d_i = (1/i!) ∂_h^i step(θ, h)`` at ``h = 0``.

    One nest of ``j`` jvps in ``h``: each level returns all the derivatives below it, so
    the lower coefficients come at no extra cost.
    """
    reference = next(iter(state.values()))
    zero = torch.zeros((), dtype=reference.dtype, device=reference.device)
    one = torch.ones((), dtype=reference.dtype, device=reference.device)

    def derivatives(order: int) -> Callable[[Tensor], tuple[Tree, ...]]:
        """``h -> (φ(h), φ'(h), …, φ^(order)(h))`` with ``φ = step(state, ·)``."""
        if order == 0:
            return lambda h: (step(state, h),)
        inner = derivatives(order - 1)

        def outer(h: Tensor) -> tuple[Tree, ...]:
            values, tangents = jvp(inner, (h,), (one,))
            return values + (tangents[-1],)

        return outer

    values = derivatives(j)(zero)
    return [{k: v / math.factorial(i) for k, v in values[i].items()} for i in range(1, j + 1)]


@cache
def _compositions(total: int, parts: int) -> tuple[tuple[int, ...], ...]:
    """All tuples of ``parts`` non-negative integers summing to ``total``."""
    if parts == 1:
        return ((total,),)
    return tuple(
        (first,) + rest
        for first in range(total + 1)
        for rest in _compositions(total - first, parts - 1)
    )


def _lie_chain(fields: Sequence[Field], indices: tuple[int, ...]) -> Field:
    """``L_{f_{i_1}} ⋯ L_{f_{i_{m-1}}} f_{i_m}`` as a function of the state.

    ``L_a u (θ) = u'(θ) a(θ)``, one ``jvp`` per Lie derivative; the outermost is ``i_1``.
    """
    if len(indices) == 1:
        return fields[indices[0]]
    inner = _lie_chain(fields, indices[1:])
    direction = fields[indices[0]]

    def chained(state: Tree) -> Tree:
        return jvp(inner, (state,), (direction(state),))[1]

    return chained


def _build_fields(step: StepMap, order: int) -> list[Field]:
    """The modified fields ``[f_0, …, f_order]`` of ``step`` as functions of the state."""
    fields: list[Field] = []
    for k in range(order + 1):
        j = k + 1  # f_k is read off the coefficient of h^(k+1)
        corrections = [
            (1.0 / math.factorial(m), _lie_chain(fields, indices))
            for m in range(2, j + 1)
            for indices in _compositions(j - m, m)
        ]

        def field(state: Tree, j=j, corrections=corrections) -> Tree:
            out = _h_coefficients(step, state, j)[-1]
            for weight, chain in corrections:
                term = chain(state)
                out = {key: out[key] - weight * term[key] for key in out}
            return out

        fields.append(field)
    return fields


def _evaluate_terms(step: StepMap, fields: Sequence[Field], state: Tree) -> list[Tree]:
    """``[f_0(θ), …, f_N(θ)]`` at one state, sharing work between the terms.

    All ``d_j`` come from one nest of jvps, and each Lie chain is computed once: the
    jvp that gives ``L_a u`` also returns ``u(θ)`` (its primal), which is kept.
    """
    order = len(fields) - 1
    coefficients = _h_coefficients(step, state, order + 1)
    memo: dict[tuple[int, ...], Tree] = {}

    def chain_value(indices: tuple[int, ...]) -> Tree:
        if indices not in memo:
            inner = _lie_chain(fields, indices[1:])
            primal, tangent = jvp(inner, (state,), (memo[(indices[0],)],))
            memo.setdefault(indices[1:], primal)
            memo[indices] = tangent
        return memo[indices]

    for k in range(order + 1):
        j = k + 1
        out = coefficients[k]
        for m in range(j, 1, -1):  # longest chains first: their primals fill the memo
            weight = 1.0 / math.factorial(m)
            for indices in _compositions(j - m, m):
                term = chain_value(indices)
                out = {key: out[key] - weight * term[key] for key in out}
        memo[(k,)] = out
    return [memo[(k,)] for k in range(order + 1)]


def _check_order(call: str, order) -> int:
    if isinstance(order, bool) or not isinstance(order, int):
        raise TypeError(f"{call}: order must be an int, got {type(order).__name__}")
    if order < 0:
        raise ValueError(f"{call}: order must be >= 0, got {order}")
    return order


def check_identity_at_zero(call: str, step: StepMap, state: Tree, rtol: float = 1e-12) -> None:
    """Raise ``ValueError`` unless ``step(state, 0) == state`` (keys, shapes and values).

    A modified equation exists only for maps that are the identity at ``h = 0``
    (near-identity maps); momentum must be written on ``(θ, v)`` in that form.
    """
    reference = next(iter(state.values()))
    zero = torch.zeros((), dtype=reference.dtype, device=reference.device)
    with torch.no_grad():
        image = step(state, zero)
    if not isinstance(image, Mapping) or image.keys() != state.keys():
        got = sorted(image) if isinstance(image, Mapping) else type(image).__name__
        raise ValueError(
            f"{call}: step(state, h) must return a dict with the keys of state "
            f"{sorted(state)}, got {got}"
        )
    for key, value in state.items():
        moved = image[key]
        if not isinstance(moved, Tensor) or moved.shape != value.shape:
            raise ValueError(
                f"{call}: step(state, h)[{key!r}] must be a tensor of shape {tuple(value.shape)}"
            )
        if not bool(torch.isfinite(moved).all()):
            raise ValueError(
                f"{call}: step(state, 0)[{key!r}] is not finite: the step map (or a loss "
                "inside it) gives NaN or inf at this state"
            )
        gap = (moved - value).abs().max().item() if value.numel() else 0.0
        scale = max(value.abs().max().item() if value.numel() else 0.0, 1.0)
        if not gap <= rtol * scale:
            raise ValueError(
                f"{call}: step is not the identity at h = 0: step(state, 0)[{key!r}] differs "
                f"from state[{key!r}] by {gap:.3e}; write the map in near-identity form "
                "(e.g. momentum on (theta, v) with v' = v - h(gamma v + grad L))"
            )


def modified_field_functions(step: StepMap, order: int) -> list[Field]:
    """The terms ``[f_0, …, f_order]`` of the modified field of ``step`` as functions.

    Each ``f_k(state) -> tree`` is a pure function built from ``step`` with
    ``torch.func.jvp``; it can be differentiated again or vectorized with
    ``torch.func.vmap`` (to evaluate a batch of states at once). No identity check is
    made here (see :func:`check_identity_at_zero`).
    """
    check_callable("modified_field_functions", step, "step")
    order = _check_order("modified_field_functions", order)
    return _build_fields(step, order)


def terms_function(step: StepMap, order: int) -> Callable[[Tree], list[Tree]]:
    """``state -> [f_0(state), …, f_order(state)]``, all terms in one evaluation.

    Cheaper than calling each of :func:`modified_field_functions` (shared derivatives);
    a pure function of the state that ``torch.func.vmap`` can batch. No identity check
    is made here.
    """
    check_callable("terms_function", step, "step")
    order = _check_order("terms_function", order)
    fields = _build_fields(step, order)
    return lambda state: _evaluate_terms(step, fields, state)


def modified_field_terms(step: StepMap, state: Mapping[str, Tensor], order: int) -> list[Tree]:
    """The terms ``[f_0(θ), f_1(θ), …, f_order(θ)]`` of the modified field of ``step``.

    The flow of ``θ̇ = f_0 + h f_1 + … + h^N f_N`` run for time ``h`` matches
    ``step(θ, h)`` up to ``O(h^(N+2))`` (module docstring for the recursion).

    Args:
        step: ``step(state, h) -> state`` written with torch ops, identity at ``h = 0``.
        state: the point, a ``dict[str, Tensor]`` (float64 recommended).
        order: the highest term ``N >= 0``.

    Returns:
        A list of ``N + 1`` dicts shaped like ``state``.

    Raises:
        ValueError: if ``step`` is not the identity at ``h = 0``, or ``order < 0``.

    Example:
        >>> loss = lambda p: 0.5 * (p["x"] ** 2).sum()           # g = x, H = 1
        >>> terms = modified_field_terms(gd_steps([loss]), {"x": torch.tensor([2.0])}, 2)
        >>> [round(t["x"].item(), 4) for t in terms]              # -x, -x/2, -x/3
        [-2.0, -1.0, -0.6667]
    """
    check_callable("modified_field_terms", step, "step")
    state = check_params("modified_field_terms", state, "state")
    order = _check_order("modified_field_terms", order)
    check_identity_at_zero("modified_field_terms", step, state)
    return _evaluate_terms(step, _build_fields(step, order), state)


def modified_field(step: StepMap, order: int, lr: float) -> Field:
    """The truncated modified field ``F(θ) = f_0(θ) + h f_1(θ) + … + h^N f_N(θ)``, ``h = lr``.

    Usable by :func:`bea.ode.integrate`; its flow for time ``lr`` matches
    ``step(θ, lr)`` with drift ``O(lr^(N+2))``. The map is checked to be the identity at
    ``h = 0`` at each (untraced) state the field is evaluated at.

    Example:
        >>> loss = lambda p: 0.5 * (p["x"] ** 2).sum()
        >>> field = modified_field(gd_steps([loss]), 1, lr=0.1)
        >>> field({"x": torch.tensor([1.0])})["x"]                # -x - (h/2) x
        tensor([-1.0500])
    """
    check_callable("modified_field", step, "step")
    order = _check_order("modified_field", order)
    lr = check_lr("modified_field", lr)
    fields = _build_fields(step, order)

    def field(state: Tree) -> Tree:
        if not any(_is_traced(v) for v in state.values()):
            check_identity_at_zero("modified_field", step, state)
        terms = _evaluate_terms(step, fields, state)
        return {key: sum(lr**k * term[key] for k, term in enumerate(terms)) for key in state}

    return field
