"""Continual-learning strategies as plain SGD updates on parameter dicts.

Each strategy turns one training iteration into new parameters. It sees the
parameters ``θ``, the loss function ``loss_fn(params, x, y) -> scalar``, the current
batch ``(x, y)``, an optional replay batch ``(x_m, y_m)`` drawn from a
:class:`ReplayBuffer`, the learning rate ``h`` and the index of the current task.
Writing ``L_new`` for the batch loss and ``L_mem`` for the replay-batch loss:

- ``naive``: fine-tuning, ``θ ← θ − h ∇L_new``.
- ``replay``: experience replay (Chaudhry et al., 2019b, "On tiny episodic memories"),
  ``θ ← θ − h ∇ ½(L_new + L_mem)``.
- ``ewc``: elastic weight consolidation (Kirkpatrick et al., 2017), online sum over past
  tasks, ``θ ← θ − h ∇[L_new + (λ/2) Σ_k Σ_i F_k,i (θ_i − θ*_k,i)²]`` with ``F_k`` the
  diagonal empirical Fisher at the end of task ``k``.
- ``agem``: A-GEM (Chaudhry et al., 2019a): ``g = ∇L_new``, ``g_ref = ∇L_mem``; if
  ``⟨g, g_ref⟩ < 0`` then ``g ← g − (⟨g, g_ref⟩ / ‖g_ref‖²) g_ref``; ``θ ← θ − h g``.
- ``joint``: incremental joint training: the same update as ``naive``, on batches the
  runner draws from the union of all tasks seen so far (:attr:`Strategy.joint_data`).
- ``sequential_replay``: two Euler steps, ``L_new`` then ``L_mem``, each of size ``h/2``;
  the control for ``symmetric_replay``.
- ``symmetric_replay``: the palindrome ``L_mem (h/4) → L_new (h/2) → L_mem (h/4)``.

  Euler steps of sizes ``h_i`` on fields ``g_i`` move ``θ`` by
  ``−Σ h_i g_i + Σ_{i<j} h_i h_j H_j g_i + O(h³)``, whose antisymmetric (bracket) part is
  ``½ Σ_{i<j} h_i h_j [g_i, g_j]`` (design notes §1.3). For the palindrome it is
  ``½(h/4)(h/2)([g_m, g_n] + [g_n, g_m]) = 0``: the bracket term cancels at first order
  of the modified field, leaving ``−(h/2)(g_n + g_m) + (h²/8)(H_n g_m + H_m g_n)
  + (h²/16) H_m g_m``. The sequential order keeps it:
  ``Δ_sequential − Δ_symmetric = (h²/8)[g_new, g_mem] − (h²/16) H_mem g_mem + O(h³)``.
- ``bracket_penalty``: replay plus an explicit penalty on the bracket of the replay and
  new batches, ``θ ← θ − h ∇[½(L_new + L_mem) + β h² ‖[∇L_mem, ∇L_new]‖²]``; ``h²[g_m, g_n]``
  is the predicted order effect ``θ_(m→n) − θ_(n→m)``, so the penalty is ``β`` times its
  squared size (third-order derivatives through ``torch.func``; slower).

Replay-based strategies (``needs_replay``) train as ``naive`` on the first task, when
the memory is necessarily empty, and raise ``ValueError`` if a later task arrives
without a replay batch (an empty buffer).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from bea._tree import tree_dot, tree_sub
from bea.derivatives import lie_bracket

Tree = dict[str, Tensor]
LossFn = Callable[[Mapping[str, Tensor], Tensor, Tensor], Tensor]
Batch = tuple[Tensor, Tensor]

__all__ = [
    "STRATEGIES",
    "ReplayBuffer",
    "Strategy",
    "make_strategy",
    "sgd_update",
    "agem_project",
    "ewc_penalty",
    "bracket_penalty",
    "empirical_fisher_diagonal",
]


def sgd_update(params: Mapping[str, Tensor], grads: Mapping[str, Tensor], lr: float) -> Tree:
    """``θ − h g`` leaf by leaf."""
    return {k: params[k] - lr * grads[k] for k in params}


def _grad(fn: Callable[[Tree], Tensor], params: Mapping[str, Tensor]) -> Tree:
    return torch.func.grad(fn)(dict(params))


def agem_project(grad_new: Mapping[str, Tensor], grad_ref: Mapping[str, Tensor]) -> Tree:
    """A-GEM projection: ``g − (⟨g, g_ref⟩/‖g_ref‖²) g_ref`` if ``⟨g, g_ref⟩ < 0``, else ``g``.

    Example:
        >>> g = {"x": torch.tensor([1.0, -1.0])}
        >>> agem_project(g, {"x": torch.tensor([0.0, 1.0])})["x"]
        tensor([1., 0.])
    """
    dot = tree_dot(grad_new, grad_ref)
    if dot >= 0:
        return dict(grad_new)
    scale = dot / tree_dot(grad_ref, grad_ref)
    return {k: grad_new[k] - scale * grad_ref[k] for k in grad_new}


def ewc_penalty(params: Mapping[str, Tensor], anchors: list[tuple[Tree, Tree]], strength: float):
    """``(λ/2) Σ_k Σ_i F_k,i (θ_i − θ*_k,i)²`` for ``anchors = [(F_k, θ*_k), ...]``."""
    total = 0.0
    for fisher, anchor in anchors:
        diff = tree_sub(dict(params), anchor)
        total = total + sum((fisher[k] * diff[k] ** 2).sum() for k in fisher)
    return 0.5 * strength * total


def empirical_fisher_diagonal(
    loss_fn: LossFn, params: Mapping[str, Tensor], x: Tensor, y: Tensor, chunk: int = 32
) -> Tree:
    """Diagonal empirical Fisher ``F_i = (1/n) Σ_n (∂ℓ_n/∂θ_i)²`` over the examples of ``(x, y)``.

    Per-example gradients by ``torch.func.vmap``, ``chunk`` examples at a time.
    """
    params = {k: v.detach() for k, v in params.items()}

    def single(p, xi, yi):
        return loss_fn(p, xi[None], yi[None])

    per_example = torch.func.vmap(torch.func.grad(single), in_dims=(None, 0, 0))
    total = {k: torch.zeros_like(v) for k, v in params.items()}
    for start in range(0, x.shape[0], chunk):
        grads = per_example(params, x[start : start + chunk], y[start : start + chunk])
        for k in total:
            total[k] += (grads[k] ** 2).sum(0)
    return {k: v / x.shape[0] for k, v in total.items()}


def bracket_penalty(
    loss_fn: LossFn, params: Mapping[str, Tensor], batch_a: Batch, batch_b: Batch
) -> Tensor:
    """``‖[∇L_a, ∇L_b]‖² = ‖H_b g_a − H_a g_b‖²``, differentiable in ``params``.

    Uses :func:`bea.lie_bracket`'s fused pass, which stays differentiable under
    outer ``torch.func`` transforms and autograd.
    """

    def loss_a(p):
        return loss_fn(p, *batch_a)

    def loss_b(p):
        return loss_fn(p, *batch_b)

    bracket = lie_bracket(loss_a, loss_b, dict(params))
    return tree_dot(bracket, bracket)


class ReplayBuffer:
    """Episodic memory: a fixed, seeded sample of each finished task (state: the examples).

    ``add_task`` stores ``per_task`` examples drawn without replacement with a generator
    seeded by ``(seed, task index)``; ``sample`` draws a replay batch uniformly from all
    stored examples with the generator it is given.
    """

    def __init__(self, per_task: int, seed: int = 0):
        if isinstance(per_task, bool) or not isinstance(per_task, int) or per_task < 1:
            raise ValueError(f"ReplayBuffer: per_task must be an int >= 1, got {per_task!r}")
        self.per_task = per_task
        self.seed = seed
        self.x: list[Tensor] = []
        self.y: list[Tensor] = []
        self.tasks: list[int] = []

    def __len__(self) -> int:
        return sum(int(x.shape[0]) for x in self.x)

    def add_task(self, task: int, x: Tensor, y: Tensor) -> None:
        """Store ``min(per_task, len(x))`` examples of finished task ``task``."""
        if x.shape[0] != y.shape[0]:
            raise ValueError(
                f"ReplayBuffer.add_task: x has {x.shape[0]} rows but y has {y.shape[0]}"
            )
        if task in self.tasks:
            raise ValueError(f"ReplayBuffer.add_task: task {task} is already stored")
        generator = torch.Generator().manual_seed(self.seed * 1000 + task)
        index = torch.randperm(x.shape[0], generator=generator)[: self.per_task]
        self.x.append(x[index].clone())
        self.y.append(y[index].clone())
        self.tasks.append(task)

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """A replay batch of ``min(batch_size, len(self))`` stored examples.

        Raises:
            ValueError: the buffer is empty.
        """
        if len(self) == 0:
            raise ValueError(
                "ReplayBuffer.sample: the replay buffer is empty; a replay batch exists only "
                "after the first task has been stored"
            )
        x = torch.cat(self.x)
        y = torch.cat(self.y)
        index = torch.randperm(x.shape[0], generator=generator)[:batch_size]
        return x[index], y[index]

    def state_dict(self) -> dict[str, Any]:
        return {"x": list(self.x), "y": list(self.y), "tasks": list(self.tasks)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.x, self.y, self.tasks = list(state["x"]), list(state["y"]), list(state["tasks"])


class Strategy:
    """One continual-learning update rule (state: whatever it keeps across tasks).

    Attributes:
        name: the registry name.
        needs_replay: the runner passes a replay batch from the second task on.
        joint_data: the runner draws batches from the union of the tasks seen so far.
    """

    name = "naive"
    needs_replay = False
    joint_data = False

    def __init__(self, **options: Any):
        if options:
            raise TypeError(f"{self.name}: unexpected options {sorted(options)}")

    def _check_replay(self, replay: Batch | None, task: int) -> bool:
        """Whether to use the replay batch; raise if one is needed but missing."""
        if not self.needs_replay:
            return False
        if replay is None:
            if task > 0:
                raise ValueError(
                    f"{self.name}: task {task} needs a replay batch but the replay buffer is empty"
                )
            return False
        return True

    def step(
        self,
        params: Tree,
        loss_fn: LossFn,
        batch: Batch,
        replay: Batch | None,
        lr: float,
        task: int,
    ) -> Tree:
        """New parameters after one iteration on ``batch`` (and ``replay``)."""
        return sgd_update(params, _grad(lambda p: loss_fn(p, *batch), params), lr)

    def end_task(self, params: Tree, loss_fn: LossFn, task: int, x: Tensor, y: Tensor) -> None:
        """Called once after the last iteration of ``task`` with its training data."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass


