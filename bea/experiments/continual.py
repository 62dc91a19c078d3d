"""The continual experiment: a task sequence, one or more strategies, per-iteration
evaluation, Lie-bracket diagnostics, a report.

``bea run continual --preset quick`` runs it (protocol in :mod:`bea.experiments.runner`). For
each strategy in ``train.strategies`` (a *phase*, all phases from the same initial
model and the same seed) the runner

1. trains ``train.steps_per_task`` SGD iterations on each task in turn; the batch of
   iteration ``s`` is a seeded function of ``(seed, s)`` (so a resumed run redraws
   exactly the same batches), drawn from the current task (from the union of the tasks
   seen so far for ``joint``); replay strategies draw a replay batch from a
   :class:`~bea.experiments.continual_strategies.ReplayBuffer` holding
   ``train.memory_per_task`` examples of each finished task;
2. evaluates after every iteration (``monitor.eval_every``) the accuracy and loss on a
   fixed, seeded evaluation subset (``data.eval_per_task`` test examples) of *every*
   task, seen or not, so the curves give the accuracy matrix, forward transfer with
   the random-initialization baseline, and the continual-evaluation metrics of
   :mod:`bea.diagnostics.continual_metrics`;
3. runs a :class:`~bea.diagnostics.bracket_monitor.BracketMonitor` every
   ``monitor.every`` iterations and around every task switch; its old loss is a fixed
   batch of the previous task (``monitor.old_batch_size`` training examples), its
   displacement the strategy's actual step, and for ReLU-like models it counts the
   units that switched on a fixed probe.

Metric keys (``<p>`` is the strategy name): ``<p>/acc/<task>``, ``<p>/loss/<task>``,
``<p>/train_loss``, ``<p>/task``, ``<p>/bracket/...`` (see the monitor), and in the
summary ``<p>/<metric>`` for every entry of
:func:`~bea.diagnostics.continual_metrics.continual_summary` plus the bracket ratio.
Logged steps are global: phase ``i`` iteration ``s`` is step ``i * total + s``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import Tensor, nn

from bea.diagnostics import continual_metrics as cm
from bea.diagnostics.bracket_monitor import BracketMonitor
from bea.experiments.config import ExperimentConfig, fail
from bea.experiments.continual_strategies import STRATEGIES, ReplayBuffer, make_strategy

KIND = "continual"
COMPARE_KEYS: list[str] = [
    f"{name}/{key}" for name in STRATEGIES for key in ("train_loss", "bracket/bracket_relative")
]
DATASETS = ("split_digits", "rotated_mnist_5k", "permuted_mnist_5k", "generated_tasks")
SAME_CLASSES = ("rotated_mnist_5k", "permuted_mnist_5k", "generated_tasks")


@dataclass(kw_only=True)
class DataSettings:
    """``[data]``: the task sequence and the evaluation subsets.

    ``num_tasks`` is for ``split_digits`` (2 or 5), ``permuted_mnist_5k`` and
    ``generated_tasks``; ``angles`` for ``rotated_mnist_5k``; ``similarity`` for
    ``generated_tasks``; ``downscale`` pools MNIST images. ``train_per_task`` keeps a
    seeded subset of each task's training data (0 = all); ``eval_per_task`` is the size
    of each task's fixed evaluation subset, drawn with ``eval_seed``.
    """

    name: Literal["split_digits", "rotated_mnist_5k", "permuted_mnist_5k", "generated_tasks"] = (
        "split_digits"
    )
    num_tasks: int = 5
    angles: list[float] = field(default_factory=lambda: [0.0, 80.0, 160.0])
    similarity: float = 0.5
    downscale: int = 1
    train_per_task: int = 0
    eval_per_task: int = 100
    eval_seed: int = 0

    def validate(self, path: str = "data") -> None:
        tasks = len(self.angles) if self.name == "rotated_mnist_5k" else self.num_tasks
        where = f"{path}.angles" if self.name == "rotated_mnist_5k" else f"{path}.num_tasks"
        if tasks < 2:
            raise fail(where, "must give a sequence of at least 2 tasks", tasks)
        if self.downscale not in (1, 2, 4, 7, 14, 28):
            raise fail(f"{path}.downscale", "must divide 28", self.downscale)
        if self.train_per_task < 0:
            raise fail(f"{path}.train_per_task", "must be >= 0 (0 = all)", self.train_per_task)
        if self.eval_per_task < 1:
            raise fail(f"{path}.eval_per_task", "must be >= 1", self.eval_per_task)
        if not 0.0 <= self.similarity <= 1.0:
            raise fail(f"{path}.similarity", "must be in [0, 1]", self.similarity)


@dataclass(kw_only=True)
class ModelSettings:
    """``[model]``: an MLP with ``hidden`` widths (or ``small_cnn``) and one shared head."""

    kind: Literal["mlp", "small_cnn"] = "mlp"
    hidden: list[int] = field(default_factory=lambda: [100, 100])
    activation: Literal["tanh", "gelu", "softplus", "relu", "sigmoid", "silu", "elu"] = "relu"

    def validate(self, path: str = "model") -> None:
        if self.kind == "mlp" and not self.hidden:
            raise fail(f"{path}.hidden", "must have at least one width", self.hidden)
        for width in self.hidden:
            if width < 1:
                raise fail(f"{path}.hidden", "widths must be >= 1", width)


@dataclass(kw_only=True)
class TrainSettings:
    """``[train]``: plain SGD with step ``lr``; one phase per entry of ``strategies``.

    ``replay_batch_size`` = 0 uses ``batch_size``. ``ewc_strength``/``ewc_fisher_samples``
    configure ``ewc``, ``bracket_strength`` the ``bracket_penalty`` strategy.
    """

    lr: float = 0.1
    batch_size: int = 128
    steps_per_task: int = 500
    strategies: list[str] = field(default_factory=lambda: ["naive"])
    memory_per_task: int = 100
    replay_batch_size: int = 0
    ewc_strength: float = 10.0
    ewc_fisher_samples: int = 200
    bracket_strength: float = 1.0

    def validate(self, path: str = "train") -> None:
        if not self.lr > 0:
            raise fail(f"{path}.lr", "must be > 0", self.lr)
        for name in ("batch_size", "steps_per_task"):
            if getattr(self, name) < 1:
                raise fail(f"{path}.{name}", "must be >= 1", getattr(self, name))
        if not self.strategies:
            raise fail(f"{path}.strategies", "must name at least one strategy", self.strategies)
        for name in self.strategies:
            if name not in STRATEGIES:
                raise fail(
                    f"{path}.strategies", f"entries must be in {', '.join(STRATEGIES)}", name
                )
        if len(set(self.strategies)) != len(self.strategies):
            raise fail(f"{path}.strategies", "must not repeat a strategy", self.strategies)
        needs = [s for s in self.strategies if STRATEGIES[s].needs_replay]
        if needs and self.memory_per_task < 1:
            raise fail(
                f"{path}.memory_per_task",
                f"must be >= 1: {', '.join(needs)} need a non-empty replay buffer",
                self.memory_per_task,
            )
        if self.replay_batch_size < 0:
            raise fail(f"{path}.replay_batch_size", "must be >= 0", self.replay_batch_size)
        if self.ewc_strength < 0 or self.bracket_strength < 0:
            raise fail(
                f"{path}.ewc_strength/bracket_strength",
                "must be >= 0",
                (self.ewc_strength, self.bracket_strength),
            )
        if self.ewc_fisher_samples < 1:
            raise fail(f"{path}.ewc_fisher_samples", "must be >= 1", self.ewc_fisher_samples)


@dataclass(kw_only=True)
class MonitorSettings:
    """``[monitor]``: evaluation every ``eval_every`` iterations (1 = every one) and the
    bracket monitor every ``every`` iterations and for ``around`` iterations around each
    switch (``enabled = false`` turns it off)."""

    eval_every: int = 1
    enabled: bool = True
    every: int = 10
    around: int = 5
    old_batch_size: int = 128
    probe_per_task: int = 32
    order_effect: bool = True

    def validate(self, path: str = "monitor") -> None:
        for name in ("eval_every", "every", "old_batch_size", "probe_per_task"):
            if getattr(self, name) < 1:
                raise fail(f"{path}.{name}", "must be >= 1", getattr(self, name))
        if self.around < 0:
            raise fail(f"{path}.around", "must be >= 0", self.around)


@dataclass(kw_only=True)
class ContinualConfig(ExperimentConfig):
    """A continual run: ``[data]``, ``[model]``, ``[train]``, ``[monitor]``."""

    KIND: ClassVar[str] = KIND

    data: DataSettings = field(default_factory=DataSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    monitor: MonitorSettings = field(default_factory=MonitorSettings)

    def validate(self) -> None:
        super().validate()
        if self.model.kind == "small_cnn" and self.data.name == "generated_tasks":
            raise fail(
                "model.kind", "small_cnn needs image data, not generated_tasks", self.model.kind
            )


CONFIG_CLASS = ContinualConfig


# --------------------------------------------------------------------------- building


def torch_dtype(config: ContinualConfig) -> torch.dtype:
    return torch.float64 if config.run.dtype == "float64" else torch.float32


def build_data(config: ContinualConfig) -> Any:
    """The :class:`~bea.experiments.data.ContinualData` of ``config.data`` (seeded)."""
    from bea.experiments import data as datasets

    d, dtype, seed = config.data, torch_dtype(config), config.seed
    if d.name == "split_digits":
        sequence = datasets.split_digits(d.num_tasks, seed, dtype=dtype)
    elif d.name == "rotated_mnist_5k":
        sequence = datasets.rotated_mnist_5k(d.angles, seed, downscale=d.downscale, dtype=dtype)
    elif d.name == "permuted_mnist_5k":
        sequence = datasets.permuted_mnist_5k(d.num_tasks, seed, downscale=d.downscale, dtype=dtype)
    else:
        sequence = datasets.generated_tasks(d.num_tasks, d.similarity, seed, dtype=dtype)
    return sequence


def check_task_sequence(
    data: Any, num_outputs: int, *, same_classes: bool, eval_per_task: int
) -> None:
    """Refuse sequences the runner cannot train and evaluate meaningfully.

    Raises:
        ValueError: fewer than two tasks; a task whose labels do not fit the
            ``num_outputs`` of the shared head; tasks with different class sets where
            one class set is expected (``same_classes``, domain-incremental data); an
            evaluation subset larger than a task's test set.
    """
    call = "continual"
    tasks = list(data.tasks)
    if len(tasks) < 2:
        raise ValueError(f"{call}: a continual sequence needs at least 2 tasks, got {len(tasks)}")
    for task in tasks:
        if max(task.classes) >= num_outputs or min(task.classes) < 0:
            raise ValueError(
                f"{call}: task {task.name!r} has classes {list(task.classes)} but the model "
                f"has {num_outputs} outputs"
            )
        if eval_per_task > task.num_test:
            raise ValueError(
                f"{call}: data.eval_per_task = {eval_per_task} is larger than the test set "
                f"of task {task.name!r} ({task.num_test} examples)"
            )
    if same_classes:
        first = tasks[0].classes
        for task in tasks[1:]:
            if task.classes != first:
                raise ValueError(
                    f"{call}: mismatched class sets: task {task.name!r} has classes "
                    f"{list(task.classes)} but task {tasks[0].name!r} has {list(first)}"
                )


def build_model(config: ContinualConfig, data: Any) -> nn.Module:
    from bea.experiments import models

    m = config.model
    shape = data.input_shape
    if m.kind == "small_cnn":
        model = models.small_cnn(
            shape[0], data.num_classes, tuple(shape[1:]), m.activation, seed=config.seed
        )
    else:
        model = models.mlp(
            int(np.prod(shape)), tuple(m.hidden), data.num_classes, m.activation, seed=config.seed
        )
    return model.to(torch_dtype(config))


def make_loss_fn(model: nn.Module):
    """``loss_fn(params, x, y)``: mean cross-entropy of ``model`` at ``params``."""

    def loss_fn(params, x, y):
        logits = torch.func.functional_call(model, params, (x,))
        return nn.functional.cross_entropy(logits, y)

    return loss_fn


def _seeded(*key: int) -> torch.Generator:
    return torch.Generator().manual_seed(
        int(np.random.SeedSequence(list(key)).generate_state(1)[0])
    )


class TaskStream:
    """The fixed parts of one run: data, evaluation subsets, probes, schedule."""

    def __init__(self, config: ContinualConfig):
        from bea.experiments.data import subsample

        self.config = config
        data = build_data(config)
        check_task_sequence(
            data,
            data.num_classes,
            same_classes=config.data.name in SAME_CLASSES,
            eval_per_task=config.data.eval_per_task,
        )
        self.data = data
        self.names = list(data.task_names)
        self.num_tasks = len(self.names)
        per = config.data.train_per_task
        self.train = []
        for k, task in enumerate(data.tasks):
            if per and per < task.num_train:
                self.train.append(
                    subsample(task.x_train, task.y_train, per, seed=config.seed + 7 * k)
                )
            else:
                self.train.append((task.x_train, task.y_train))
        self.eval = [
            subsample(t.x_test, t.y_test, config.data.eval_per_task, seed=config.data.eval_seed)
            for t in data.tasks
        ]
        self.steps_per_task = config.train.steps_per_task
        self.total = self.num_tasks * self.steps_per_task
        self.task_ends = [(k + 1) * self.steps_per_task for k in range(self.num_tasks)]
        old = config.monitor.old_batch_size
        self.old_batches = [
            subsample(x, y, min(old, x.shape[0]), seed=config.seed + 11 * k)
            for k, (x, y) in enumerate(self.train)
        ]
        probe = config.monitor.probe_per_task
        self.probe = torch.cat([x[: min(probe, x.shape[0])] for x, _ in self.eval])

    def task_of(self, step: int) -> int:
        """Task trained by iteration ``step`` (1-based)."""
        return min((step - 1) // self.steps_per_task, self.num_tasks - 1)

    def batch(self, step: int, joint: bool) -> tuple[Tensor, Tensor]:
        """The batch of iteration ``step``: a seeded function of (seed, step)."""
        k = self.task_of(step)
        if joint:
            x = torch.cat([self.train[j][0] for j in range(k + 1)])
            y = torch.cat([self.train[j][1] for j in range(k + 1)])
        else:
            x, y = self.train[k]
        generator = _seeded(self.config.seed, 1, step)
        index = torch.randperm(x.shape[0], generator=generator)[: self.config.train.batch_size]
        return x[index], y[index]


def evaluate(model: nn.Module, params, sequence: TaskStream) -> tuple[list[float], list[float]]:
    """Accuracy and mean loss on each task's fixed evaluation subset."""
    accs, losses = [], []
    with torch.no_grad():
        for x, y in sequence.eval:
            logits = torch.func.functional_call(model, params, (x,))
            accs.append(float((logits.argmax(1) == y).double().mean()))
            losses.append(float(nn.functional.cross_entropy(logits, y)))
    return accs, losses


