"""Gradients, Hessian-vector products, Gram matrices and Lie brackets.

Everything here works on a pure loss ``params -> scalar`` (see :func:`bea.bind`)
and a parameter dict ``params: dict[str, Tensor]``, is built on ``torch.func``,
keeps the dtype and device of ``params``, and costs a small constant number of
gradient evaluations: nothing forms a Hessian, so memory is linear in the number
of parameters.

Notation: ``g = ∇L``, ``H = ∇²L``, and for vector fields ``F, G``
(``params -> params``) the Lie bracket ``[F, G] = ∇G·F − ∇F·G``. For gradient
fields this is ``[g_a, g_b] = H_b g_a − H_a g_b``.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import NamedTuple

import torch
from torch import Tensor
from torch.func import grad_and_value, jvp, vjp

from bea._checks import (
    _is_traced,
    check_callable,
    check_finite_tree,
    check_finite_value,
    check_like,
    check_losses,
    check_params,
    check_scalar_output,
)
from bea._tree import Tree, tree_ravel, tree_unravel

HVP_MODES = ("auto", "forward", "reverse")
BRACKET_MODES = ("fused", "forward", "reverse")

# Losses (or fields) whose forward-mode derivative failed once: `auto` goes
# straight to reverse mode for them afterwards.
_NO_FORWARD_AD: weakref.WeakSet = weakref.WeakSet()


def select_names(
    call: str, params: Mapping[str, Tensor], selection, what: str = "names"
) -> list[str]:
    """The parameter names chosen by ``selection``, in params order.

    ``None`` selects every parameter; a string or an iterable of strings selects
    the names equal to an entry or starting with ``entry + "."`` (a module
    prefix such as ``"trunk"``); a callable ``name -> bool`` selects where it
    returns true.

    Raises:
        ValueError: the selection matches no parameter.
        TypeError: the selection is of an unsupported type.
    """
    if selection is None:
        return list(params)
    if callable(selection):
        chosen = [name for name in params if selection(name)]
    else:
        try:
            entries = [selection] if isinstance(selection, str) else list(selection)
        except TypeError:
            raise TypeError(
                f"{call}: {what} must be None, a name, a list of names or prefixes, or a predicate; "
                f"got {type(selection).__name__}"
            ) from None
        for entry in entries:
            if not isinstance(entry, str):
                raise TypeError(f"{call}: {what} entries must be str, got {entry!r}")
        chosen = [
            name
            for name in params
            if any(name == entry or name.startswith(entry + ".") for entry in entries)
        ]
    if not chosen:
        shown = list(params)[:8]
        raise ValueError(
            f"{call}: {what}={selection!r} selects no parameter "
            f"(parameters are {shown}{' ...' if len(params) > 8 else ''})"
        )
    return chosen


def _scalar_loss(call: str, loss: Callable, what: str = "loss") -> Callable:
    """Wrap ``loss`` so that a non-scalar output raises an error naming ``call``."""

    def wrapped(params):
        return check_scalar_output(call, loss(params), what)

    return wrapped


def _grad_and_value(call: str, loss: Callable, params: Tree, what: str = "loss"):
    gradient, value = grad_and_value(_scalar_loss(call, loss, what))(params)
    check_finite_value(call, value, what)
    check_finite_tree(call, gradient, f"gradient of {what}")
    return gradient, value


def value_and_grad(loss: Callable, params: Mapping[str, Tensor]) -> tuple[Tensor, Tree]:
    """``(L(θ), ∇L(θ))`` in one forward and one backward pass.

    Raises:
        TypeError: ``params`` is not a dict of floating-point tensors.
        ValueError: the loss is not a scalar, or it or its gradient is not finite.
    """
    params = check_params("value_and_grad", params)
    check_callable("value_and_grad", loss, "loss")
    gradient, value = _grad_and_value("value_and_grad", loss, params)
    return value, gradient


def grad(loss: Callable, params: Mapping[str, Tensor]) -> Tree:
    """The gradient ``g = ∇L(θ)`` as a dict shaped like ``params``.

    Example:
        >>> params = {"w": torch.tensor([1.0, 2.0])}
        >>> grad(lambda p: (p["w"] ** 2).sum(), params)["w"]
        tensor([2., 4.])

    Raises:
        TypeError: ``params`` is not a dict of floating-point tensors.
        ValueError: the loss is not a scalar, or it or its gradient is not finite.
    """
    params = check_params("grad", params)
    check_callable("grad", loss, "loss")
    return _grad_and_value("grad", loss, params)[0]


def _with_forward_fallback(call: str, fn: Callable, mode: str, forward, reverse):
    """Run ``forward()`` or ``reverse()`` by ``mode``; ``auto`` falls back to reverse.

    Forward-over-reverse fails for some common operations in current torch
    releases (``huber_loss`` has no forward derivative of its backward;
    ``mse_loss`` raises "ZeroTensors are immutable"), so ``auto`` retries any
    ``RuntimeError``/``NotImplementedError`` in reverse mode and remembers the
    function. Errors of the caller's own making (``TypeError``/``ValueError``)
    are never retried.
    """
    if mode == "forward":
        return forward()
    if mode == "reverse":
        return reverse()
    try:
        known_reverse = fn in _NO_FORWARD_AD
    except TypeError:  # not weak-referenceable: no caching
        known_reverse = False
    if known_reverse:
        return reverse()
    try:
        return forward()
    except (RuntimeError, NotImplementedError) as forward_error:
        try:
            result = reverse()
        except (RuntimeError, NotImplementedError) as reverse_error:
            raise RuntimeError(
                f"{call}: neither forward-over-reverse ({forward_error}) nor "
                f"reverse-over-reverse ({reverse_error}) differentiation works for this function"
            ) from reverse_error
        try:
            _NO_FORWARD_AD.add(fn)
        except TypeError:
            pass
        return result


def _grad_and_hvp(call: str, loss: Callable, params: Tree, v: Tree, mode: str) -> tuple[Tree, Tree]:
    """``(∇L, H v)`` with the gradient a by-product of the product."""
    gradient_fn = torch.func.grad(_scalar_loss(call, loss))

    def forward():
        return jvp(gradient_fn, (params,), (v,))

    def reverse():
        gradient, pullback = vjp(gradient_fn, params)
        return gradient, pullback(v)[0]

    return _with_forward_fallback(call, loss, mode, forward, reverse)


def _check_mode(call: str, mode: str, modes: Sequence[str]) -> None:
    if mode not in modes:
        raise ValueError(f"{call}: mode must be one of {tuple(modes)}, got {mode!r}")


def hvp(
    loss: Callable, params: Mapping[str, Tensor], v: Mapping[str, Tensor], mode: str = "auto"
) -> Tree:
    """The Hessian-vector product ``H v = ∇²L(θ) v``, without forming ``H``.

    Modes:
        ``"forward"``: forward-over-reverse, ``jvp(∇L, θ, v)``; about the cost of
        two gradients.
        ``"reverse"``: reverse-over-reverse, the gradient of ``⟨∇L(θ), v⟩``.
        ``"auto"`` (default): forward-over-reverse, falling back to
        reverse-over-reverse (and remembering it for this loss) when an operation
        in the loss has no forward-mode derivative.

    Example:
        >>> A = torch.tensor([[2.0, 1.0], [1.0, 3.0]])
        >>> loss = lambda p: 0.5 * p["x"] @ A @ p["x"]
        >>> hvp(loss, {"x": torch.zeros(2)}, {"x": torch.tensor([1.0, 0.0])})["x"]
        tensor([2., 1.])

    Raises:
        ValueError: ``v`` does not have the keys and shapes of ``params``, an
            unknown mode, a non-scalar or non-finite loss, a non-finite product.
    """
    params = check_params("hvp", params)
    check_callable("hvp", loss, "loss")
    v = check_like("hvp", params, v, "v")
    _check_mode("hvp", mode, HVP_MODES)
    _, product = _grad_and_hvp("hvp", loss, params, v, mode)
    check_finite_tree("hvp", product, "H v")
    return product


def _grads(call: str, losses: Sequence[Callable], params: Tree) -> list[Tree]:
    return [
        _grad_and_value(call, loss, params, f"losses[{index}]")[0]
        for index, loss in enumerate(losses)
    ]


def gram_blocks(grads: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """One K×K block per parameter, ``B[n]_ij = ⟨g_i[n], g_j[n]⟩``.

    The Gram matrix over any set of parameters is the sum of their blocks, so a
    monitor that needs it on several groups (shared, all, each layer) pays for the
    products once.
    """
    blocks = {}
    for name in grads[0]:
        rows = torch.stack([g[name].reshape(-1) for g in grads])
        blocks[name] = rows @ rows.T
    return blocks


def gram_from_grads(
    grads: Sequence[Mapping[str, Tensor]], names: Iterable[str] | None = None
) -> Tensor:
    """``G_ij = ⟨g_i, g_j⟩`` over ``names`` (all keys if ``None``), as a K×K tensor."""
    names = list(grads[0]) if names is None else list(names)
    matrix = torch.stack([torch.cat([g[n].reshape(-1) for n in names]) for g in grads])
    return matrix @ matrix.T


def gram(losses: Sequence[Callable], params: Mapping[str, Tensor], names=None) -> Tensor:
    """The K×K Gram matrix of the losses' gradients, ``G_ij = ⟨∇L_i, ∇L_j⟩``.

    Args:
        losses: K pure losses.
        params: the parameters.
        names: restrict the inner products to these parameters (exact names or
            module prefixes, or a predicate; see :func:`select_names`), e.g. the
            shared trunk of a multitask model.

    Cost: K gradients and one K×P by P×K product.

    Raises:
        ValueError: no losses, a selection that matches nothing, non-finite values.
    """
    params = check_params("gram", params)
    losses = check_losses("gram", losses)
    chosen = select_names("gram", params, names)
    return gram_from_grads(_grads("gram", losses, params), chosen)


def layer_groups(params: Mapping[str, Tensor]) -> dict[str, list[str]]:
    """Group parameter names by the module that owns them (``"trunk.0.weight"`` → ``"trunk.0"``)."""
    groups: dict[str, list[str]] = {}
    for name in params:
        groups.setdefault(name.rpartition(".")[0] or name, []).append(name)
    return groups


def per_layer_inner(
    a: Mapping[str, Tensor], b: Mapping[str, Tensor], groups=None
) -> dict[str, Tensor]:
    """``⟨a, b⟩`` restricted to each layer group (default :func:`layer_groups`)."""
    groups = layer_groups(a) if groups is None else groups
    return {group: sum((a[n] * b[n]).sum() for n in names) for group, names in groups.items()}


def per_layer_norm(v: Mapping[str, Tensor], groups=None) -> dict[str, Tensor]:
    """``‖v‖`` restricted to each layer group (default :func:`layer_groups`)."""
    return {group: torch.sqrt(value) for group, value in per_layer_inner(v, v, groups).items()}


def gram_by_layer(
    losses: Sequence[Callable], params: Mapping[str, Tensor], groups=None
) -> dict[str, Tensor]:
    """One K×K Gram matrix per layer group; they sum to :func:`gram` over all params."""
    params = check_params("gram_by_layer", params)
    losses = check_losses("gram_by_layer", losses)
    blocks = gram_blocks(_grads("gram_by_layer", losses, params))
    groups = layer_groups(params) if groups is None else groups
    return {group: sum(blocks[n] for n in names) for group, names in groups.items()}


def _plain_tensors(params: Mapping[str, Tensor]) -> bool:
    """True when no leaf is traced by torch.func or tracked by autograd (nothing outside
    needs to differentiate the result), so plain autograd may be used."""
    return (
        not any(v.requires_grad or _is_traced(v) for v in params.values())
        and not torch._C._functorch.peek_interpreter_stack()
    )


def _fused_bracket_autograd(loss_a: Callable, loss_b: Callable, params: Tree):
    """The fused pass with plain ``torch.autograd`` on leaf copies of ``params``.

    Same arithmetic as the ``torch.func`` form (two gradients with their graphs, one
    backward pass with cotangents ``(−g_b, g_a)``) without functorch's per-operation
    wrapping, which dominates on small models. Used only when nothing outside needs to
    differentiate the result.
    """
    leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    inputs = list(leaves.values())
    with torch.enable_grad():
        value_a = loss_a(leaves)
        check_finite_value("lie_bracket", value_a, "loss_a")
        grads_a = torch.autograd.grad(value_a, inputs, create_graph=True, materialize_grads=True)
        value_b = loss_b(leaves)
        check_finite_value("lie_bracket", value_b, "loss_b")
        grads_b = torch.autograd.grad(value_b, inputs, create_graph=True, materialize_grads=True)
        outputs, cotangents = [], []
        for g_a, g_b in zip(grads_a, grads_b, strict=True):
            # A gradient that does not depend on θ (a bias under a linear loss) drops out.
            if g_a.requires_grad:
                outputs.append(g_a)
                cotangents.append(-g_b.detach())
            if g_b.requires_grad:
                outputs.append(g_b)
                cotangents.append(g_a.detach())
        if outputs:
            pulled = torch.autograd.grad(outputs, inputs, cotangents, materialize_grads=True)
        else:
            pulled = [torch.zeros_like(x) for x in inputs]
    names = list(leaves)
    detached = lambda gs: {n: g.detach() for n, g in zip(names, gs, strict=True)}  # noqa: E731
    return detached(grads_a), detached(grads_b), detached(pulled)


class BracketResult(NamedTuple):
    """A Lie bracket with the two gradients it was made of.

    ``products`` is ``(H_b g_a, H_a g_b)`` in the modes that form them apart
    (``"forward"``, ``"reverse"``) and ``None`` in ``"fused"``, which forms only
    their difference.
    """

    bracket: Tree
    grad_a: Tree
    grad_b: Tree
    products: tuple[Tree, Tree] | None = None


def lie_bracket(
    loss_a: Callable,
    loss_b: Callable,
    params: Mapping[str, Tensor],
    mode: str = "fused",
    return_grads: bool = False,
):
    """The Lie bracket of two gradient fields, ``[g_a, g_b] = H_b g_a − H_a g_b``.

    Consecutive SGD steps on ``L_a`` then ``L_b`` follow the flow of
    ``−(g_a + g_b) − (h/2)(H_a g_a + H_b g_b) + (h/2)[g_a, g_b]`` to second order
    (design notes §1.3); the bracket is antisymmetric and measures how much the
    order of the two steps matters: ``θ_(a→b) − θ_(b→a) = h²[g_a, g_b] + O(h³)``.

    Modes:
        ``"fused"`` (default): the two gradients with their graphs, then one
        reverse pass through both graphs with cotangents ``(−g_b, g_a)``, which
        gives ``H_b g_a − H_a g_b`` (Hessians are symmetric); no third-order graph
        is ever kept, and the gradients come out as by-products. The result stays
        differentiable in ``params`` (e.g. to train on a bracket penalty): under a
        ``torch.func`` transform or on parameters that require grad the pass is a
        ``torch.func.vjp``; otherwise plain autograd does the same arithmetic with
        less overhead.
        ``"forward"``: two forward-over-reverse products, ``g_b`` from the first.
        ``"reverse"``: two reverse-over-reverse products.

    Args:
        return_grads: also return ``g_a`` and ``g_b`` (as a :class:`BracketResult`,
            with the two products ``H_b g_a`` and ``H_a g_b`` in the non-fused modes).

    Example:
        >>> A1, A2 = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([[0.0, 1.0], [1.0, 0.0]])
        >>> l1 = lambda p: 0.5 * p["x"] @ A1 @ p["x"]
        >>> l2 = lambda p: 0.5 * p["x"] @ A2 @ p["x"]
        >>> x = torch.tensor([1.0, 1.0])
        >>> lie_bracket(l1, l2, {"x": x})["x"]  # (A2 A1 - A1 A2) x
        tensor([ 1., -1.])

    Raises:
        ValueError: an unknown mode, a non-scalar or non-finite loss, a non-finite bracket.
    """
    params = check_params("lie_bracket", params)
    check_callable("lie_bracket", loss_a, "loss_a")
    check_callable("lie_bracket", loss_b, "loss_b")
    _check_mode("lie_bracket", mode, BRACKET_MODES)
    loss_a = _scalar_loss("lie_bracket", loss_a, "loss_a")
    loss_b = _scalar_loss("lie_bracket", loss_b, "loss_b")

    if mode == "fused" and _plain_tensors(params):
        grad_a, grad_b, bracket = _fused_bracket_autograd(loss_a, loss_b, params)
        products = None
    elif mode == "fused":

        def both_gradients(p):
            grad_a, value_a = grad_and_value(loss_a)(p)
            grad_b, value_b = grad_and_value(loss_b)(p)
            return (grad_a, grad_b), (value_a, value_b)

        # One reverse pass through both gradient graphs with cotangents (−g_b, g_a):
        # Hᵀ is H, so the pullback is H_a(−g_b) + H_b g_a. No stop-gradient is needed,
        # which keeps the bracket differentiable under outer transforms.
        (grad_a, grad_b), pullback, (value_a, value_b) = vjp(both_gradients, params, has_aux=True)
        check_finite_value("lie_bracket", value_a, "loss_a")
        check_finite_value("lie_bracket", value_b, "loss_b")
        cotangent_a = {k: -v for k, v in grad_b.items()}
        (bracket,) = pullback((cotangent_a, grad_a))
        products = None
    else:
        hvp_mode = "forward" if mode == "forward" else "reverse"
        grad_a, _ = _grad_and_value("lie_bracket", loss_a, params, "loss_a")
        grad_b, hb_ga = _grad_and_hvp("lie_bracket", loss_b, params, grad_a, hvp_mode)
        _, ha_gb = _grad_and_hvp("lie_bracket", loss_a, params, grad_b, hvp_mode)
        bracket = {k: hb_ga[k] - ha_gb[k] for k in params}
        products = (hb_ga, ha_gb)
    check_finite_tree("lie_bracket", grad_a, "gradient of loss_a")
    check_finite_tree("lie_bracket", grad_b, "gradient of loss_b")
    check_finite_tree("lie_bracket", bracket, "bracket")
    if return_grads:
        return BracketResult(bracket, grad_a, grad_b, products)
    return bracket


def _field(call: str, field: Callable, params: Tree, what: str) -> Callable:
    """Wrap a vector field so a wrong output raises an error naming ``call``."""

    def wrapped(p):
        out = field(p)
        if not isinstance(out, Mapping):
            raise TypeError(
                f"{call}: {what} returned {type(out).__name__}, expected a dict like params"
            )
        return check_like(call, params, out, f"the output of {what}")

    return wrapped


def _jacobian_vector(
    call: str, field: Callable, params: Tree, v: Tree, mode: str, key: Callable | None = None
) -> tuple[Tree, Tree]:
    """``(F(θ), ∇F(θ)·v)``; reverse mode uses the double-vjp trick."""

    def forward():
        return jvp(field, (params,), (v,))

    def reverse():
        value, pullback = vjp(field, params)
        # pullback is linear in the cotangent u: u ↦ Jᵀu. Its own vjp against v gives J v.
        cotangent = {k: torch.zeros_like(x) for k, x in value.items()}
        _, pullback_of_pullback = vjp(lambda u: pullback(u)[0], cotangent)
        return value, pullback_of_pullback(v)[0]

    return _with_forward_fallback(call, key or field, mode, forward, reverse)


def vector_field_bracket(
    F: Callable, G: Callable, params: Mapping[str, Tensor], mode: str = "auto"
) -> Tree:
    """The Lie bracket of two vector fields, ``[F, G](θ) = ∇G(θ)·F(θ) − ∇F(θ)·G(θ)``.

    ``F`` and ``G`` map a params dict to a dict with the same keys and shapes.
    For gradient fields it equals :func:`lie_bracket`. It is antisymmetric,
    bilinear, and satisfies the Jacobi identity.

    Args:
        mode: ``"auto"`` (forward-mode Jacobian-vector products, falling back to
            reverse mode), ``"forward"`` or ``"reverse"``.

    Raises:
        TypeError/ValueError: a field whose output is not a dict shaped like params,
            an unknown mode, a non-finite bracket.
    """
    params = check_params("vector_field_bracket", params)
    check_callable("vector_field_bracket", F, "F")
    check_callable("vector_field_bracket", G, "G")
    _check_mode("vector_field_bracket", mode, HVP_MODES)
    field_f = _field("vector_field_bracket", F, params, "F")
    field_g = _field("vector_field_bracket", G, params, "G")
    value_f = field_f(params)
    value_g = field_g(params)
    # The fallback cache is keyed on the user's fields, not on the per-call wrappers.
    _, dg_f = _jacobian_vector("vector_field_bracket", field_g, params, value_f, mode, key=G)
    _, df_g = _jacobian_vector("vector_field_bracket", field_f, params, value_g, mode, key=F)
    bracket = {k: dg_f[k] - df_g[k] for k in params}
    check_finite_tree("vector_field_bracket", bracket, "bracket")
    return bracket


def flat_dense_hessian(loss: Callable, params: Mapping[str, Tensor]) -> Tensor:
    """The dense P×P Hessian of ``loss`` at ``params`` in ravel order (small models only).

    An oracle for tests and a reference for benchmarks: memory is quadratic in
    the number of parameters. Built by vectorized double backward
    (``torch.autograd.functional.hessian``); nested ``torch.func.jacrev`` gives
    wrong values for BatchNorm in training mode in current torch releases.
    """
    params = check_params("flat_dense_hessian", params)
    check_callable("flat_dense_hessian", loss, "loss")

    def flat_loss(x):
        return check_scalar_output("flat_dense_hessian", loss(tree_unravel(x, params)))

    return torch.autograd.functional.hessian(flat_loss, tree_ravel(params), vectorize=True)
