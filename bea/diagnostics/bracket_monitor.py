"""Lie-bracket diagnostics for any (continual) training loop.

Two consecutive SGD steps on batch losses ``L_a`` then ``L_b`` follow, to second
order in the learning rate ``h``, the flow of

    -(g_a + g_b) - (h/2)(H_a g_a + H_b g_b) + (h/2)[g_a, g_b],
    [g_a, g_b] = H_b g_a - H_a g_b

(design notes §1.3, Theorem 4.2). The bracket is exactly how much the order of the
two steps matters, ``θ_(a→b) - θ_(b→a) = h²[g_a, g_b] + O(h³)``, and it moves ``L_a``
at rate ``(h/2)⟨g_a, [g_a, g_b]⟩`` along the modified flow. Remark 4.3 of the paper
conjectures that brackets are small between batches of one task and large across a
task switch, which would tie them to catastrophic forgetting and to the stability
gap (De Lange et al., 2023).

What one step on a new batch does to an old task's loss (design notes §1.5):

    L_old(θ + d) - L_old(θ) = ⟨∇L_old, d⟩ + ½ dᵀ H_old d + rest,   d = -h g_new,

so the first-order part is ``-h⟨∇L_old, g_new⟩``, the curvature part
``(h²/2) g_newᵀ H_old g_new`` and ``rest = O(h³)`` for a smooth loss. With ReLU a step
that flips units breaks the expansion; the monitor counts flipped units when given
a counter and flags predictions outside their range of validity.

:func:`bracket_step_diagnostics` is the pure computation for one step;
:class:`BracketMonitor` schedules it (every ``every`` steps and always around task
switches), keeps within-task and cross-task running statistics apart, and writes
through a logger (any object with ``log(step, values)``); it never opens files.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from bea._checks import check_callable, check_lr, check_params
from bea._tree import tree_add, tree_dot, tree_norm, tree_scale, tree_sub
from bea.derivatives import grad, hvp, lie_bracket

__all__ = ["bracket_step_diagnostics", "BracketMonitor", "STAT_KEYS"]

#: Quantities whose running mean and standard deviation the monitor keeps per group.
STAT_KEYS = (
    "bracket_norm",
    "bracket_relative",
    "bracket_push",
    "grad_cosine",
    "order_effect_error",
    "delta_measured",
    "delta_first_order",
    "delta_curvature",
    "delta_rest",
    "units_switched",
    "old_bracket_norm",
    "old_bracket_relative",
    "old_bracket_push",
)


def _value(loss: Callable, params: Mapping[str, Tensor]) -> float:
    with torch.no_grad():
        return float(loss(params))


def _bracket_stats(
    loss_a: Callable, loss_b: Callable, params, prefix: str, mode: str = "fused"
) -> tuple[dict, Any]:
    """Norm, relative size and push ``⟨g_a, [g_a, g_b]⟩`` of the bracket at ``params``."""
    result = lie_bracket(loss_a, loss_b, params, mode=mode, return_grads=True)
    norm_a = float(tree_norm(result.grad_a))
    norm_b = float(tree_norm(result.grad_b))
    norm = float(tree_norm(result.bracket))
    scale = norm_a * norm_b
    stats = {
        f"{prefix}bracket_norm": norm,
        f"{prefix}bracket_relative": norm / scale if scale > 0 else math.nan,
        f"{prefix}bracket_push": float(tree_dot(result.grad_a, result.bracket)),
    }
    return stats, result


def bracket_step_diagnostics(
    previous_loss: Callable,
    batch_loss: Callable,
    params: Mapping[str, Tensor],
    lr: float,
    *,
    old_loss: Callable | None = None,
    displacement: Mapping[str, Tensor] | None = None,
    count_switches: Callable | None = None,
    order_effect: bool = True,
    validity_ratio: float = 0.5,
) -> dict[str, Any]:
    """Bracket, order effect and old-loss change for the step on ``batch_loss`` at ``params``.

    Quantities (``g_a = ∇previous_loss``, ``g_b = ∇batch_loss``, both at ``params``):

    - ``bracket_norm = ‖[g_a, g_b]‖``, ``bracket_relative = ‖[g_a, g_b]‖ / (‖g_a‖ ‖g_b‖)``,
      ``bracket_push = ⟨g_a, [g_a, g_b]⟩``, ``grad_cosine``, ``grad_norm_a``, ``grad_norm_b``.
    - Order effect: ``order_effect_predicted = h²‖[g_a, g_b]‖`` against the measured
      ``‖θ_(a→b) - θ_(b→a)‖``, their relative error ``‖meas - h²[g_a, g_b]‖ / ‖meas‖``,
      and ``order_loss_predicted = h²⟨g_a, [g_a, g_b]⟩`` against the measured
      ``L_a(θ_(a→b)) - L_a(θ_(b→a))``.
    - Change of the old loss ``L_old`` (``old_loss``, default ``previous_loss``) over the
      step ``d`` (``displacement``, default ``-h g_b``): ``delta_measured``,
      ``delta_first_order = ⟨∇L_old, d⟩``, ``delta_curvature = ½ dᵀ H_old d``,
      ``delta_rest = measured - first - curvature``; they sum to the measured change.
    - With ``old_loss`` given, also the bracket of ``(L_old, batch_loss)``:
      ``old_bracket_norm``, ``old_bracket_relative``, ``old_bracket_push``.
    - ``units_switched = count_switches(params, params + d)`` when a counter is given.
    - ``flags``: ``"units_switched"`` (a ReLU pattern changed: the smooth expansion does
      not apply), ``"remainder"`` (``|rest| > validity_ratio (|first| + |curvature|)``),
      ``"order_remainder"`` (order-effect relative error ``> validity_ratio``);
      ``valid`` is true when there is no flag.

    Args:
        previous_loss: the loss of the batch used in the previous step (``L_a``).
        batch_loss: the loss of the batch about to be used (``L_b``).
        params: the parameters before the step.
        lr: the step size ``h`` (> 0).

    Returns:
        A flat dict of floats, plus ``flags`` (a string) and ``valid`` (a bool).

    Raises:
        TypeError/ValueError: naming ``bracket_step_diagnostics`` and the bad value.
    """
    call = "bracket_step_diagnostics"
    params = check_params(call, params)
    h = check_lr(call, lr)
    check_callable(call, previous_loss, "previous_loss")
    check_callable(call, batch_loss, "batch_loss")
    if old_loss is not None:
        check_callable(call, old_loss, "old_loss")
    if not (isinstance(validity_ratio, (int, float)) and validity_ratio > 0):
        raise ValueError(f"{call}: validity_ratio must be a number > 0, got {validity_ratio!r}")

    # In the common case (old task = previous batch, step = −h g_b) the curvature part
    # ½ h² g_bᵀ H_a g_b uses the product H_a g_b that the bracket's reverse mode forms
    # anyway, which saves a Hessian-vector product per measurement.
    reuse_products = old_loss is None and displacement is None
    record, pair = _bracket_stats(
        previous_loss, batch_loss, params, "", mode="reverse" if reuse_products else "fused"
    )
    g_a, g_b = pair.grad_a, pair.grad_b
    norm_a, norm_b = float(tree_norm(g_a)), float(tree_norm(g_b))
    record["grad_norm_a"] = norm_a
    record["grad_norm_b"] = norm_b
    record["grad_cosine"] = (
        float(tree_dot(g_a, g_b)) / (norm_a * norm_b) if norm_a * norm_b > 0 else math.nan
    )
    flags = []

    if order_effect:
        theta_a = tree_add(params, tree_scale(g_a, -h))
        theta_ab = tree_add(theta_a, tree_scale(grad(batch_loss, theta_a), -h))
        theta_b = tree_add(params, tree_scale(g_b, -h))
        theta_ba = tree_add(theta_b, tree_scale(grad(previous_loss, theta_b), -h))
        measured = tree_sub(theta_ab, theta_ba)
        predicted = tree_scale(pair.bracket, h * h)
        measured_norm = float(tree_norm(measured))
        error = float(tree_norm(tree_sub(measured, predicted)))
        record["order_effect_predicted"] = h * h * record["bracket_norm"]
        record["order_effect_measured"] = measured_norm
        record["order_effect_error"] = error / measured_norm if measured_norm > 0 else math.nan
        record["order_loss_predicted"] = h * h * record["bracket_push"]
        record["order_loss_measured"] = _value(previous_loss, theta_ab) - _value(
            previous_loss, theta_ba
        )
        if record["order_effect_error"] > validity_ratio:
            flags.append("order_remainder")

    if old_loss is not None:
        old_stats, old_pair = _bracket_stats(old_loss, batch_loss, params, "old_")
        record.update(old_stats)
        g_old = old_pair.grad_a
        target = old_loss
    else:
        g_old = g_a
        target = previous_loss
    if displacement is None:
        step = tree_scale(g_b, -h)
    else:
        step = {k: v.to(params[k].dtype) for k, v in displacement.items()}
        if step.keys() != params.keys():
            raise ValueError(f"{call}: displacement must have the keys of params")
    after = tree_add(params, step)
    before_value = _value(target, params)
    first = float(tree_dot(g_old, step))
    if reuse_products:
        curvature = 0.5 * h * h * float(tree_dot(g_b, pair.products[1]))
    else:
        curvature = 0.5 * float(tree_dot(step, hvp(target, params, step, mode="reverse")))
    measured_change = _value(target, after) - before_value
    record["old_loss"] = before_value
    record["delta_measured"] = measured_change
    record["delta_first_order"] = first
    record["delta_curvature"] = curvature
    record["delta_rest"] = measured_change - first - curvature
    if abs(record["delta_rest"]) > validity_ratio * (abs(first) + abs(curvature)):
        flags.append("remainder")
    if count_switches is not None:
        switched = int(count_switches(params, after))
        record["units_switched"] = switched
        if switched > 0:
            flags.append("units_switched")
    numbers = [v for v in record.values() if isinstance(v, float)]
    if not all(math.isfinite(v) for v in numbers):
        # A NaN compares false with every threshold above: say so instead of passing it.
        flags.append("non_finite")
    record["flags"] = ",".join(flags)
    record["valid"] = not flags
    return record


class _RunningStats:
    """Welford mean and variance per key (state: plain numbers, so it checkpoints)."""

    def __init__(self, state: dict | None = None):
        self.state: dict[str, list[float]] = {} if state is None else dict(state)

    def add(self, key: str, value: float) -> None:
        if value is None or not math.isfinite(value):
            return
        n, mean, m2 = self.state.get(key, [0, 0.0, 0.0])
        n += 1
        delta = value - mean
        mean += delta / n
        m2 += delta * (value - mean)
        self.state[key] = [n, mean, m2]

    def summary(self) -> dict[str, dict[str, float]]:
        out = {}
        for key, (n, mean, m2) in self.state.items():
            std = math.sqrt(m2 / (n - 1)) if n > 1 else math.nan
            out[key] = {"count": int(n), "mean": mean, "std": std}
        return out


class BracketMonitor:
    """Schedule :func:`bracket_step_diagnostics` in a training loop and keep statistics.

    Call :meth:`observe` once per step, *before* the parameter update, with the
    loss of the batch about to be used and its task. A measurement pairs this batch
    with the previous step's batch. It runs every ``every`` steps, at every detected
    task switch and the ``around − 1`` steps after it (``around`` steps in all), and
    for ``around`` steps before
    each step listed in ``switch_steps`` (a known schedule). Pairs from two different
    tasks go to the ``cross`` statistics, pairs from one task to ``within``.

    Example::

        monitor = BracketMonitor(lr=0.1, every=20, logger=MemoryLogger())
        for step, (x, y, task) in enumerate(stream):
            loss = bea.bind(model, criterion, x, y)
            monitor.observe(step, bea.params_of(model), loss, task)
            ...  # the usual optimizer step
        monitor.summary()["ratio"]["bracket_relative"]  # cross / within, Remark 4.3

    Args:
        lr: the SGD step size ``h`` used for the predictions.
        every: steps between regular measurements (>= 1). A measurement costs about ten
            gradients; the default, 500, with ``around=3`` keeps the monitor under 10%
            of training time when tasks last 500 steps or more
            (``benchmarks/bench_monitors.py``). Lower it for denser within-task
            statistics, at that price.
        around: steps measured after a detected switch and before a known one.
        switch_steps: steps at which a new task starts, if known in advance.
        logger: object with ``log(step, values)``; records are prefixed by ``prefix``.
        count_switches: ``(params_before, params_after) -> int`` units that changed
            activation pattern over the step (for ReLU-like models).
        order_effect: also measure the order effect (4 more gradients; off by default).
        validity_ratio: threshold of the validity flags.
        keep_records: keep every record in ``self.records`` (a list of dicts).
    """

    def __init__(
        self,
        lr: float,
        *,
        every: int = 500,
        around: int = 3,
        switch_steps: Sequence[int] = (),
        logger=None,
        prefix: str = "bracket/",
        count_switches: Callable | None = None,
        order_effect: bool = False,
        validity_ratio: float = 0.5,
        keep_records: bool = True,
    ):
        call = "BracketMonitor"
        self.lr = check_lr(call, lr)
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"{call}: every must be an int >= 1, got {every!r}")
        if isinstance(around, bool) or not isinstance(around, int) or around < 0:
            raise ValueError(f"{call}: around must be an int >= 0, got {around!r}")
        if logger is not None and not callable(getattr(logger, "log", None)):
            raise TypeError(f"{call}: logger must have a log(step, values) method, got {logger!r}")
        self.every = every
        self.around = around
        self.switch_steps = sorted(int(s) for s in switch_steps)
        self.logger = logger
        self.prefix = prefix
        self.count_switches = count_switches
        self.order_effect = order_effect
        self.validity_ratio = validity_ratio
        self.keep_records = keep_records
        self._previous: tuple[Callable, Any] | None = None
        self._steps_since_switch: int | None = None
        self._stats = {"within": _RunningStats(), "cross": _RunningStats(), "old": _RunningStats()}
        self._invalid = {"within": 0, "cross": 0}
        self.records: list[dict[str, Any]] = []

    def remember(self, batch_loss: Callable, task) -> None:
        """Set the previous batch without measuring (e.g. after resuming from a checkpoint)."""
        self._previous = (check_callable("BracketMonitor.remember", batch_loss, "batch_loss"), task)

    def due(self, step: int, task) -> bool:
        """Whether :meth:`observe` at ``step`` with ``task`` will measure."""
        if self._previous is None:
            return False
        if self._previous[1] != task:
            return True
        since = self._steps_since_switch
        if since is not None and since + 1 < self.around:
            return True
        if any(s - self.around <= step < s for s in self.switch_steps):
            return True
        return step % self.every == 0

    def observe(
        self,
        step: int,
        params: Mapping[str, Tensor],
        batch_loss: Callable,
        task,
        *,
        old_loss: Callable | None = None,
        old_task=None,
        displacement: Mapping[str, Tensor] | None = None,
    ) -> dict[str, Any] | None:
        """Measure if due, update the statistics and the logger; remember this batch.

        ``old_loss`` (of task ``old_task``) is the old task whose loss change is
        decomposed; by default the previous batch. Returns the record or ``None``.
        """
        check_callable("BracketMonitor.observe", batch_loss, "batch_loss")
        record = None
        if self.due(step, task):
            previous_loss, previous_task = self._previous
            record = bracket_step_diagnostics(
                previous_loss,
                batch_loss,
                params,
                self.lr,
                old_loss=old_loss,
                displacement=displacement,
                count_switches=self.count_switches,
                order_effect=self.order_effect,
                validity_ratio=self.validity_ratio,
            )
            cross = previous_task != task
            group = "cross" if cross else "within"
            record["cross_task"] = cross
            record["task"] = task if isinstance(task, (int, str)) else str(task)
            record["steps_since_switch"] = (
                0
                if cross
                else (-1 if self._steps_since_switch is None else self._steps_since_switch + 1)
            )
            for key in STAT_KEYS:
                if key.startswith("old_"):
                    continue
                self._stats[group].add(key, record.get(key))
            if old_loss is not None and old_task is not None and old_task != task:
                for key in ("old_bracket_norm", "old_bracket_relative", "old_bracket_push"):
                    self._stats["old"].add(key, record.get(key))
            if not record["valid"]:
                self._invalid[group] += 1
            if self.keep_records:
                self.records.append({"step": step, **record})
            if self.logger is not None:
                self.logger.log(step, {f"{self.prefix}{k}": v for k, v in record.items()})
        if self._previous is not None and self._previous[1] != task:
            self._steps_since_switch = 0
        elif self._steps_since_switch is not None:
            self._steps_since_switch += 1
        self._previous = (batch_loss, task)
        return record

    def summary(self) -> dict[str, Any]:
        """Running statistics per group and the cross/within ratio of the means.

        Returns ``{"within": {key: {count, mean, std}}, "cross": {...}, "old": {...},
        "ratio": {key: cross mean / within mean}, "invalid": {group: count}}``.
        """
        within = self._stats["within"].summary()
        cross = self._stats["cross"].summary()
        ratio = {}
        for key in ("bracket_norm", "bracket_relative"):
            if key in within and key in cross and within[key]["mean"] != 0:
                ratio[key] = cross[key]["mean"] / within[key]["mean"]
        return {
            "within": within,
            "cross": cross,
            "old": self._stats["old"].summary(),
            "ratio": ratio,
            "invalid": dict(self._invalid),
        }

    def state_dict(self) -> dict[str, Any]:
        """Plain-data state for checkpoints (the previous batch is not included)."""
        return {
            "steps_since_switch": self._steps_since_switch,
            "stats": {g: dict(s.state) for g, s in self._stats.items()},
            "invalid": dict(self._invalid),
            "previous_task": None if self._previous is None else self._previous[1],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; call :meth:`remember` for the previous batch."""
        self._steps_since_switch = state["steps_since_switch"]
        self._stats = {g: _RunningStats(s) for g, s in state["stats"].items()}
        self._invalid = dict(state["invalid"])
