"""The multitask experiment: train a shared-trunk network with one method, log the
conflict term along the way, evaluate on the test set, report.

``bea run multitask --preset quick`` runs it (see :mod:`bea.experiments.runner` for the
protocol). What one run does:

1. builds the data set (``data.dataset``: ``multi_digits``, ``multi_mnist_5k``,
   ``conflict_regression``) and a :func:`bea.experiments.models.multitask_mlp`, both
   seeded by ``seed``;
2. trains ``train.steps`` steps of SGD (step ``h = train.lr``) on mini-batches drawn
   from a seeded permutation per epoch, with the update given by ``method``
   (:mod:`bea.experiments.methods`) on ``L = Σ α_k L_k`` (``α`` from ``train.weights``
   and ``train.reduction``);
3. every ``monitor.every`` steps, after the update (and at step 0), a
   :class:`bea.diagnostics.multitask_monitor.MultitaskMonitor` measures the loss, IGR,
   conflict term, cosines, Gram matrix and per-layer breakdown on a fixed probe batch
   (``monitor.probe_size`` training examples chosen by the seed; see :func:`probe_batch`),
   so the curves are not batch noise and a checkpoint can be re-measured exactly;
4. every ``monitor.eval_every`` steps evaluates test loss and metric per task
   (accuracy for classification, MSE for regression);
5. logs ``train/...`` batch losses every ``run.log_every`` steps, the flow time
   ``t = h × step`` with each monitor record, and checkpoints per ``run``.

Metric keys: ``mt/...`` (monitor, see its module), ``test/loss/<task>``,
``test/acc/<task>`` or ``test/mse/<task>``, ``test/mean_metric``, ``train/loss/<task>``,
``train/weighted_loss``, ``flow_time``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from bea.experiments.config import ExperimentConfig, fail
from bea.experiments.methods import METHODS, STRENGTH_METHODS, make_method, task_weights

KIND = "multitask"
DATASETS = ("multi_digits", "multi_mnist_5k", "conflict_regression")
COMPARE_KEYS = [
    "mt/conflict_total",
    "mt/cosine/left-right",
    "mt/cosine/task0-task1",
    "test/mean_metric",
    "train/weighted_loss",
]


@dataclass(kw_only=True)
class DataSettings:
    """``[data]``: which data set, and its size.

    ``num_train``/``num_test`` = 0 keep the data set's default size. ``downscale`` is
    for ``multi_mnist_5k`` (28x56 images pooled by it); ``num_tasks``, ``conflict``,
    ``noise``, ``nonlinear``, ``in_features`` for ``conflict_regression``.
    """

    dataset: Literal["multi_digits", "multi_mnist_5k", "conflict_regression"] = "multi_digits"
    num_train: int = 0
    num_test: int = 0
    downscale: int = 2
    num_tasks: int = 2
    conflict: float = 0.5
    noise: float = 0.1
    nonlinear: bool = True
    in_features: int = 16

    def validate(self, path: str = "data") -> None:
        for name in ("num_train", "num_test"):
            if getattr(self, name) < 0:
                raise fail(f"{path}.{name}", "must be >= 0 (0 = default size)", getattr(self, name))
        if self.downscale not in (1, 2, 4, 7, 14, 28):
            raise fail(f"{path}.downscale", "must divide 28", self.downscale)
        if self.num_tasks < 2:
            raise fail(f"{path}.num_tasks", "must be >= 2", self.num_tasks)
        if not 0.0 <= self.conflict <= 1.0:
            raise fail(f"{path}.conflict", "must be in [0, 1]", self.conflict)
        if self.noise < 0:
            raise fail(f"{path}.noise", "must be >= 0", self.noise)


@dataclass(kw_only=True)
class ModelSettings:
    """``[model]``: an MLP trunk with ``hidden`` widths and one head per task.

    ``shared`` names the shared parameters (names or module prefixes); the default
    ``["trunk"]`` is the whole trunk.
    """

    hidden: list[int] = field(default_factory=lambda: [64, 64])
    head_hidden: list[int] = field(default_factory=list)
    activation: Literal["tanh", "gelu", "softplus", "relu", "sigmoid", "silu", "elu"] = "tanh"
    shared: list[str] = field(default_factory=lambda: ["trunk"])

    def validate(self, path: str = "model") -> None:
        if not self.hidden:
            raise fail(
                f"{path}.hidden", "must have at least one width (the shared trunk)", self.hidden
            )
        for width in self.hidden + self.head_hidden:
            if width < 1:
                raise fail(f"{path}.hidden", "widths must be >= 1", width)
        if not self.shared:
            raise fail(f"{path}.shared", "must select at least one parameter", self.shared)


@dataclass(kw_only=True)
class TrainSettings:
    """``[train]``: SGD with step ``lr`` for ``steps`` steps of ``batch_size`` examples.

    ``weights`` are the task weights ``w`` (empty = ones) and ``reduction`` sets
    ``α = w`` (``sum``) or ``α = w / K`` (``mean``).
    """

    lr: float = 0.1
    steps: int = 300
    batch_size: int = 64
    momentum: float = 0.0
    weights: list[float] = field(default_factory=list)
    reduction: Literal["sum", "mean"] = "sum"

    def validate(self, path: str = "train") -> None:
        if not self.lr > 0:
            raise fail(f"{path}.lr", "must be > 0", self.lr)
        if self.steps < 1:
            raise fail(f"{path}.steps", "must be >= 1", self.steps)
        if self.batch_size < 1:
            raise fail(f"{path}.batch_size", "must be >= 1", self.batch_size)
        if not 0 <= self.momentum < 1:
            raise fail(f"{path}.momentum", "must be in [0, 1)", self.momentum)


@dataclass(kw_only=True)
class MethodSettings:
    """``[method]``: the update rule (see :mod:`bea.experiments.methods`).

    ``strength`` is ``k`` for ``conflict`` (required), the coefficient for ``igr``
    (default 1) and ``align`` (default 0.1); other methods take none.
    """

    name: str = "sgd"
    strength: float | None = None

    def validate(self, path: str = "method") -> None:
        if self.name not in METHODS:
            raise fail(f"{path}.name", f"must be one of {', '.join(METHODS)}", self.name)
        if self.name == "conflict" and self.strength is None:
            raise fail(
                f"{path}.strength",
                "is required for method 'conflict' (k; -1 cancels)",
                self.strength,
            )
        if self.name == "cancel" and self.strength not in (None, -1.0):
            raise fail(
                f"{path}.strength",
                "contradicts method 'cancel' (which fixes k = -1)",
                self.strength,
            )
        takes = self.name in STRENGTH_METHODS or self.name == "cancel"
        if not takes and self.strength is not None:
            raise fail(f"{path}.strength", f"does not apply to method {self.name!r}", self.strength)


@dataclass(kw_only=True)
class MonitorSettings:
    """``[monitor]``: conflict-term measurements every ``every`` steps on a fixed probe
    batch of ``probe_size`` training examples; test evaluation every ``eval_every``
    steps on ``eval_size`` test examples (0 = all)."""

    every: int = 10
    probe_size: int = 256
    eval_every: int = 50
    eval_size: int = 0
    per_layer: bool = True
    bins: int = 20

    def validate(self, path: str = "monitor") -> None:
        for name in ("every", "probe_size", "eval_every", "bins"):
            if getattr(self, name) < 1:
                raise fail(f"{path}.{name}", "must be >= 1", getattr(self, name))
        if self.eval_size < 0:
            raise fail(f"{path}.eval_size", "must be >= 0 (0 = whole test set)", self.eval_size)


@dataclass(kw_only=True)
class MultitaskConfig(ExperimentConfig):
    """A multitask run: ``[data]``, ``[model]``, ``[train]``, ``[method]``, ``[monitor]``."""

    KIND: ClassVar[str] = KIND

    data: DataSettings = field(default_factory=DataSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    method: MethodSettings = field(default_factory=MethodSettings)
    monitor: MonitorSettings = field(default_factory=MonitorSettings)

    @property
    def num_tasks(self) -> int:
        return self.data.num_tasks if self.data.dataset == "conflict_regression" else 2

    def validate(self) -> None:
        super().validate()
        if self.train.weights and len(self.train.weights) != self.num_tasks:
            raise fail(
                "train.weights",
                f"must have one weight per task ({self.num_tasks})",
                self.train.weights,
            )
        if self.monitor.every > self.train.steps:
            raise fail(
                "monitor.every",
                f"is larger than train.steps = {self.train.steps}",
                self.monitor.every,
            )
        if self.data.num_train and self.train.batch_size > self.data.num_train:
            raise fail(
                "train.batch_size",
                f"exceeds data.num_train = {self.data.num_train}",
                self.train.batch_size,
            )
        if self.data.num_train and self.monitor.probe_size > self.data.num_train:
            raise fail(
                "monitor.probe_size",
                f"exceeds data.num_train = {self.data.num_train}",
                self.monitor.probe_size,
            )


CONFIG_CLASS = MultitaskConfig


# --------------------------------------------------------------------------- building


def torch_dtype(config: MultitaskConfig) -> torch.dtype:
    return torch.float64 if config.run.dtype == "float64" else torch.float32


def build_data(config: MultitaskConfig) -> Any:
    """The seeded :class:`MultitaskData` of the config (flattened inputs)."""
    from bea.experiments import data as datasets

    d, dtype = config.data, torch_dtype(config)
    sizes = {}
    if d.num_train:
        sizes["num_train"] = d.num_train
    if d.num_test:
        sizes["num_test"] = d.num_test
    if d.dataset == "multi_digits":
        return datasets.multi_digits(config.seed, flatten=True, dtype=dtype, **sizes)
    if d.dataset == "multi_mnist_5k":
        return datasets.multi_mnist_5k(
            config.seed, downscale=d.downscale, flatten=True, dtype=dtype, **sizes
        )
    return datasets.conflict_regression(
        d.num_tasks,
        d.conflict,
        config.seed,
        in_features=d.in_features,
        noise=d.noise,
        nonlinear=d.nonlinear,
        dtype=dtype,
        **sizes,
    )


def build_model(config: MultitaskConfig, data: Any) -> nn.Module:
    from bea.experiments.models import multitask_mlp

    model = multitask_mlp(
        int(data.x_train[0].numel()),
        dict(zip(data.task_names, data.num_classes_per_task, strict=True)),
        hidden=tuple(config.model.hidden),
        head_hidden=tuple(config.model.head_hidden),
        activation=config.model.activation,
        seed=config.seed,
    )
    return model.to(torch_dtype(config))


def shared_and_heads(model: nn.Module, selection: list[str], task_names) -> tuple[list, list]:
    """Names of the shared parameters and of the rest, checking every task uses the shared block.

    Raises:
        ValueError: the selection matches nothing, or includes every parameter of a task
            (so tasks would share nothing), or covers no parameter that all tasks use.
    """
    from bea.derivatives import select_names

    params = dict(model.named_parameters())
    shared = select_names("multitask", params, selection, "model.shared")
    heads = [n for n in params if n not in set(shared)]
    for name in task_names:
        head = [n for n in shared if n.startswith(f"heads.{name}.")]
        if head:
            raise ValueError(
                f"multitask: model.shared={selection!r} includes parameters of task {name!r}'s "
                f"head ({head[0]}); shared parameters must be used by every task"
            )
    return shared, heads


def check_tasks_share(
    model: nn.Module, shared: list[str], inputs: Tensor, targets: Tensor, criteria
) -> None:
    """Raise if some task's loss does not depend on any shared parameter."""
    params = dict(model.named_parameters())
    chosen = [params[n] for n in shared]
    outputs = model(inputs)
    for k, name in enumerate(_task_names(model)):
        loss = criteria[k](outputs[k], targets[:, k])
        grads = torch.autograd.grad(loss, chosen, retain_graph=True, allow_unused=True)
        if all(g is None for g in grads):
            raise ValueError(
                f"multitask: task {name!r} has no shared parameters: its loss does not depend "
                f"on any of model.shared = {shared[:4]}"
            )