def _strategy_options(config: ContinualConfig, name: str) -> dict[str, Any]:
    t = config.train
    if name == "ewc":
        return {
            "strength": t.ewc_strength,
            "fisher_samples": t.ewc_fisher_samples,
            "seed": config.seed,
        }
    if name == "bracket_penalty":
        return {"strength": t.bracket_strength}
    return {}


def _switch_counter(model: nn.Module, probe: Tensor, activation: str):
    if activation not in ("relu", "elu"):
        return None
    from bea.experiments.models import count_activation_switches

    return lambda before, after: count_activation_switches(model, before, after, probe).total


# --------------------------------------------------------------------------- training


class _Phase:
    """Training state of one strategy (state: params, strategy, buffer, monitor, curves)."""

    def __init__(self, config, sequence, model, loss_fn, name, initial, ctx_logger, offset):
        self.config, self.sequence, self.model, self.loss_fn = config, sequence, model, loss_fn
        self.name = name
        self.offset = offset
        self.strategy = make_strategy(name, **_strategy_options(config, name))
        self.buffer = (
            ReplayBuffer(config.train.memory_per_task, seed=config.seed)
            if self.strategy.needs_replay
            else None
        )
        self.params = {k: v.detach().clone() for k, v in initial.items()}
        self.monitor = None
        if config.monitor.enabled:
            self.monitor = BracketMonitor(
                config.train.lr,
                every=config.monitor.every,
                around=config.monitor.around,
                switch_steps=[e + 1 for e in sequence.task_ends[:-1]],
                logger=_Prefixed(ctx_logger, f"{name}/", offset),
                prefix="bracket/",
                count_switches=_switch_counter(model, sequence.probe, config.model.activation),
                order_effect=config.monitor.order_effect,
            )
        self.curve: list[list[float]] = []
        self.loss_curve: list[list[float]] = []
        self.curve_steps: list[int] = []

    def batch_loss(self, step: int):
        x, y = self.sequence.batch(step, self.strategy.joint_data)
        return (lambda p: self.loss_fn(p, x, y)), (x, y)

    def replay_batch(self, step: int):
        if self.buffer is None or len(self.buffer) == 0:
            return None
        size = self.config.train.replay_batch_size or self.config.train.batch_size
        return self.buffer.sample(size, _seeded(self.config.seed, 2, step))

    def record_eval(self, step: int, log) -> list[float]:
        accs, losses = evaluate(self.model, self.params, self.sequence)
        self.curve.append(accs)
        self.loss_curve.append(losses)
        self.curve_steps.append(step)
        values = {f"{self.name}/acc/{n}": a for n, a in zip(self.sequence.names, accs, strict=True)}
        values.update(
            {f"{self.name}/loss/{n}": v for n, v in zip(self.sequence.names, losses, strict=True)}
        )
        log(self.offset + step, values)
        return accs

    def train_step(self, step: int, ctx) -> float:
        task = self.sequence.task_of(step)
        loss, batch = self.batch_loss(step)
        replay = self.replay_batch(step)
        value = float(loss(self.params))
        if not math.isfinite(value):
            raise ctx.diverged(
                self.offset + step,
                f"the training loss of task {self.sequence.names[task]!r} ({self.name})",
                value,
            )
        new = self.strategy.step(
            self.params, self.loss_fn, batch, replay, self.config.train.lr, task
        )
        if not all(bool(torch.isfinite(v).all()) for v in new.values()):
            raise ctx.diverged(
                self.offset + step, f"a parameter after the {self.name} update", "not finite"
            )
        if self.monitor is not None:
            old_loss, old_task = None, None
            if task > 0:
                ox, oy = self.sequence.old_batches[task - 1]
                old_loss, old_task = (lambda p: self.loss_fn(p, ox, oy)), task - 1
            displacement = (
                {k: new[k] - self.params[k] for k in new} if self.monitor.due(step, task) else None
            )
            self.monitor.observe(
                step,
                self.params,
                loss,
                task,
                old_loss=old_loss,
                old_task=old_task,
                displacement=displacement,
            )
        self.params = {k: v.detach() for k, v in new.items()}
        if step in self.sequence.task_ends:
            x, y = self.sequence.train[task]
            self.strategy.end_task(self.params, self.loss_fn, task, x, y)
            if self.buffer is not None:
                self.buffer.add_task(task, x, y)
        return value

    def state_dict(self) -> dict[str, Any]:
        return {
            "params": self.params,
            "strategy": self.strategy.state_dict(),
            "buffer": None if self.buffer is None else self.buffer.state_dict(),
            "monitor": None if self.monitor is None else self.monitor.state_dict(),
            "monitor_records": None if self.monitor is None else list(self.monitor.records),
            "curve": self.curve,
            "loss_curve": self.loss_curve,
            "curve_steps": self.curve_steps,
        }

    def load_state_dict(self, state: dict[str, Any], step: int) -> None:
        self.params = state["params"]
        self.strategy.load_state_dict(state["strategy"])
        if self.buffer is not None:
            self.buffer.load_state_dict(state["buffer"])
        if self.monitor is not None:
            self.monitor.load_state_dict(state["monitor"])
            self.monitor.records = list(state["monitor_records"])
            if step >= 1:
                self.monitor.remember(self.batch_loss(step)[0], self.sequence.task_of(step))
        self.curve = state["curve"]
        self.loss_curve = state["loss_curve"]
        self.curve_steps = state["curve_steps"]

    def summary(self) -> dict[str, float]:
        """Continual metrics of the phase's curve plus the bracket statistics."""
        seq = self.sequence
        curve = np.asarray(self.curve)
        steps = list(self.curve_steps)
        # the metrics index rows by update count: map task ends onto evaluated rows
        ends = [steps.index(e) for e in seq.task_ends]
        out = cm.continual_summary(curve, ends, windows=(10, 100), lca_beta=10)
        for k, name in enumerate(seq.names):
            out[f"final_acc/{name}"] = float(curve[-1, k])
        dips = cm.stability_gap_dips(curve, ends)
        for k in range(1, seq.num_tasks):
            out[f"dip/switch{k}"] = float(np.nanmean(dips[k, :k]))
        if self.monitor is not None:
            stats = self.monitor.summary()
            for key, value in stats["ratio"].items():
                out[f"bracket_ratio/{key}"] = value
            for group in ("within", "cross", "old"):
                for key, entry in stats[group].items():
                    out[f"bracket_{group}/{key}"] = entry["mean"]
            out["bracket_invalid/within"] = stats["invalid"]["within"]
            out["bracket_invalid/cross"] = stats["invalid"]["cross"]
        return {f"{self.name}/{k}": v for k, v in out.items()}


