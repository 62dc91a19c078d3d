"""Alternative implementations of core functions, to measure proposed changes.

These are not part of bea's API: they exist so that a change to
``bea/derivatives.py`` can be timed against the current core in the same run
(``python benchmarks/run.py --only bracket``, contender ``proposed_autograd``;
``--only gram``, contender ``proposed_gram``). The bracket functions compute
``[g_a, g_b] = H_b g_a − H_a g_b`` for pure losses ``params -> scalar``.
``bracket_vjp`` is the form the core's fused mode has adopted.
"""

from __future__ import annotations

import torch
from torch.func import grad_and_value, vjp


def _finite_or_raise(call: str, tree: dict, what: str) -> None:
    """One reduction per tree: a sum is finite iff every entry is (up to overflow).

    A non-finite entry (NaN/inf) makes the sum non-finite; a finite tree whose
    sum overflows is re-checked entry by entry before raising.
    """
    total = sum(v.sum(dtype=torch.float64) for v in tree.values())
    if not torch.isfinite(total):
        bad = [k for k, v in tree.items() if not torch.isfinite(v).all()]
        if bad:
            raise ValueError(f"{call}: {what} is not finite in {bad}")


def bracket_vjp(loss_a, loss_b, params):
    """The fused reverse pass as one ``vjp`` with cotangents ``(−g_b, g_a)``.

    ``[g_a, g_b] = J_{(g_a, g_b)}(θ)ᵀ (−g_b, g_a)``: the primal outputs of the vjp
    are the two gradients, and the pullback with those cotangents is the bracket.
    No inner products are formed (the core's first version differentiated
    ``⟨g_b, sg(g_a)⟩ − ⟨g_a, sg(g_b)⟩``, which adds two products and their
    backward), and only the bracket is checked for finiteness (a NaN in a
    gradient reaches it through the products).
    """

    def both(p):
        grad_a, value_a = grad_and_value(loss_a)(p)
        grad_b, value_b = grad_and_value(loss_b)(p)
        return (grad_a, grad_b), (value_a, value_b)

    (grad_a, grad_b), pullback, _ = vjp(both, params, has_aux=True)
    minus_b = {k: -v for k, v in grad_b.items()}
    bracket = pullback((minus_b, grad_a))[0]
    _finite_or_raise("bracket_vjp", bracket, "bracket")
    return bracket


def bracket_autograd(loss_a, loss_b, params):
    """The fused reverse pass with plain ``torch.autograd`` (no functorch levels).

    Both gradients are taken with ``create_graph=True`` on leaf copies of
    ``params``; one ``torch.autograd.grad`` over the outputs ``(g_a, g_b)`` with
    ``grad_outputs = (−g_b, g_a)`` walks both graphs once and returns the bracket.
    """
    leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    inputs = list(leaves.values())
    with torch.enable_grad():
        grads_a = torch.autograd.grad(
            loss_a(leaves), inputs, create_graph=True, materialize_grads=True
        )
        grads_b = torch.autograd.grad(
            loss_b(leaves), inputs, create_graph=True, materialize_grads=True
        )
        cotangents = [-g.detach() for g in grads_b] + [g.detach() for g in grads_a]
        # A gradient that does not depend on θ (e.g. a bias under a linear loss) drops out.
        pairs = [
            (g, c)
            for g, c in zip(list(grads_a) + list(grads_b), cotangents, strict=True)
            if g.requires_grad
        ]
        bracket = torch.autograd.grad(
            [g for g, _ in pairs], inputs, [c for _, c in pairs], materialize_grads=True
        )
    bracket = dict(zip(leaves, bracket, strict=True))
    _finite_or_raise("bracket_autograd", bracket, "bracket")
    return bracket


def gram_autograd(losses, params):
    """``G_ij = ⟨∇L_i, ∇L_j⟩`` from K plain-autograd gradients and one K×P by P×K product.

    Differs from the current core in two places only: gradients come from
    ``torch.autograd.grad`` on leaf copies (no functorch levels), and each
    gradient's finiteness is checked with one reduction instead of an
    element-wise ``isfinite`` pass.
    """
    leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    inputs = list(leaves.values())
    rows = []
    with torch.enable_grad():
        for loss in losses:
            grads = torch.autograd.grad(loss(leaves), inputs, materialize_grads=True)
            _finite_or_raise("gram_autograd", dict(zip(leaves, grads, strict=True)), "gradient")
            rows.append(torch.cat([g.reshape(-1) for g in grads]))
    matrix = torch.stack(rows)
    return matrix @ matrix.T