def _task_names(model: nn.Module) -> tuple[str, ...]:
    return tuple(model.task_names)


def criteria_for(data: Any) -> list:
    if data.kind == "classification":
        return [nn.functional.cross_entropy] * data.num_tasks
    return [_mse] * data.num_tasks


def _mse(outputs: Tensor, targets: Tensor) -> Tensor:
    return ((outputs.reshape(targets.shape) - targets) ** 2).mean()


def metrics_for(data: Any) -> list:
    from bea.diagnostics.multitask_monitor import accuracy, squared_error

    return [accuracy if data.kind == "classification" else squared_error] * data.num_tasks


def probe_batch(config: MultitaskConfig, data: Any) -> tuple[Tensor, Tensor]:
    """The fixed training examples the monitor measures on (seeded by ``seed``)."""
    n = data.x_train.shape[0]
    size = min(config.monitor.probe_size, n)
    generator = torch.Generator().manual_seed(config.seed + 7919)
    index = torch.randperm(n, generator=generator)[:size].sort().values
    return data.x_train[index], data.y_train[index]


def eval_batch(config: MultitaskConfig, data: Any) -> tuple[Tensor, Tensor]:
    n = data.x_test.shape[0]
    if not config.monitor.eval_size or config.monitor.eval_size >= n:
        return data.x_test, data.y_test
    generator = torch.Generator().manual_seed(config.seed + 104729)
    index = torch.randperm(n, generator=generator)[: config.monitor.eval_size].sort().values
    return data.x_test[index], data.y_test[index]


