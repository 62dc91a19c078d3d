"""Overhead of the multitask and continual monitors inside a training loop.

The same SGD run (same initial weights, same batches) is timed without a
monitor and with one at its default sampling, interleaved repeat by repeat;
the overhead is the median over repeats of ``t_with / t_without − 1``.

* ``multitask``: :class:`bea.diagnostics.multitask_monitor.MultitaskMonitor` on a
  two-head MLP (shared trunk 784-512-256, batch 64), ``observe(step, inputs=,
  targets=)`` every step (it measures every ``every`` steps by default).
* ``bracket``: :class:`bea.diagnostics.bracket_monitor.BracketMonitor` on an MLP
  784-256-10 (batch 64) over a stream of two tasks with a switch half-way,
  ``observe(step, params, loss, task)`` every step before the update.
"""

from __future__ import annotations

import copy
import importlib
import statistics
import time

import harness
import models
import torch
from torch import nn

import bea

LR = 0.05


class TwoHeads(nn.Module):
    """Shared trunk, two linear heads; ``forward`` returns one output per task."""

    def __init__(self, widths: list[int], classes: int):
        super().__init__()
        self.trunk = models.mlp(widths)
        self.heads = nn.ModuleList(nn.Linear(widths[-1], classes) for _ in range(2))

    def forward(self, inputs):
        hidden = nn.functional.gelu(self.trunk(inputs))
        return tuple(head(hidden) for head in self.heads)


def _batches(steps: int, shape, classes: int, columns: int | None, device, seed: int):
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        inputs = torch.randn(*shape, generator=generator)
        size = (shape[0],) if columns is None else (shape[0], columns)
        targets = torch.randint(0, classes, size, generator=generator)
        out.append((inputs.to(device), targets.to(device)))
    return out


def _multitask_runs(config, steps: int):
    module = importlib.import_module("bea.diagnostics.multitask_monitor")
    widths, classes, shape = (
        ([12, 16, 8], 3, (8, 12)) if config.toy else ([784, 512, 256], 10, (64, 784))
    )
    torch.manual_seed(0)
    initial = TwoHeads(widths, classes).to(config.device)
    batches = _batches(steps, shape, classes, 2, config.device, seed=5)

    def train(with_monitor: bool):
        model = copy.deepcopy(initial)
        optimizer = torch.optim.SGD(model.parameters(), lr=LR)
        monitor = None
        if with_monitor:
            monitor = module.MultitaskMonitor(
                model, ("left", "right"), LR, shared="trunk", logger=bea_memory_logger()
            )
        for step, (inputs, targets) in enumerate(batches):
            if monitor is not None:
                monitor.observe(step, inputs=inputs, targets=targets)
            outputs = model(inputs)
            loss = sum(nn.functional.cross_entropy(outputs[k], targets[:, k]) for k in range(2))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return monitor

    sampling = {"every": module.MultitaskMonitor.__init__.__kwdefaults__.get("every")}
    return train, sampling, f"two-head MLP trunk {widths}, batch {shape[0]}, {steps} steps"


def _bracket_runs(config, steps: int):
    module = importlib.import_module("bea.diagnostics.bracket_monitor")
    widths, shape, classes = (
        ([12, 16, 4], (8, 12), 4) if config.toy else ([784, 256, 10], (64, 784), 10)
    )
    torch.manual_seed(0)
    initial = models.mlp(widths).to(config.device)
    batches = _batches(steps, shape, classes, None, config.device, seed=9)
    tasks = [0 if step < steps // 2 else 1 for step in range(steps)]
    criterion = nn.CrossEntropyLoss()

    def train(with_monitor: bool):
        model = copy.deepcopy(initial)
        optimizer = torch.optim.SGD(model.parameters(), lr=LR)
        monitor = module.BracketMonitor(LR, logger=bea_memory_logger()) if with_monitor else None
        for step, ((inputs, targets), task) in enumerate(zip(batches, tasks, strict=True)):
            if monitor is not None:
                loss_fn = bea.bind(model, criterion, inputs, targets)
                monitor.observe(step, bea.params_of(model), loss_fn, task)
            loss = criterion(model(inputs), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return monitor

    defaults = module.BracketMonitor.__init__.__kwdefaults__
    sampling = {k: defaults.get(k) for k in ("every", "around", "order_effect")}
    description = f"MLP {widths}, batch {shape[0]}, {steps} steps, task switch at {steps // 2}"
    return train, sampling, description


def bea_memory_logger():
    from bea.loggers import MemoryLogger

    return MemoryLogger()


def _time(train, with_monitor: bool, device) -> tuple[float, object]:
    harness.synchronize(device)
    start = time.perf_counter()
    monitor = train(with_monitor)
    harness.synchronize(device)
    return time.perf_counter() - start, monitor


def measure(name: str, factory, config, steps: int) -> dict:
    try:
        train, sampling, description = factory(config, steps)
        _time(train, True, config.device)  # warm-up, and proof that it runs
    except (ImportError, AttributeError, TypeError, ValueError, RuntimeError) as error:
        return {"monitor": name, "failed": f"{type(error).__name__}: {error}"}
    without, with_monitor, measured = [], [], 0
    repeats = config.repeats if config.toy else max(3, config.repeats)
    for index in range(repeats):
        order = (False, True) if index % 2 == 0 else (True, False)
        for flag in order:
            elapsed, monitor = _time(train, flag, config.device)
            (with_monitor if flag else without).append(elapsed)
            if flag:
                records = getattr(monitor, "records", None)
                measured = (
                    len(records) if records is not None else getattr(monitor, "observations", 0)
                )
    overheads = [w / b - 1 for w, b in zip(with_monitor, without, strict=True)]
    return {
        "monitor": name,
        "description": description,
        "default_sampling": sampling,
        "steps": steps,
        "measurements_per_run": measured,
        "baseline": "without_monitor",
        "median_s": {
            "without_monitor": statistics.median(without),
            "with_monitor": statistics.median(with_monitor),
        },
        "ratio": {
            "with_monitor": statistics.median(
                w / b for w, b in zip(with_monitor, without, strict=True)
            )
        },
        "overhead": statistics.median(overheads),
        "times_s": {"without_monitor": without, "with_monitor": with_monitor},
        "repeats": repeats,
    }


def run(config) -> dict:
    # A run of the length of one task in the stability-gap protocol (500 iterations per
    # task): the bracket monitor measures around each switch, a cost paid once per task.
    steps = 20 if config.toy else 300 if config.quick else 1000
    cases = []
    for name, factory in (("multitask", _multitask_runs), ("bracket", _bracket_runs)):
        config.log(f"monitors: {name}")
        cases.append(measure(name, factory, config, steps))
    return {"cases": cases}