class _Prefixed:
    """Logger view that prefixes keys and shifts steps (phases share one metrics file)."""

    def __init__(self, logger, prefix: str, offset: int):
        self.logger, self.prefix, self.offset = logger, prefix, offset

    def log(self, step: int, values) -> None:
        self.logger.log(self.offset + step, {f"{self.prefix}{k}": v for k, v in values.items()})

    def close(self) -> None:
        pass


def run(config: ContinualConfig, ctx: Any) -> dict[str, Any]:
    """Train every strategy of ``config.train.strategies`` on the sequence (see module doc)."""
    sequence = TaskStream(config)
    model = build_model(config, sequence.data)
    initial = {k: v.detach().clone() for k, v in model.named_parameters()}
    loss_fn = make_loss_fn(model)
    names = list(config.train.strategies)
    total = sequence.total
    grand_total = total * len(names)
    summaries: dict[str, Any] = {}
    timing: dict[str, float] = {}
    start_phase, start_step = 0, 0
    phase_state = None
    if ctx.resume_state is not None:
        state = ctx.resume_state
        start_phase, start_step = state["phase"], state["phase_step"]
        summaries, timing = dict(state["summaries"]), dict(state["timing"])
        phase_state = state["phase_state"]
    ctx.restore_rng()
    ctx.start_progress(grand_total)
    eval_every = config.monitor.eval_every
    for index in range(start_phase, len(names)):
        phase = _Phase(
            config, sequence, model, loss_fn, names[index], initial, ctx.logger, index * total
        )
        first = 1
        if phase_state is not None and index == start_phase:
            phase.load_state_dict(phase_state, start_step)
            first = start_step + 1
        else:
            phase.record_eval(0, ctx.log)
        started = time.perf_counter()
        accs = phase.curve[-1]
        for step in range(first, total + 1):
            value = phase.train_step(step, ctx)
            if step % eval_every == 0 or step in sequence.task_ends or step == total:
                accs = phase.record_eval(step, ctx.log)
            ctx.log(
                index * total + step,
                {f"{phase.name}/train_loss": value, f"{phase.name}/task": sequence.task_of(step)},
            )
            global_step = index * total + step
            if step == total:
                summaries.update(phase.summary())
                timing[f"{phase.name}/seconds"] = time.perf_counter() - started
            if ctx.should_checkpoint(global_step, grand_total):
                finished = step == total
                ctx.save_checkpoint(
                    global_step,
                    {
                        "phase": index + 1 if finished else index,
                        "phase_step": 0 if finished else step,
                        "phase_state": None if finished else phase.state_dict(),
                        "summaries": summaries,
                        "timing": timing,
                    },
                )
            ctx.step_done(
                global_step,
                strategy=phase.name,
                loss=value,
                acc=float(np.mean(accs[: sequence.task_of(step) + 1])),
            )
        phase_state = None
    metrics = {k: float(v) for k, v in summaries.items()}
    timing = {k: float(v) for k, v in timing.items()}
    return {
        "metrics": metrics,
        "timing": timing,
        "task_names": sequence.names,
        "task_ends": sequence.task_ends,
        "strategies": names,
    }