def task_losses(model: nn.Module, inputs: Tensor, targets: Tensor, criteria) -> Tensor:
    outputs = model(inputs)
    return torch.stack([criteria[k](outputs[k], targets[:, k]) for k in range(len(outputs))])


@torch.no_grad()
def evaluate(model: nn.Module, data: Any, inputs: Tensor, targets: Tensor) -> dict[str, float]:
    """Test loss and metric per task, and their mean metric."""
    criteria, metrics = criteria_for(data), metrics_for(data)
    outputs = model(inputs)
    name = "acc" if data.kind == "classification" else "mse"
    record: dict[str, float] = {}
    values = []
    for k, task in enumerate(data.task_names):
        record[f"test/loss/{task}"] = float(criteria[k](outputs[k], targets[:, k]))
        value = float(metrics[k](outputs[k], targets[:, k]))
        record[f"test/{name}/{task}"] = value
        values.append(value)
    record["test/mean_metric"] = sum(values) / len(values)
    return record


class BatchStream:
    """Mini-batches from a seeded permutation per epoch (state: generator, order, position)."""

    def __init__(self, x: Tensor, y: Tensor, batch_size: int, seed: int) -> None:
        self.x, self.y, self.batch_size = x, y, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.order = torch.randperm(x.shape[0], generator=self.generator)
        self.position = 0
        self.epoch = 0

    def next(self) -> tuple[Tensor, Tensor]:
        if self.position + self.batch_size > self.order.numel():
            self.order = torch.randperm(self.x.shape[0], generator=self.generator)
            self.position = 0
            self.epoch += 1
        index = self.order[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        return self.x[index], self.y[index]

    def state_dict(self) -> dict[str, Any]:
        return {
            "generator": self.generator.get_state(),
            "order": self.order.clone(),
            "position": self.position,
            "epoch": self.epoch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.order = state["order"].clone()
        self.position = int(state["position"])
        self.epoch = int(state["epoch"])


# --------------------------------------------------------------------------- run


def run(config: MultitaskConfig, ctx: Any) -> dict[str, Any]:
    """Train and evaluate one multitask run (the runner protocol of :mod:`bea.experiments.runner`)."""
    from bea.diagnostics.multitask_monitor import MultitaskMonitor

    data = build_data(config)
    model = build_model(config, data)
    criteria = criteria_for(data)
    shared, heads = shared_and_heads(model, config.model.shared, data.task_names)
    probe_x, probe_y = probe_batch(config, data)
    check_tasks_share(model, shared, probe_x[:8], probe_y[:8], criteria)
    test_x, test_y = eval_batch(config, data)
    if config.train.batch_size > data.x_train.shape[0]:
        raise ValueError(
            f"multitask: train.batch_size = {config.train.batch_size} exceeds the "
            f"{data.x_train.shape[0]} training examples"
        )
    alpha = task_weights(config.train.weights, data.num_tasks, config.train.reduction)
    params = dict(model.named_parameters())
    shared_params = [params[n] for n in shared]
    head_params = [params[n] for n in heads]
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.train.lr, momentum=config.train.momentum
    )
    update = make_method(
        config.method.name, strength=config.method.strength, num_tasks=data.num_tasks
    )
    stream = BatchStream(data.x_train, data.y_train, config.train.batch_size, config.seed + 1)
    monitor = MultitaskMonitor(
        model,
        data.task_names,
        config.train.lr,
        weights=alpha,
        shared=shared,
        logger=ctx.logger,
        every=config.monitor.every,
        per_layer=config.monitor.per_layer,
        bins=config.monitor.bins,
        criteria=criteria,
        metrics=metrics_for(data),
    )
    lr, steps = config.train.lr, config.train.steps
    timing = {"train_seconds": 0.0, "monitor_seconds": 0.0, "monitor_calls": 0}
    if ctx.resume_state is not None:
        state = ctx.resume_state
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        stream.load_state_dict(state["stream"])
        monitor.load_state_dict(state["monitor"])
        if state.get("aggregator") is not None:  # stateful aggregators (GradVac, Nash-MTL)
            update.aggregator = state["aggregator"]  # type: ignore[attr-defined]
    else:
        _observe(monitor, ctx, 0, probe_x, probe_y, lr, timing)
        ctx.log(0, evaluate(model, data, test_x, test_y))
    ctx.restore_rng()
    ctx.start_progress(steps)
    for step in range(ctx.start_step + 1, steps + 1):
        x, y = stream.next()
        started = time.perf_counter()
        losses = task_losses(model, x, y, criteria)
        values = losses.detach()
        bad = [k for k in range(values.shape[0]) if not math.isfinite(float(values[k]))]
        if bad:
            name = data.task_names[bad[0]]
            raise ctx.diverged(step, f"the training loss of task {name!r}", float(values[bad[0]]))
        grads, info = update(losses, alpha, shared_params, head_params, lr)
        optimizer.zero_grad(set_to_none=True)
        for p, g in zip(shared_params + head_params, grads, strict=True):
            p.grad = g.detach()
        optimizer.step()
        if not all(bool(torch.isfinite(p).all()) for p in shared_params + head_params):
            raise ctx.diverged(step, "a parameter after the update", "non-finite")
        timing["train_seconds"] += time.perf_counter() - started
        weighted = float((alpha.to(values.dtype) * values).sum())
        if step % config.run.log_every == 0:
            record = {f"train/loss/{t}": float(values[k]) for k, t in enumerate(data.task_names)}
            record["train/weighted_loss"] = weighted
            record.update({f"train/{key}": value for key, value in info.items()})
            ctx.log(step, record)
        if monitor.should_observe(step):
            _observe(monitor, ctx, step, probe_x, probe_y, lr, timing)
        if step % config.monitor.eval_every == 0 or step == steps:
            ctx.log(step, evaluate(model, data, test_x, test_y))
        if ctx.should_checkpoint(step, steps):
            aggregator = getattr(update, "aggregator", None)
            ctx.save_checkpoint(
                step,
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "stream": stream.state_dict(),
                    "monitor": monitor.state_dict(),
                    "aggregator": aggregator,
                },
            )
        ctx.step_done(step, loss=weighted)
    final = evaluate(model, data, test_x, test_y)
    metrics = dict(final)
    metrics.update({f"mt/{k}": v for k, v in monitor.summary().items()})
    last = monitor.last
    for key in ("mt/conflict_total", "mt/igr_total", "mt/grad_norm_ratio"):
        if key in last:
            metrics[f"{key}_final"] = last[key]
    done = steps - ctx.start_step
    return {
        "metrics": metrics,
        "timing": {
            "seconds_per_step": timing["train_seconds"] / max(done, 1),
            "monitor_seconds_per_call": timing["monitor_seconds"] / max(timing["monitor_calls"], 1),
        },
        "tasks": list(data.task_names),
    }


def _observe(monitor, ctx, step, probe_x, probe_y, lr, timing) -> None:
    started = time.perf_counter()
    record = monitor.observe(step, inputs=probe_x, targets=probe_y, force=True)
    timing["monitor_seconds"] += time.perf_counter() - started
    timing["monitor_calls"] += 1
    bad = [k for k, v in record.items() if isinstance(v, float) and math.isnan(v)]
    if bad:
        raise ctx.diverged(step, bad[0], "nan")
    ctx.log(step, {"flow_time": lr * step})


# --------------------------------------------------------------------------- report


def build_report(run_dir: Any) -> str:
    """The HTML report of a multitask run directory."""
    from bea.report.multitask import multitask_report

    return multitask_report(run_dir)
