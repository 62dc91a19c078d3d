"""Modified losses and modified vector fields of SGD (backward error analysis).

One step ``θ' = θ − h ∇L(θ)`` follows, with error ``O(h³)``, the gradient flow of

    L̃ = L + (h/4) ‖∇L‖²                      (implicit gradient regularization)

For a weighted multitask loss ``L = Σ α_k L_k`` with shared parameters ``θ`` and
task heads ``φ_k`` this splits as

    L̃ = L + Σ_k (h α_k²/4) ‖∇_{ω_k} L_k‖² + (h/2) Σ_{i<j} α_i α_j ⟨∇_θ L_i, ∇_θ L_j⟩
                  (IGR per task)                  (conflict term)

and ``n`` consecutive steps on ``L_1, …, L_n`` follow the flow, run for time ``h``, of

    f0 + h f1,   f0 = −Σ_k g_k,   f1 = −½ Σ_k H_k g_k + ½ Σ_{i<j} [g_i, g_j]

with ``[g_i, g_j] = H_j g_i − H_i g_j`` (see ``bea.lie_bracket``). Higher orders
come from the general expansion engine in :mod:`bea.expansion`.

All functions are differentiable in ``params`` (they compose with ``torch.func``
transforms and with ``autograd`` on parameters that require grad), so one can
train on a modified loss, or on a term with the opposite sign to cancel it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import torch
from torch import Tensor
from torch.func import grad_and_value, vjp

from bea._checks import (
    check_callable,
    check_finite_tree,
    check_finite_value,
    check_losses,
    check_lr,
    check_params,
)
from bea._tree import Tree, tree_dot
from bea.derivatives import (
    _grad_and_value,
    _scalar_loss,
    gram_blocks,
    lie_bracket,
    select_names,
)
from bea.expansion import _check_order, gd_steps, modified_field_terms


def igr(loss: Callable, params: Mapping[str, Tensor], lr: float) -> Tensor:
    """Implicit gradient regularization ``(h/4) ‖∇L(θ)‖²``.

    The term by which one gradient step's modified loss exceeds ``L``
    (Barrett & Dherin 2021). Differentiable in ``params``.

    Example:
        >>> loss = lambda p: (p["w"] ** 2).sum()  # ∇L = 2w
        >>> igr(loss, {"w": torch.tensor([1.0, 1.0])}, lr=0.1)  # 0.1/4 * 8
        tensor(0.2000)

    Raises:
        ValueError: ``lr <= 0``; a non-scalar or non-finite loss or gradient.
    """
    params = check_params("igr", params)
    check_callable("igr", loss, "loss")
    lr = check_lr("igr", lr)
    gradient, _ = _grad_and_value("igr", loss, params)
    return (lr / 4) * tree_dot(gradient, gradient)


def modified_loss(
    loss: Callable, lr: float, strength: float = 1.0
) -> Callable[[Mapping[str, Tensor]], Tensor]:
    """The first-order modified loss ``L̃(θ) = L(θ) + strength · (h/4) ‖∇L(θ)‖²``.

    ``strength=1`` is the loss whose gradient flow one SGD step follows to
    ``O(h³)``; ``strength=-1`` gives a loss whose SGD steps follow plain gradient
    flow of ``L`` to that order (IGR cancelled); ``0`` is ``L`` itself.

    Returns:
        A pure, differentiable callable ``params -> scalar``.

    Example:
        >>> loss = lambda p: (p["w"] ** 2).sum()
        >>> modified_loss(loss, lr=0.1)({"w": torch.tensor([1.0, 1.0])})  # 2 + 0.2
        tensor(2.2000)
    """
    check_callable("modified_loss", loss, "loss")
    lr = check_lr("modified_loss", lr)
    if not isinstance(strength, (int, float)) or isinstance(strength, bool):
        raise TypeError(f"modified_loss: strength must be a number, got {type(strength).__name__}")
    if not math.isfinite(strength):
        raise ValueError(f"modified_loss: strength must be finite, got {strength}")
    scalar = _scalar_loss("modified_loss", loss)

    def modified(params: Mapping[str, Tensor]) -> Tensor:
        params = check_params("modified_loss", params)
        gradient, value = grad_and_value(scalar)(params)
        total = value + strength * (lr / 4) * tree_dot(gradient, gradient)
        check_finite_value("modified_loss", total, "modified loss")
        return total

    return modified


class MultitaskTerms(NamedTuple):
    """The parts of the multitask modified loss at one point (see :func:`multitask_terms`).

    With ``K`` tasks, weights ``α`` and step size ``h``:

    - ``loss`` (K,): ``L_k``; ``weighted_loss``: ``Σ α_k L_k``.
    - ``igr`` (K,): ``(h α_k²/4) ‖∇L_k‖²`` over all parameters (``∇L_k`` vanishes on
      other tasks' heads, so this is the norm on ``ω_k = (φ_k, θ)``); ``igr_total``.
    - ``conflict`` (K, K): ``(h/2) α_i α_j ⟨∇_θ L_i, ∇_θ L_j⟩`` on the shared
      parameters for ``i ≠ j``, zero diagonal; ``conflict_total`` sums ``i < j``.
    - ``cosine`` (K, K): cosine of the shared-parameter gradients (0 where a
      gradient vanishes).
    - ``gram`` (K, K): ``⟨∇_θ L_i, ∇_θ L_j⟩`` on the shared parameters;
      ``grad_norms`` (K,): ``‖∇_θ L_k‖`` on them.
    - ``unshared_cross_total``: ``(h/2) Σ_{i<j} α_i α_j ⟨∇L_i, ∇L_j⟩`` on the
      parameters *not* selected as shared; exactly 0 when the heads are disjoint.
    - ``modified_loss``: ``weighted_loss + igr_total + conflict_total +
      unshared_cross_total``, which equals ``L + (h/4)‖∇L‖²`` to rounding.
    - ``shared_names``: the parameters treated as shared.
    """

    loss: Tensor
    weighted_loss: Tensor
    igr: Tensor
    igr_total: Tensor
    conflict: Tensor
    conflict_total: Tensor
    cosine: Tensor
    gram: Tensor
    grad_norms: Tensor
    unshared_cross_total: Tensor
    modified_loss: Tensor
    shared_names: tuple[str, ...]


def _check_weights(call: str, weights, count: int, like: Tensor) -> Tensor:
    if weights is None:
        return torch.ones(count, dtype=like.dtype, device=like.device)
    try:
        weights = torch.as_tensor(weights, dtype=like.dtype, device=like.device)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{call}: weights must be a sequence of numbers, got {weights!r}") from None
    if weights.shape != (count,):
        raise ValueError(
            f"{call}: weights must have one entry per loss ({count}), got shape {tuple(weights.shape)}"
        )
    if not bool(torch.isfinite(weights).all()):
        raise ValueError(f"{call}: weights must be finite, got {weights.tolist()}")
    return weights


def _upper_sum(matrix: Tensor) -> Tensor:
    return torch.triu(matrix, diagonal=1).sum()


def multitask_terms(
    losses: Sequence[Callable],
    params: Mapping[str, Tensor],
    lr: float,
    weights=None,
    shared=None,
) -> MultitaskTerms:
    """IGR per task, the pairwise conflict term and cosines of a multitask step.

    One SGD step of size ``h`` on ``L = Σ α_k L_k`` follows the gradient flow of

        L̃ = L + Σ_k (h α_k²/4) ‖∇_{ω_k} L_k‖² + (h/2) Σ_{i<j} α_i α_j ⟨∇_θ L_i, ∇_θ L_j⟩

    (Theorem 3.1 generalized to K tasks). The conflict term is minimized by the
    implicit dynamics: SGD is pushed towards task gradients that disagree on θ.

    Args:
        losses: the K task losses ``L_k`` (pure callables on the full params).
        params: all parameters (trunk and heads).
        lr: the step size ``h``; with a mean reduction over tasks pass the weights
            ``1/K`` explicitly, since they change the effective step.
        weights: ``α`` (K,), default all ones.
        shared: which parameters are the shared ``θ`` (names, module prefixes or
            a predicate; see :func:`bea.select_names`); default all parameters.

    Cost: K gradients (one forward and backward each); everything else is inner
    products of them.

    Raises:
        ValueError: fewer than two losses, ``lr <= 0``, weights of the wrong length,
            a shared selection that matches nothing, non-finite losses or gradients.
    """
    call = "multitask_terms"
    params = check_params(call, params)
    losses = check_losses(call, losses, minimum=2)
    lr = check_lr(call, lr)
    shared_names = select_names(call, params, shared, "shared")

    grads, values = [], []
    for index, loss in enumerate(losses):
        gradient, value = _grad_and_value(call, loss, params, f"losses[{index}]")
        grads.append(gradient)
        values.append(value)
    loss_values = torch.stack(values)
    alpha = _check_weights(call, weights, len(losses), loss_values)

    return multitask_terms_from_blocks(
        loss_values, gram_blocks(grads), lr, alpha, tuple(shared_names)
    )


def multitask_terms_from_blocks(
    loss_values: Tensor,
    blocks: Mapping[str, Tensor],
    lr: float,
    alpha: Tensor,
    shared_names: Sequence[str],
) -> MultitaskTerms:
    """:class:`MultitaskTerms` from the task losses and per-parameter Gram blocks.

    ``blocks[n]`` is the K×K matrix ``⟨∇L_i[n], ∇L_j[n]⟩`` of parameter ``n`` (see
    :func:`bea.derivatives.gram_blocks`); the shared Gram matrix is the sum over
    ``shared_names`` and the rest over the other parameters. For monitors that
    already hold the blocks (see :func:`multitask_terms` for the formulas).
    """
    shared = set(shared_names)
    shared_gram = sum(blocks[n] for n in shared_names)
    others = [block for n, block in blocks.items() if n not in shared]
    unshared_gram = sum(others) if others else torch.zeros_like(shared_gram)
    return multitask_terms_from_grams(
        loss_values, shared_gram, unshared_gram, lr, alpha, tuple(shared_names)
    )


def multitask_terms_from_grams(
    loss_values: Tensor,
    shared_gram: Tensor,
    unshared_gram: Tensor,
    lr: float,
    alpha: Tensor,
    shared_names: tuple[str, ...],
) -> MultitaskTerms:
    """:class:`MultitaskTerms` from the task losses and the two Gram matrices of their gradients.

    ``shared_gram`` is ``⟨∇_θ L_i, ∇_θ L_j⟩`` on the shared parameters and
    ``unshared_gram`` the same on all the others, so that their sum is the Gram
    matrix over all parameters. For monitors that already hold gradients (see
    :func:`multitask_terms` for the formulas).
    """
    full_diagonal = torch.diagonal(shared_gram) + torch.diagonal(unshared_gram)
    outer = torch.outer(alpha, alpha)
    igr_terms = (lr / 4) * alpha**2 * full_diagonal
    count = loss_values.shape[0]
    off_diagonal = 1 - torch.eye(count, dtype=shared_gram.dtype, device=shared_gram.device)
    conflict = (lr / 2) * outer * shared_gram * off_diagonal
    conflict_total = _upper_sum(conflict)
    unshared_cross_total = _upper_sum((lr / 2) * outer * unshared_gram)

    norms = torch.sqrt(torch.clamp(torch.diagonal(shared_gram), min=0))
    denominator = torch.outer(norms, norms)
    safe = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    cosine = torch.where(denominator > 0, shared_gram / safe, torch.zeros_like(shared_gram))

    weighted_loss = (alpha * loss_values).sum()
    igr_total = igr_terms.sum()
    total = weighted_loss + igr_total + conflict_total + unshared_cross_total
    return MultitaskTerms(
        loss=loss_values,
        weighted_loss=weighted_loss,
        igr=igr_terms,
        igr_total=igr_total,
        conflict=conflict,
        conflict_total=conflict_total,
        cosine=cosine,
        gram=shared_gram,
        grad_norms=norms,
        unshared_cross_total=unshared_cross_total,
        modified_loss=total,
        shared_names=shared_names,
    )


def _first_order_term(call: str, losses: Sequence[Callable], params: Tree) -> tuple[Tree, Tree]:
    """``(f0, f1)`` of n consecutive GD steps, with ``f1`` from one fused reverse pass.

    Collecting the coefficient of each ``H_k`` in ``f1`` gives
    ``f1 = ½ Σ_k H_k v_k`` with ``v_k = −g_k + Σ_{i<k} g_i − Σ_{j>k} g_j``; the sum
    ``Σ_k H_k v_k`` is one pullback through all n gradient graphs with cotangents
    ``v_k``, so the cost is n gradients plus one backward pass.
    """
    scalars = [_scalar_loss(call, loss, f"losses[{i}]") for i, loss in enumerate(losses)]

    def all_gradients(p):
        return tuple(torch.func.grad(loss)(p) for loss in scalars)

    grads, pullback = vjp(all_gradients, params)
    total = {k: sum(g[k] for g in grads) for k in params}
    directions, before = [], {k: torch.zeros_like(v) for k, v in params.items()}
    for g in grads:
        # −g_k + (sum before k) − (sum after k), with sum after = total − before − g_k.
        directions.append({k: before[k] - (total[k] - before[k] - g[k]) - g[k] for k in params})
        before = {k: before[k] + g[k] for k in params}
    (second,) = pullback(tuple(directions))
    f0 = {k: -v for k, v in total.items()}
    f1 = {k: 0.5 * v for k, v in second.items()}
    return f0, f1


def sequential_modified_terms(
    losses: Sequence[Callable], params: Mapping[str, Tensor], order: int = 1
) -> list[Tree]:
    """The terms ``[f0, f1, …, f_order]`` of the modified field of n consecutive GD steps.

    The flow of ``f0 + h f1 + … + h^order f_order`` run for time ``h`` lands on the
    iterate after the ``n`` steps with error ``O(h^(order+2))``. Orders 0 and 1
    use the closed forms (module docstring); higher orders use the expansion
    engine (:func:`bea.expansion.modified_field_terms`).

    Raises:
        ValueError: no losses, a negative or non-integer order, non-finite values.
    """
    call = "sequential_modified_terms"
    params = check_params(call, params)
    losses = check_losses(call, losses)
    order = _check_order(call, order)
    if order == 0:
        grads = [
            _grad_and_value(call, loss, params, f"losses[{i}]")[0] for i, loss in enumerate(losses)
        ]
        terms = [{k: -sum(g[k] for g in grads) for k in params}]
    elif order == 1:
        terms = list(_first_order_term(call, losses, params))
    else:
        terms = modified_field_terms(gd_steps(losses), params, order)
    for index, term in enumerate(terms):
        check_finite_tree(call, term, f"f{index}")
    return terms


def sequential_modified_field(
    losses: Sequence[Callable], params: Mapping[str, Tensor], lr: float, order: int = 1
) -> Tree:
    """The modified vector field of n consecutive GD steps, truncated at ``order``.

    ``f̃ = f0 + h f1 + … + h^order f_order`` at ``params``, where (order 1)

        f0 = −Σ_k g_k,   f1 = −½ Σ_k H_k g_k + ½ Σ_{i<j} [g_i, g_j].

    Its flow run for time ``h`` matches ``θ_n`` (the n steps ``θ_k = θ_{k−1} −
    h ∇L_k(θ_{k−1})``) with drift ``O(h^(order+2))``; ``n = 2`` at order 1 is
    Theorem 4.2, ``n = 1`` at order 1 is the IGR flow ``−g − (h/2) H g``.

    Example:
        >>> loss = lambda p: 0.5 * 3.0 * (p["x"] ** 2).sum()  # g = 3x, H = 3
        >>> sequential_modified_field([loss], {"x": torch.tensor([1.0])}, lr=0.1)["x"]
        tensor([-3.4500])

    Raises:
        ValueError: ``lr <= 0``, an invalid order, non-finite values.
    """
    lr = check_lr("sequential_modified_field", lr)
    terms = sequential_modified_terms(losses, params, order)
    return {k: sum(lr**j * term[k] for j, term in enumerate(terms)) for k in terms[0]}


def order_effect(
    loss_a: Callable, loss_b: Callable, params: Mapping[str, Tensor], lr: float
) -> Tree:
    """Predicted difference of the two orders of two steps, ``θ_(a→b) − θ_(b→a) ≈ h² [g_a, g_b]``.

    ``θ_(a→b)`` is one step on ``L_a`` then one on ``L_b``; the error of the
    prediction is ``O(h³)``.

    Raises:
        ValueError: ``lr <= 0``, non-scalar or non-finite losses.
    """
    lr = check_lr("order_effect", lr)
    bracket = lie_bracket(loss_a, loss_b, params)
    return {k: lr**2 * v for k, v in bracket.items()}


__all__ = [
    "MultitaskTerms",
    "gd_steps",
    "igr",
    "modified_loss",
    "multitask_terms",
    "multitask_terms_from_blocks",
    "multitask_terms_from_grams",
    "order_effect",
    "sequential_modified_field",
    "sequential_modified_terms",
]
