"""Contenders that bea's derivatives are timed against.

Each ``make_*`` function takes a :class:`models.Case` (or a model and batches)
and returns a zero-argument callable that computes the quantity and returns it
as a list of tensors in ``model.parameters()`` order (or a tensor), so results
can be compared entry by entry with bea's dicts (which follow
``named_parameters()`` order).
"""

from __future__ import annotations

import copy
import importlib.util
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn


def _params(model: nn.Module) -> list[Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


def _loss(case, batch) -> Tensor:
    inputs, targets = batch
    return case.criterion(case.model(inputs), targets)


def with_math_attention(fn: Callable) -> Callable:
    """``fn`` run under the math backend of ``scaled_dot_product_attention``.

    The fused CPU attention kernel has neither a double-backward nor a
    forward-mode derivative in the pinned torch, so double-backward and
    forward-over-reverse contenders need the math backend on attention models.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def run():
        with sdpa_kernel(SDPBackend.MATH):
            return fn()

    return run


def _counted(fn: Callable) -> tuple[object, int]:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        result = fn()
    return result, counter.get_total_flops()


def first_results(made: dict, optional=()) -> tuple[dict, dict, dict, dict]:
    """Run each contender once: ``(results, failed, notes, flops)``.

    ``flops`` counts the matrix-multiply and convolution flops of the call
    (``torch.utils.flop_counter``), which is what bounds the time ratios from below.
    A contender named in ``optional`` that fails is retried under the math
    attention backend (and replaced by that version in ``made``); one that fails
    again is dropped from ``made`` and its error kept in ``failed``. Any other
    failure is raised.
    """
    results, failed, notes, flops = {}, {}, {}, {}
    for name in list(made):
        try:
            results[name], flops[name] = _counted(made[name])
        except (RuntimeError, NotImplementedError) as error:
            if name not in optional:
                raise
            message = f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
            made[name] = with_math_attention(made[name])
            try:
                results[name], flops[name] = _counted(made[name])
                notes[name] = f"run with the math attention backend (default failed: {message})"
            except (RuntimeError, NotImplementedError):
                failed[name] = message
                made.pop(name)
    return results, failed, notes, flops


# --- floors -------------------------------------------------------------------------------


def make_one_grad(case) -> Callable[[], list[Tensor]]:
    """Floor for one product: one forward and backward pass with plain autograd."""
    params = _params(case.model)

    def run():
        return list(torch.autograd.grad(_loss(case, case.batch_a), params))

    return run


def make_two_grads(case) -> Callable[[], list[Tensor]]:
    """Floor for the bracket: ``g_a`` and ``g_b`` with plain autograd, nothing else."""
    params = _params(case.model)

    def run():
        grad_a = torch.autograd.grad(_loss(case, case.batch_a), params)
        grad_b = torch.autograd.grad(_loss(case, case.batch_b), params)
        return list(grad_a) + list(grad_b)

    return run


# --- brackets -----------------------------------------------------------------------------


def make_pyhessian_bracket(case) -> Callable[[], list[Tensor]]:
    """``H_b g_a − H_a g_b`` as two Hessian-vector products done the way PyHessian does.

    PyHessian (``pyhessian/utils.py::hessian_vector_product``) keeps the gradient's
    graph (``create_graph=True``) and calls ``torch.autograd.grad`` once more per
    product. Here both gradients come from those same graphs, the cheapest way in
    that style: two forward passes, two graph-building backward passes, and two
    double-backward passes.
    """
    params = _params(case.model)

    def run():
        grads_a = torch.autograd.grad(_loss(case, case.batch_a), params, create_graph=True)
        grads_b = torch.autograd.grad(_loss(case, case.batch_b), params, create_graph=True)
        fixed_a = [g.detach() for g in grads_a]
        fixed_b = [g.detach() for g in grads_b]
        hb_ga = torch.autograd.grad(
            grads_b, params, grad_outputs=fixed_a, only_inputs=True, retain_graph=True
        )
        ha_gb = torch.autograd.grad(
            grads_a, params, grad_outputs=fixed_b, only_inputs=True, retain_graph=True
        )
        return [x - y for x, y in zip(hb_ga, ha_gb, strict=True)]

    return run


def curvlinops_available() -> bool:
    return importlib.util.find_spec("curvlinops") is not None


def make_curvlinops_bracket(case) -> Callable[[], list[Tensor]] | None:
    """``H_b g_a − H_a g_b`` with curvlinops' ``HessianLinearOperator`` (two mat-vecs).

    One operator per batch, built once (outside the timing); each call takes the
    two gradients from the operators' ``gradient_and_loss`` and applies ``H_b`` to
    ``g_a`` and ``H_a`` to ``g_b`` (forward-over-reverse products in curvlinops).
    Returns ``None`` when curvlinops is not installed.
    """
    if not curvlinops_available():
        return None
    from curvlinops import HessianLinearOperator

    params = _params(case.model)

    def operator(batch):
        return HessianLinearOperator(
            case.model,
            case.criterion,
            params,
            [batch],
            check_deterministic=False,
            num_data=batch[0].shape[0],
        )

    op_a, op_b = operator(case.batch_a), operator(case.batch_b)

    def run():
        grad_a, _ = op_a.gradient_and_loss()
        grad_b, _ = op_b.gradient_and_loss()
        hb_ga = op_b @ grad_a
        ha_gb = op_a @ grad_b
        return [x - y for x, y in zip(hb_ga, ha_gb, strict=True)]

    return run


def make_dense_bracket(case) -> Callable[[], Tensor]:
    """``H_b g_a − H_a g_b`` from two dense ``torch.func.hessian`` matrices (small models)."""
    names = [n for n, p in case.model.named_parameters() if p.requires_grad]
    shapes = [p.shape for p in _params(case.model)]
    sizes = [p.numel() for p in _params(case.model)]
    flat0 = torch.cat([p.detach().reshape(-1) for p in _params(case.model)])

    def flat_loss(batch):
        def loss(flat):
            pieces = torch.split(flat, sizes)
            tensors = {n: x.view(s) for n, x, s in zip(names, pieces, shapes, strict=True)}
            output = torch.func.functional_call(case.model, tensors, (batch[0],))
            return case.criterion(output, batch[1])

        return loss

    loss_a, loss_b = flat_loss(case.batch_a), flat_loss(case.batch_b)

    def run():
        hess_a = torch.func.hessian(loss_a)(flat0)
        hess_b = torch.func.hessian(loss_b)(flat0)
        grad_a = torch.func.grad(loss_a)(flat0)
        grad_b = torch.func.grad(loss_b)(flat0)
        return hess_b @ grad_a - hess_a @ grad_b

    return run


# --- Hessian-vector products --------------------------------------------------------------


def make_pyhessian_hvp(case, v: Sequence[Tensor]) -> Callable[[], list[Tensor]]:
    """``H_a v`` the PyHessian way: ``create_graph=True``, then one more ``autograd.grad``."""
    params = _params(case.model)
    v = list(v)

    def run():
        grads = torch.autograd.grad(_loss(case, case.batch_a), params, create_graph=True)
        return list(torch.autograd.grad(grads, params, grad_outputs=v, only_inputs=True))

    return run


# --- Gram matrices ------------------------------------------------------------------------


def make_k_grads_gram(model: nn.Module, criterion, batches) -> Callable[[], Tensor]:
    """``G_ij = ⟨g_i, g_j⟩`` from K separate autograd gradients and one K×P by P×K product."""
    params = _params(model)

    def run():
        rows = []
        for inputs, targets in batches:
            grads = torch.autograd.grad(criterion(model(inputs), targets), params)
            rows.append(torch.cat([g.reshape(-1) for g in grads]))
        matrix = torch.stack(rows)
        return matrix @ matrix.T

    return run


def torchjd_available() -> bool:
    return importlib.util.find_spec("torchjd") is not None


def make_torchjd_gram(model: nn.Module, batches) -> Callable[[], Tensor] | None:
    """The K×K Gramian from torchjd's autogram ``Engine``.

    The K batches go through the model in one concatenated forward pass; the K
    task losses are the per-batch means of the per-example cross-entropies, and
    ``Engine(model, batch_dim=None).compute_gramian(losses)`` returns their Gramian
    (torchjd backpropagates the K losses with a vmapped backward and accumulates
    the Gramian module by module, never holding the K×P Jacobian).
    Returns ``None`` when torchjd is absent. The engine works on a private copy of
    the model.
    """
    if not torchjd_available():
        return None
    from torchjd.autogram import Engine

    # The engine hooks every forward pass of the modules it is given; a private copy
    # keeps the other contenders' forward passes (same weights) out of its bookkeeping.
    model = copy.deepcopy(model)
    engine = Engine(model, batch_dim=None)
    inputs = torch.cat([b[0] for b in batches])
    targets = torch.cat([b[1] for b in batches])
    count = len(batches)

    def run():
        per_example = nn.functional.cross_entropy(model(inputs), targets, reduction="none")
        losses = per_example.reshape(count, -1).mean(dim=1)
        return engine.compute_gramian(losses)

    return run


# --- multitask ----------------------------------------------------------------------------


class MultiHead(nn.Module):
    """A shared trunk and K linear heads; ``forward(x, task)`` uses head ``task``."""

    def __init__(self, trunk: nn.Module, width: int, classes: int, tasks: int):
        super().__init__()
        self.trunk = trunk
        self.heads = nn.ModuleList(nn.Linear(width, classes) for _ in range(tasks))

    def forward(self, inputs: Tensor, task: int) -> Tensor:
        return self.heads[task](nn.functional.gelu(self.trunk(inputs)))


def make_k_grads(model: MultiHead, criterion, batches) -> Callable[[], list[Tensor]]:
    """Floor for multitask terms: the K task gradients with plain autograd."""
    params = _params(model)

    def run():
        out = []
        for task, (inputs, targets) in enumerate(batches):
            value = criterion(model(inputs, task), targets)
            out.extend(torch.autograd.grad(value, params, materialize_grads=True))
        return out

    return run


def make_naive_multitask(model: MultiHead, criterion, batches, lr: float) -> Callable[[], tuple]:
    """IGR per task and the pairwise conflict matrix from K autograd gradients.

    ``igr_k = (h/4)‖∇_ω L_k‖²`` and ``conflict_ij = (h/2)⟨∇_θ L_i, ∇_θ L_j⟩`` (i ≠ j)
    with ``θ`` the trunk, written directly (weights 1).
    """
    params = _params(model)
    shared = [name.startswith("trunk.") for name, p in model.named_parameters() if p.requires_grad]

    def run():
        full_rows, shared_rows, values = [], [], []
        for task, (inputs, targets) in enumerate(batches):
            value = criterion(model(inputs, task), targets)
            grads = torch.autograd.grad(value, params, materialize_grads=True)
            values.append(value.detach())
            full_rows.append(torch.cat([g.reshape(-1) for g in grads]))
            shared_rows.append(
                torch.cat([g.reshape(-1) for g, s in zip(grads, shared, strict=True) if s])
            )
        full = torch.stack(full_rows)
        trunk = torch.stack(shared_rows)
        igr = (lr / 4) * (full * full).sum(dim=1)
        gram = trunk @ trunk.T
        off = 1 - torch.eye(len(batches), dtype=gram.dtype, device=gram.device)
        return torch.stack(values), igr, (lr / 2) * gram * off

    return run