class Naive(Strategy):
    name = "naive"


class Joint(Strategy):
    name = "joint"
    joint_data = True


class Replay(Strategy):
    name = "replay"
    needs_replay = True

    def step(self, params, loss_fn, batch, replay, lr, task):
        if not self._check_replay(replay, task):
            return super().step(params, loss_fn, batch, replay, lr, task)

        def loss(p):
            return 0.5 * (loss_fn(p, *batch) + loss_fn(p, *replay))

        return sgd_update(params, _grad(loss, params), lr)


class SequentialReplay(Strategy):
    name = "sequential_replay"
    needs_replay = True

    def step(self, params, loss_fn, batch, replay, lr, task):
        if not self._check_replay(replay, task):
            return super().step(params, loss_fn, batch, replay, lr, task)
        params = sgd_update(params, _grad(lambda p: loss_fn(p, *batch), params), lr / 2)
        return sgd_update(params, _grad(lambda p: loss_fn(p, *replay), params), lr / 2)


class SymmetricReplay(Strategy):
    name = "symmetric_replay"
    needs_replay = True

    def step(self, params, loss_fn, batch, replay, lr, task):
        if not self._check_replay(replay, task):
            return super().step(params, loss_fn, batch, replay, lr, task)
        params = sgd_update(params, _grad(lambda p: loss_fn(p, *replay), params), lr / 4)
        params = sgd_update(params, _grad(lambda p: loss_fn(p, *batch), params), lr / 2)
        return sgd_update(params, _grad(lambda p: loss_fn(p, *replay), params), lr / 4)