# --------------------------------------------------------------------------- report


def _strategy_table(metrics: dict[str, float], names: list[str]) -> list[dict[str, Any]]:
    columns = [
        "average_accuracy",
        "forgetting",
        "backward_transfer",
        "forward_transfer",
        "min_accuracy",
        "worst_case_accuracy",
        "windowed_forgetting_10",
        "windowed_plasticity_10",
        "learning_curve_area_10",
        "mean_dip",
        "bracket_ratio/bracket_relative",
    ]
    rows = []
    for name in names:
        row: dict[str, Any] = {"strategy": name}
        for column in columns:
            if f"{name}/{column}" in metrics:
                row[column] = metrics[f"{name}/{column}"]
        rows.append(row)
    return rows


def _phase_figure(records, name: str, offset: int, task_names, switches):
    """One 2x2 figure for a strategy: accuracy curves, brackets, prediction, its parts."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from bea.experiments.rundir import series

    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    ax = axes[0, 0]
    for task in task_names:
        s, v = series(records, f"{name}/acc/{task}")
        if len(s):
            ax.plot(s - offset, v, linewidth=1.0, label=task)
    ax.set_title(f"{name}: accuracy per task after every iteration", fontsize=9)
    ax.set_xlabel("iteration")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=7)

    ax = axes[0, 1]
    s, rel = series(records, f"{name}/bracket/bracket_relative")
    if len(s):
        _, cross = series(records, f"{name}/bracket/cross_task")
        _, norm = series(records, f"{name}/bracket/bracket_norm")
        cross = cross.astype(bool)
        x = s - offset
        ax.semilogy(x[~cross], rel[~cross], ".", markersize=3, label="relative, within task")
        ax.semilogy(x[cross], rel[cross], "o", color="red", label="relative, across a switch")
        ax.semilogy(
            x[~cross],
            norm[~cross],
            ".",
            markersize=3,
            color="grey",
            alpha=0.6,
            label="norm, within task",
        )
        ax.semilogy(x[cross], norm[cross], "s", color="black", label="norm, across a switch")
        ax.legend(fontsize=6)
    ax.set_title(f"{name}: ‖[g_a, g_b]‖ and ‖[g_a, g_b]‖/(‖g_a‖‖g_b‖)", fontsize=9)
    ax.set_xlabel("iteration")

    counts = {"valid": 0, "switched": 0, "remainder": 0}
    rows = [r for r in records if f"{name}/bracket/delta_measured" in r]
    if rows:
        measured = np.array([r[f"{name}/bracket/delta_measured"] for r in rows], dtype=float)
        first = np.array([r[f"{name}/bracket/delta_first_order"] for r in rows], dtype=float)
        curvature = np.array([r[f"{name}/bracket/delta_curvature"] for r in rows], dtype=float)
        flags = [str(r.get(f"{name}/bracket/flags", "")) for r in rows]
        remainder = np.array(["remainder" in f for f in flags])
        switched = np.array(["units_switched" in f for f in flags]) & ~remainder
        valid = ~remainder & ~switched
        counts = {
            "valid": int(valid.sum()),
            "switched": int(switched.sum()),
            "remainder": int(remainder.sum()),
        }
        predicted = first + curvature
        ax = axes[1, 0]
        lim = float(np.nanmax(np.abs(np.concatenate([predicted, measured])))) or 1.0
        ax.plot(measured[valid], predicted[valid], ".", label="valid")
        ax.plot(
            measured[switched],
            predicted[switched],
            "+",
            color="orange",
            label="ReLU units switched",
        )
        ax.plot(
            measured[remainder],
            predicted[remainder],
            "x",
            color="red",
            label="remainder > half the prediction",
        )
        ax.plot([-lim, lim], [-lim, lim], color="grey", linewidth=0.7)
        ax.set_xlabel("measured ΔL_old over one step")
        ax.set_ylabel("first order + curvature")
        ax.legend(fontsize=7)
        ax = axes[1, 1]
        order = np.argsort(np.abs(measured))
        ax.semilogy(np.abs(first)[order], ".", label="|−h⟨∇L_old, g⟩|")
        ax.semilogy(np.abs(curvature)[order], ".", label="|(h²/2) gᵀH_old g|")
        ax.semilogy(np.abs(measured - predicted)[order], ".", label="|rest|")
        ax.set_xlabel("measurements sorted by |ΔL_old|")
        ax.legend(fontsize=7)
    axes[1, 0].set_title(f"{name}: predicted against measured ΔL_old", fontsize=9)
    axes[1, 1].set_title(f"{name}: parts of ΔL_old", fontsize=9)
    for ax in (axes[0, 0], axes[0, 1]):
        for at, _ in switches:
            ax.axvline(at, color="grey", linestyle="--", linewidth=0.8)
    return fig, counts


def build_report(run_dir: Any) -> str:
    """The HTML report: per strategy, accuracy curves with the task switches marked,
    bracket norms over time, predicted against measured loss changes; a strategy table."""
    from bea.report.html import Page

    config = run_dir.read_config_dict()
    summary = run_dir.read_summary()
    records = run_dir.read_metrics()
    metrics = summary.get("metrics", {})
    train = config.get("train", {})
    names = list(train.get("strategies", ["naive"]))
    steps_per_task = int(train.get("steps_per_task", 1))
    task_names = summary.get("task_names")
    if task_names is None:  # unfinished run: read them from the metric keys
        prefix = f"{names[0]}/acc/"
        task_names = sorted({k[len(prefix) :] for r in records for k in r if k.startswith(prefix)})
    total = steps_per_task * len(task_names)
    switches = [(k * steps_per_task, f"→ {n}") for k, n in enumerate(task_names) if k > 0]

    page = Page(f"continual {config.get('name', '')} (seed {config.get('seed', 0)})")
    page.paragraph(config.get("description", ""))
    status = run_dir.read_status()
    page.paragraph(
        f"state: {status.get('state')}, step {status.get('step')} of "
        f"{status.get('total_steps')}; data {config.get('data', {}).get('name')}, "
        f"model {config.get('model', {})}, lr {train.get('lr')}, batch "
        f"{train.get('batch_size')}, {steps_per_task} iterations per task; task "
        f"switches (dashed lines) at iterations {[s for s, _ in switches]}.",
        note=True,
    )

    page.paragraph(
        f"Reproduce: bea run continual --config {run_dir.config_path} --out NEW_DIR "
        "(batches, evaluation subsets and initial weights are seeded).",
        note=True,
    )
    page.heading("Strategies")
    if metrics:
        page.table(
            _strategy_table(metrics, names),
            caption="continual metrics (accuracies on fixed evaluation subsets)",
        )
    else:
        page.paragraph("The run has not finished: no summary yet.", note=True)

    page.heading("Accuracy, brackets and the old task's loss, per strategy")
    page.paragraph(
        "Top left: accuracy on each task's evaluation subset after every iteration; the dip "
        "right after a switch is the stability gap. Top right: the Lie bracket of consecutive "
        "batch gradients, norm and relative size, within a task and across a switch "
        "(Remark 4.3). Bottom: one step's change of the previous task's loss (a fixed batch), "
        "−h⟨∇L_old, g⟩ + (h²/2) gᵀH_old g + rest, for the strategy's actual step; flagged "
        "points lie outside the validity range of the smooth expansion.",
        note=True,
    )
    for index, name in enumerate(names):
        fig, counts = _phase_figure(records, name, index * total, task_names, switches)
        page.figure(fig, caption=f"{name}")
        ratio = metrics.get(f"{name}/bracket_ratio/bracket_relative")
        text = f"{name}: "
        if ratio is not None:
            text += (
                f"cross-task / within-task mean relative bracket = {ratio:.3g} "
                "(Remark 4.3 predicts > 1); "
            )
        text += (
            f"of {sum(counts.values())} loss-change measurements, {counts['switched']} had "
            f"ReLU units switching and {counts['remainder']} a remainder larger than half "
            "the prediction."
        )
        page.paragraph(text, note=True)

    page.heading("All summary metrics")
    page.table([{"metric": k, "value": v} for k, v in sorted(metrics.items())])
    timing = summary.get("timing", {})
    if timing:
        page.table([{"timing": k, "seconds": v} for k, v in sorted(timing.items())])
    return page.render()
