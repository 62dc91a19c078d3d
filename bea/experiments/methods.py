"""Multitask training methods: what gradient one step of a multitask model takes.

With task losses ``L_k`` on a batch, weights ``w_k``, ``K`` tasks and the reduction

    sum:   α_k = w_k           mean:  α_k = w_k / K

(the reduction is explicit because it rescales the effective step: with ``mean`` every
task moves with step ``h/K``), the weighted loss is ``L = Σ α_k L_k``. Shared parameters
are ``θ``, the rest (task heads) ``φ``. Every method returns one gradient per parameter;
the optimizer (SGD, optionally with momentum) applies it with step ``h``.

Methods (``method.name``), with their objective or rule:

- ``sgd``: ``∇L``.
- ``igr``: explicit implicit-gradient regularization, ``∇[L + s (h/4) ‖∇L‖²]``
  (``s = method.strength``, default 1).
- ``conflict``: the strength knob ``∇[L + k (h/2) Σ_{i<j} α_i α_j ⟨∇_θ L_i, ∇_θ L_j⟩]``
  with ``k = method.strength``: ``k = -1`` cancels the conflict term of the modified loss
  (so SGD follows a flow with no conflict term to first order), ``k = 0`` is plain SGD,
  ``k > 0`` amplifies it.
- ``cancel``: ``conflict`` with ``k = -1``.
- ``align``: alignment regularizer ``∇[L + λ Σ_{i<j} (1 - cos(∇_θ L_i, ∇_θ L_j))]``
  (``λ = method.strength``, default 0.1), which rewards aligned shared gradients.
- torchjd 0.18 aggregators on the shared block: the Jacobian ``J`` has rows
  ``α_k ∇_θ L_k``; the shared update is ``A(J)``; heads get ``∇_φ L``.
  ``pcgrad``, ``gradvac``, ``mgda``, ``graddrop``, ``imtlg``, ``alignedmtl`` need
  nothing more; ``upgrad`` uses :class:`ScipyDualConeProjector` (the default projector
  needs ``qpsolvers`` and ``quadprog``); ``cagrad`` needs ``cvxpy`` and ``clarabel`` and
  ``nashmtl`` needs ``cvxpy`` and ``ecos``, all installed with ``torchjd[full]`` by bea's
  ``experiments`` extra; where they are missing these two raise an ImportError that
  names the packages. ``cagrad_scipy`` is :class:`ScipyCAGrad`, CAGrad solved with scipy
  as in the authors' code (not torchjd), for use without cvxpy. The ``sum`` aggregator
  reproduces ``sgd``; ``mean`` scales the shared update by ``1/K`` (heads keep ``∇_φ L``).
  Random aggregators (PCGrad's order, GradVac's order, GradDrop's masks) draw from
  torch's global generator, which the runner seeds and checkpoints. Stateful aggregators
  (GradVac, Nash-MTL) keep their state in the module, which is checkpointed.

Example::

    step = make_method("conflict", strength=-1.0)
    grads, info = step(losses, alpha, shared_params, head_params, lr=0.1)
    for p, g in zip(shared_params + head_params, grads): p.grad = g
    optimizer.step()
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchjd.linalg import DualConeProjector

AGGREGATORS = (
    "pcgrad",
    "gradvac",
    "cagrad",
    "mgda",
    "upgrad",
    "nashmtl",
    "graddrop",
    "imtlg",
    "alignedmtl",
    "cagrad_scipy",
    "mean",
    "sum",
)
METHODS = ("sgd", "igr", "conflict", "cancel", "align") + AGGREGATORS
STRENGTH_METHODS = {"igr": 1.0, "conflict": None, "align": 0.1}
EXTRA_PACKAGES = {"cagrad": ("cvxpy", "clarabel"), "nashmtl": ("cvxpy", "ecos")}

UpdateFn = Callable[..., tuple[list[Tensor], dict[str, float]]]


def task_weights(weights: Sequence[float] | None, num_tasks: int, reduction: str) -> Tensor:
    """``α``: ``w`` for ``reduction="sum"``, ``w / K`` for ``"mean"`` (``w`` defaults to ones).

    >>> task_weights(None, 2, "mean")
    tensor([0.5000, 0.5000], dtype=torch.float64)
    """
    if reduction not in ("sum", "mean"):
        raise ValueError(f"task_weights: reduction must be 'sum' or 'mean', got {reduction!r}")
    w = (
        torch.ones(num_tasks, dtype=torch.float64)
        if not weights
        else torch.tensor(list(weights), dtype=torch.float64)
    )
    if w.shape != (num_tasks,):
        raise ValueError(f"task_weights: need {num_tasks} weights, got {list(weights or [])}")
    return w / num_tasks if reduction == "mean" else w


def pairwise_inner(grads: Sequence[Sequence[Tensor]]) -> Tensor:
    """``G_ij = ⟨g_i, g_j⟩`` for gradients given as lists of tensors (differentiable)."""
    flat = torch.stack([torch.cat([g.reshape(-1) for g in grad]) for grad in grads])
    return flat @ flat.T


def conflict_term(gram: Tensor, alpha: Tensor, lr: float) -> Tensor:
    """``(h/2) Σ_{i<j} α_i α_j G_ij`` from the shared-parameter Gram matrix ``G``."""
    alpha = alpha.to(gram.dtype)
    return (lr / 2) * torch.triu(torch.outer(alpha, alpha) * gram, diagonal=1).sum()


def _shared_grads(
    losses: Tensor, shared: Sequence[Tensor], create_graph: bool
) -> list[list[Tensor]]:
    grads = []
    for k in range(losses.shape[0]):
        g = torch.autograd.grad(
            losses[k], shared, retain_graph=True, create_graph=create_graph, allow_unused=True
        )
        grads.append(
            [torch.zeros_like(p) if gi is None else gi for p, gi in zip(shared, g, strict=True)]
        )
    return grads


def _grads_of(objective: Tensor, params: Sequence[Tensor]) -> list[Tensor]:
    grads = torch.autograd.grad(objective, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]


def _regularized(kind: str, strength: float) -> UpdateFn:
    def update(losses, alpha, shared, heads, lr):
        alpha = alpha.to(losses.dtype)
        weighted = (alpha * losses).sum()
        params = list(shared) + list(heads)
        info: dict[str, float] = {}
        if kind == "sgd":
            return _grads_of(weighted, params), info
        if kind == "igr":
            full = torch.autograd.grad(weighted, params, create_graph=True, allow_unused=True)
            norm2 = sum((g * g).sum() for g in full if g is not None)
            term = (lr / 4) * norm2
            info["igr"] = float(term.detach())
            return _grads_of(weighted + strength * term, params), info
        grads = _shared_grads(losses, shared, create_graph=True)
        gram = pairwise_inner(grads)
        if kind == "conflict":
            term = conflict_term(gram, alpha, lr)
            info["conflict"] = float(term.detach())
            return _grads_of(weighted + strength * term, params), info
        # align: λ Σ_{i<j} (1 - cos_ij)
        norms = torch.sqrt(torch.clamp(torch.diagonal(gram), min=1e-30))
        cosine = gram / torch.outer(norms, norms)
        penalty = torch.triu(1 - cosine, diagonal=1).sum()
        info["align_penalty"] = float(penalty.detach())
        return _grads_of(weighted + strength * penalty, params), info

    return update


class ScipyDualConeProjector(DualConeProjector):
    """Dual-cone projection for UPGrad with scipy instead of quadprog.

    Solves ``min_v vᵀ G v  s.t.  v ⪰ u`` (Proposition 1 of Quinton & Rey, *Jacobian
    Descent*) for each row ``u`` with L-BFGS-B under bounds, after the same normalization
    and regularization of ``G`` as torchjd's ``QuadprogProjector``.
    """

    def __init__(self, norm_eps: float = 1e-4, reg_eps: float = 1e-4) -> None:
        self.norm_eps = norm_eps
        self.reg_eps = reg_eps

    def __call__(self, U: Tensor, G: Tensor) -> Tensor:
        from scipy.optimize import minimize

        gram = G.detach().cpu().double().numpy()
        trace = float(np.trace(gram))
        gram = gram / trace if trace >= self.norm_eps else gram
        gram = gram + self.reg_eps * np.eye(gram.shape[0])
        rows = U.detach().cpu().double().numpy().reshape(-1, gram.shape[0])
        out = np.empty_like(rows)
        for index, u in enumerate(rows):
            result = minimize(
                lambda v: (float(v @ gram @ v), 2 * gram @ v),
                x0=np.maximum(u, 0.0) + 1e-3,
                jac=True,
                bounds=[(float(b), None) for b in u],
                method="L-BFGS-B",
                options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 500},
            )
            out[index] = result.x
        return torch.as_tensor(out.reshape(U.shape), dtype=G.dtype, device=G.device)


class ScipyCAGrad:
    """CAGrad (Liu et al., NeurIPS 2021) solved with scipy, as in the authors' code.

    With the task gradients ``g_i`` (rows of ``J``), ``g0 = mean_i g_i`` and
    ``φ = c² ‖g0‖²``, find simplex weights ``w`` minimizing
    ``g_wᵀ g0 + sqrt(φ) ‖g_w‖`` (``g_w = Σ w_i g_i``) with SLSQP, and return
    ``g0 + (sqrt(φ) / ‖g_w‖) g_w``, divided by ``1 + c²`` (the authors' ``rescale=1``).
    Deterministic; needs only scipy.
    """

    def __init__(self, c: float = 0.5) -> None:
        self.c = c

    def radius(self, gram: np.ndarray) -> float:
        """``sqrt(φ) = c ‖g0‖`` from the Gram matrix (``‖g0‖² = mean of G``)."""
        return self.c * float(np.sqrt(gram.mean() + 1e-8)) + 1e-8

    def weights(self, gram: np.ndarray) -> np.ndarray:
        """The simplex weights ``w`` minimizing ``wᵀ G 1/K + sqrt(φ) sqrt(wᵀ G w)``."""
        from scipy.optimize import minimize

        count = gram.shape[0]
        radius = self.radius(gram)
        mean_weights = np.ones(count) / count

        def objective(w: np.ndarray) -> float:
            return float(w @ gram @ mean_weights + radius * np.sqrt(w @ gram @ w + 1e-8))

        result = minimize(
            objective,
            mean_weights,
            bounds=[(0.0, 1.0)] * count,
            constraints=({"type": "eq", "fun": lambda w: 1.0 - w.sum()},),
            method="SLSQP",
            options={"ftol": 1e-12, "maxiter": 200},
        )
        return result.x

    def __call__(self, jacobian: Tensor) -> Tensor:
        gram = (jacobian @ jacobian.T).detach().cpu().double().numpy()
        weights = torch.as_tensor(self.weights(gram), dtype=jacobian.dtype, device=jacobian.device)
        g_w = weights @ jacobian
        g0 = jacobian.mean(dim=0)
        direction = g0 + self.radius(gram) / (g_w.norm() + 1e-8) * g_w
        return direction / (1 + self.c**2)


def make_aggregator(name: str, num_tasks: int) -> Any:
    """The torchjd 0.18 aggregator for ``name`` (see the module docstring)."""
    from torchjd import aggregation as agg

    if name in EXTRA_PACKAGES:
        import importlib.util

        missing = [p for p in EXTRA_PACKAGES[name] if importlib.util.find_spec(p) is None]
        if missing:
            raise ImportError(
                f"make_aggregator: method {name!r} needs the packages {', '.join(missing)} "
                f'(pip install "torchjd[{"nash_mtl" if name == "nashmtl" else name}]")'
            )
    if name == "upgrad":
        return agg.UPGrad(projector=ScipyDualConeProjector())
    factories = {
        "pcgrad": agg.PCGrad,
        "gradvac": agg.GradVac,
        "cagrad": lambda: agg.CAGrad(c=0.5),
        "mgda": agg.MGDA,
        "nashmtl": lambda: agg.NashMTL(n_tasks=num_tasks),
        "graddrop": agg.GradDrop,
        "imtlg": agg.IMTLG,
        "alignedmtl": agg.AlignedMTL,
        "cagrad_scipy": ScipyCAGrad,
        "mean": agg.Mean,
        "sum": agg.Sum,
    }
    if name not in factories:
        raise ValueError(
            f"make_aggregator: unknown aggregator {name!r} (known: {', '.join(factories)})"
        )
    return factories[name]()


def _aggregated(aggregator: Any) -> UpdateFn:
    def update(losses, alpha, shared, heads, lr):
        alpha = alpha.to(losses.dtype)
        grads = _shared_grads(alpha * losses, shared, create_graph=False)
        jacobian = torch.stack([torch.cat([g.reshape(-1) for g in grad]) for grad in grads])
        direction = update.aggregator(jacobian)  # type: ignore[attr-defined]
        shared_update, offset = [], 0
        for p in shared:
            shared_update.append(direction[offset : offset + p.numel()].reshape(p.shape))
            offset += p.numel()
        head_update = _grads_of((alpha * losses).sum(), heads) if heads else []
        return shared_update + head_update, {}

    update.aggregator = aggregator  # type: ignore[attr-defined]
    return update


def make_method(name: str, *, strength: float | None = None, num_tasks: int = 2) -> UpdateFn:
    """An update function ``(losses, alpha, shared, heads, lr) -> (grads, info)``.

    Args:
        name: one of :data:`METHODS`.
        strength: ``k`` for ``conflict`` (required), the coefficient for ``igr``
            (default 1) and ``align`` (default 0.1); must be None for the others.
        num_tasks: K (Nash-MTL needs it).

    The returned ``grads`` follow ``list(shared) + list(heads)``; ``losses`` is the (K,)
    tensor of task losses on the batch, still attached to the graph; ``alpha`` is (K,).
    Aggregator methods carry the aggregator module in ``update.aggregator``.

    Raises:
        ValueError: unknown name; a strength where none applies or none where one is needed.
        ImportError: an aggregator whose optional packages are missing.
    """
    if name not in METHODS:
        raise ValueError(f"make_method: unknown method {name!r} (known: {', '.join(METHODS)})")
    if name == "cancel":
        if strength is not None and strength != -1.0:
            raise ValueError(f"make_method: 'cancel' fixes strength = -1, got {strength}")
        name, strength = "conflict", -1.0
    if name in STRENGTH_METHODS:
        if strength is None:
            strength = STRENGTH_METHODS[name]
        if strength is None:
            raise ValueError(f"make_method: method {name!r} needs a strength, got None")
        if not math.isfinite(strength):
            raise ValueError(f"make_method: strength must be finite, got {strength}")
        return _regularized(name, float(strength))
    if strength is not None:
        raise ValueError(f"make_method: method {name!r} takes no strength, got {strength}")
    if name == "sgd":
        return _regularized("sgd", 0.0)
    return _aggregated(make_aggregator(name, num_tasks))
