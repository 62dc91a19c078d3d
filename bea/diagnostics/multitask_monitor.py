"""Conflict-term monitor for any multitask training loop (no file IO: it writes to a logger).

One SGD step of size ``h`` on ``L = Σ α_k L_k`` follows the gradient flow of

    L̃ = L + Σ_k (h α_k²/4) ‖∇_{ω_k} L_k‖² + (h/2) Σ_{i<j} α_i α_j ⟨∇_θ L_i, ∇_θ L_j⟩

(``θ`` shared parameters, ``ω_k`` = task ``k``'s head and ``θ``). The monitor measures
these parts on a batch, every ``every`` steps, from one gradient per task (``K``
backward passes; everything else is inner products):

- ``loss/<task>``, ``metric/<task>`` (accuracy or MSE on the batch, if ``metrics`` given);
- ``igr/<task>`` = ``(h α_k²/4) ‖∇L_k‖²``, ``igr_total``;
- ``conflict/<a>-<b>`` = ``(h/2) α_a α_b ⟨∇_θ L_a, ∇_θ L_b⟩``, ``conflict_total`` (sum over
  pairs ``a < b``), ``cosine/<a>-<b>``;
- ``grad_norm/<task>`` (shared block), ``grad_norm_ratio`` = max/min of those norms;
- ``gram``: the K×K shared Gram matrix ``⟨∇_θ L_i, ∇_θ L_j⟩`` (a nested list);
- per layer of the shared block (``layer_conflict/<layer>``, ``layer_cosine/<layer>``):
  the conflict term and the mean pairwise cosine restricted to that layer's parameters
  (layer conflicts sum to ``conflict_total``);
- running statistics: ``frac_negative_cosine/<a>-<b>`` (fraction of observations so far
  with negative cosine), ``mean_cosine/<a>-<b>`` and ``cosine_hist/<a>-<b>``, a histogram
  of the observed cosines in ``bins`` equal bins over ``[-1, 1]``.

Keys get ``prefix`` (default ``"mt/"``). Integration in a plain loop::

    monitor = MultitaskMonitor(model, task_names=("left", "right"), lr=0.1,
                               shared="trunk", logger=JsonlLogger("mt.jsonl"), every=10)
    for step, (x, y) in enumerate(loader):
        losses = monitor.task_loss_fns(x, y)          # or your own pure losses
        monitor.observe(step, losses)                 # no-op unless step % every == 0
        ...                                           # your optimizer step

``observe`` takes pure losses ``params -> scalar`` (see :func:`bea.bind`); the helper
:meth:`MultitaskMonitor.task_loss_fns` builds them for a model whose forward returns one
output per task, with ``criteria`` (cross-entropy by default) and target column ``k``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from bea.derivatives import gram_blocks, layer_groups, select_names, value_and_grad
from bea.modified import multitask_terms_from_blocks


def accuracy(outputs: Tensor, targets: Tensor) -> Tensor:
    """Fraction of rows whose arg-max equals the integer target."""
    return (outputs.argmax(dim=-1) == targets).to(torch.float64).mean()


def squared_error(outputs: Tensor, targets: Tensor) -> Tensor:
    """Mean squared error of a one-output regression head."""
    return ((outputs.reshape(targets.shape) - targets) ** 2).to(torch.float64).mean()


class MultitaskMonitor:
    """Logs the multitask modified-loss terms every ``every`` steps (state: running statistics).

    Args:
        model: the multitask model; its forward returns a tuple with one output per task.
        task_names: the K task names, in output order.
        lr: the step size ``h`` (``observe(..., lr=)`` overrides it for a schedule).
        weights: ``α`` (K,), default ones. Pass ``1/K`` for a mean reduction.
        shared: the shared parameters: names, module prefixes or a predicate
            (see :func:`bea.select_names`); default all parameters.
        logger: an object with ``log(step, dict)``; None keeps only ``last``.
        every: observe only when ``step % every == 0``. The default, 100, keeps the
            monitor under 10% of training time (``benchmarks/bench_monitors.py``): an
            observation costs K gradients, about four SGD steps of a two-task model.
        per_layer: log the per-layer breakdown.
        bins: histogram bins of the cosine over ``[-1, 1]``.
        criteria: per-task losses ``(output, target_column) -> scalar`` for
            :meth:`task_loss_fns`; default cross-entropy for all tasks.
        metrics: per-task metrics ``(output, target_column) -> scalar`` logged on the batch.
        prefix: prepended to every key.

    Raises:
        ValueError: fewer than two tasks, ``lr <= 0``, ``every < 1``, weights of the wrong
            length, or a shared selection that matches no parameter.
    """

    def __init__(
        self,
        model: nn.Module,
        task_names: Sequence[str],
        lr: float,
        *,
        weights: Sequence[float] | Tensor | None = None,
        shared: Any = None,
        logger: Any = None,
        every: int = 100,
        per_layer: bool = True,
        bins: int = 20,
        criteria: Sequence[Callable] | None = None,
        metrics: Sequence[Callable] | None = None,
        prefix: str = "mt/",
    ) -> None:
        call = "MultitaskMonitor"
        task_names = tuple(task_names)
        if len(task_names) < 2:
            raise ValueError(f"{call}: need at least 2 tasks, got {list(task_names)}")
        if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
            raise ValueError(f"{call}: lr must be > 0, got {lr!r}")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"{call}: every must be an int >= 1, got {every!r}")
        if bins < 1:
            raise ValueError(f"{call}: bins must be >= 1, got {bins!r}")
        count = len(task_names)
        alpha = (
            torch.ones(count, dtype=torch.float64)
            if weights is None
            else torch.as_tensor(weights, dtype=torch.float64)
        )
        if alpha.shape != (count,):
            raise ValueError(f"{call}: weights must have {count} entries, got {alpha.tolist()}")
        params = dict(model.named_parameters())
        self.shared_names = select_names(call, params, shared, "shared")
        self.model = model
        self.task_names = task_names
        self.lr = float(lr)
        self.alpha = alpha
        self.logger = logger
        self.every = every
        self.per_layer = per_layer
        self.bins = bins
        self.criteria = (
            list(criteria) if criteria is not None else [nn.functional.cross_entropy] * count
        )
        self.metrics = list(metrics) if metrics is not None else None
        self.prefix = prefix
        self.pairs = [(i, j) for i in range(count) for j in range(i + 1, count)]
        self.groups = {
            group: names
            for group, names in layer_groups({n: params[n] for n in self.shared_names}).items()
        }
        self.last: dict[str, Any] = {}
        self.reset_statistics()

    # ----------------------------------------------------------------- running statistics

    def reset_statistics(self) -> None:
        pairs = len(self.pairs)
        self.observations = 0
        self.negative = [0] * pairs
        self.cosine_sum = [0.0] * pairs
        self.histograms = [[0] * self.bins for _ in range(pairs)]

    def state_dict(self) -> dict[str, Any]:
        """Running statistics, for checkpoints."""
        return {
            "observations": self.observations,
            "negative": list(self.negative),
            "cosine_sum": list(self.cosine_sum),
            "histograms": [list(h) for h in self.histograms],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.observations = int(state["observations"])
        self.negative = list(state["negative"])
        self.cosine_sum = list(state["cosine_sum"])
        self.histograms = [list(h) for h in state["histograms"]]

    def _bin(self, cosine: float) -> int:
        return min(self.bins - 1, max(0, int((cosine + 1) / 2 * self.bins)))

    # ----------------------------------------------------------------- losses

    def task_loss_fns(self, inputs: Tensor, targets: Tensor) -> list[Callable]:
        """K pure losses ``params -> criteria[k](model(inputs; params)[k], targets[:, k])``.

        The model runs in eval mode (Dropout off, BatchNorm statistics read, not written).
        """
        model = self.model

        def make(k: int) -> Callable:
            def loss(params: Mapping[str, Tensor]) -> Tensor:
                was_training = model.training
                model.eval()
                try:
                    outputs = functional_call(model, dict(params), (inputs,))
                finally:
                    model.train(was_training)
                return self.criteria[k](outputs[k], targets[:, k])

            return loss

        return [make(k) for k in range(len(self.task_names))]

    def should_observe(self, step: int) -> bool:
        return step % self.every == 0

    # ----------------------------------------------------------------- observe

    def observe(
        self,
        step: int,
        losses: Sequence[Callable] | None = None,
        *,
        inputs: Tensor | None = None,
        targets: Tensor | None = None,
        lr: float | None = None,
        force: bool = False,
    ) -> dict[str, Any] | None:
        """Measure at the model's current parameters and log; None when not due.

        Give either pure ``losses`` (K callables) or ``inputs`` and ``targets`` (then
        :meth:`task_loss_fns` builds them and ``metrics`` are evaluated too).

        Returns:
            The logged values (keys with ``prefix``), also kept in ``self.last``.
        """
        if not (force or self.should_observe(step)):
            return None
        call = "MultitaskMonitor.observe"
        if losses is None:
            if inputs is None or targets is None:
                raise ValueError(f"{call}: give losses, or inputs and targets")
            losses = self.task_loss_fns(inputs, targets)
        losses = list(losses)
        if len(losses) != len(self.task_names):
            raise ValueError(f"{call}: got {len(losses)} losses for {len(self.task_names)} tasks")
        h = self.lr if lr is None else float(lr)
        if not h > 0:
            raise ValueError(f"{call}: lr must be > 0, got {lr!r}")
        params = {n: p.detach() for n, p in self.model.named_parameters()}
        values_and_grads = [value_and_grad(loss, params) for loss in losses]
        values = torch.stack([v for v, _ in values_and_grads]).detach().to(torch.float64)
        record = self.measure(values, [g for _, g in values_and_grads], h)
        if self.metrics is not None and inputs is not None and targets is not None:
            was_training = self.model.training
            self.model.eval()
            try:
                with torch.no_grad():
                    outputs = self.model(inputs)
            finally:
                self.model.train(was_training)
            for k, name in enumerate(self.task_names):
                record[f"metric/{name}"] = float(self.metrics[k](outputs[k], targets[:, k]))
        record = {self.prefix + key: value for key, value in record.items()}
        self.last = record
        if self.logger is not None:
            self.logger.log(step, record)
        return record

    def measure(self, values: Tensor, grads: Sequence[Mapping[str, Tensor]], lr: float) -> dict:
        """The record (without prefix) from task loss values and full gradients."""
        names, alpha = self.task_names, self.alpha
        # Products once per parameter, summed per group in float64; the terms come from
        # the same formulas as bea.multitask_terms.
        blocks = {n: b.to(torch.float64) for n, b in gram_blocks(grads).items()}
        terms = multitask_terms_from_blocks(values, blocks, lr, alpha, self.shared_names)
        shared_gram = terms.gram
        outer = torch.outer(alpha, alpha)
        norms = terms.grad_norms
        record: dict[str, Any] = {"lr": lr}
        for k, name in enumerate(names):
            record[f"loss/{name}"] = float(values[k])
            record[f"igr/{name}"] = float(terms.igr[k])
            record[f"grad_norm/{name}"] = float(norms[k])
        record["weighted_loss"] = float(terms.weighted_loss)
        record["igr_total"] = float(terms.igr_total)
        self.observations += 1
        for index, (i, j) in enumerate(self.pairs):
            pair = f"{names[i]}-{names[j]}"
            cosine = float(terms.cosine[i, j])
            record[f"conflict/{pair}"] = float(terms.conflict[i, j])
            record[f"cosine/{pair}"] = cosine
            self.negative[index] += int(cosine < 0)
            self.cosine_sum[index] += cosine
            self.histograms[index][self._bin(cosine)] += 1
            record[f"frac_negative_cosine/{pair}"] = self.negative[index] / self.observations
            record[f"mean_cosine/{pair}"] = self.cosine_sum[index] / self.observations
            record[f"cosine_hist/{pair}"] = list(self.histograms[index])
        record["conflict_total"] = float(terms.conflict_total)
        record["unshared_cross_total"] = float(terms.unshared_cross_total)
        record["modified_loss"] = float(terms.modified_loss)
        smallest = float(norms.min())
        record["grad_norm_ratio"] = float(norms.max()) / smallest if smallest > 0 else math.inf
        record["gram"] = shared_gram.tolist()
        if self.per_layer:
            for group, group_names in self.groups.items():
                gram = sum(blocks[n] for n in group_names)
                layer_norms = torch.sqrt(torch.clamp(torch.diagonal(gram), min=0))
                layer_total, cosines = 0.0, []
                for i, j in self.pairs:
                    layer_total += float((lr / 2) * outer[i, j] * gram[i, j])
                    denominator = float(layer_norms[i] * layer_norms[j])
                    cosines.append(float(gram[i, j]) / denominator if denominator > 0 else 0.0)
                record[f"layer_conflict/{group}"] = layer_total
                record[f"layer_cosine/{group}"] = sum(cosines) / len(cosines)
        return record

    def summary(self) -> dict[str, float]:
        """Running statistics so far: fraction of negative cosines and mean cosine per pair."""
        out: dict[str, float] = {"observations": float(self.observations)}
        for index, (i, j) in enumerate(self.pairs):
            pair = f"{self.task_names[i]}-{self.task_names[j]}"
            n = max(self.observations, 1)
            out[f"frac_negative_cosine/{pair}"] = self.negative[index] / n
            out[f"mean_cosine/{pair}"] = self.cosine_sum[index] / n
        return out