class AGEM(Strategy):
    name = "agem"
    needs_replay = True

    def step(self, params, loss_fn, batch, replay, lr, task):
        if not self._check_replay(replay, task):
            return super().step(params, loss_fn, batch, replay, lr, task)
        grad_new = _grad(lambda p: loss_fn(p, *batch), params)
        grad_ref = _grad(lambda p: loss_fn(p, *replay), params)
        return sgd_update(params, agem_project(grad_new, grad_ref), lr)


class EWC(Strategy):
    """EWC with one (Fisher, anchor) pair per finished task."""

    name = "ewc"

    def __init__(self, strength: float = 10.0, fisher_samples: int = 200, seed: int = 0):
        if not strength >= 0:
            raise ValueError(f"ewc: strength must be >= 0, got {strength!r}")
        if isinstance(fisher_samples, bool) or fisher_samples < 1:
            raise ValueError(f"ewc: fisher_samples must be an int >= 1, got {fisher_samples!r}")
        self.strength = float(strength)
        self.fisher_samples = int(fisher_samples)
        self.seed = seed
        self.anchors: list[tuple[Tree, Tree]] = []

    def step(self, params, loss_fn, batch, replay, lr, task):
        def loss(p):
            return loss_fn(p, *batch) + ewc_penalty(p, self.anchors, self.strength)

        return sgd_update(params, _grad(loss, params), lr)

    def end_task(self, params, loss_fn, task, x, y):
        generator = torch.Generator().manual_seed(self.seed * 1000 + task)
        index = torch.randperm(x.shape[0], generator=generator)[: self.fisher_samples]
        fisher = empirical_fisher_diagonal(loss_fn, params, x[index], y[index])
        self.anchors.append((fisher, {k: v.detach().clone() for k, v in params.items()}))

    def state_dict(self):
        return {"anchors": list(self.anchors)}

    def load_state_dict(self, state):
        self.anchors = list(state["anchors"])


class BracketPenalty(Strategy):
    name = "bracket_penalty"
    needs_replay = True

    def __init__(self, strength: float = 1.0):
        if not strength >= 0:
            raise ValueError(f"bracket_penalty: strength must be >= 0, got {strength!r}")
        self.strength = float(strength)

    def step(self, params, loss_fn, batch, replay, lr, task):
        if not self._check_replay(replay, task):
            return super().step(params, loss_fn, batch, replay, lr, task)

        def loss(p):
            base = 0.5 * (loss_fn(p, *batch) + loss_fn(p, *replay))
            order_effect = lr * lr * bracket_penalty(loss_fn, p, replay, batch)
            return base + self.strength * order_effect

        return sgd_update(params, _grad(loss, params), lr)


STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls
    for cls in (Naive, Replay, EWC, AGEM, Joint, SequentialReplay, SymmetricReplay, BracketPenalty)
}


def make_strategy(name: str, **options: Any) -> Strategy:
    """The strategy registered as ``name`` (see :data:`STRATEGIES`) with its options.

    Raises:
        ValueError: unknown name (the message lists the known ones).
    """
    if name not in STRATEGIES:
        raise ValueError(
            f"make_strategy: unknown strategy {name!r} (known: {', '.join(STRATEGIES)})"
        )
    return STRATEGIES[name](**options)
