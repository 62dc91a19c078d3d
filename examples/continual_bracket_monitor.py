"""Lie-bracket diagnostics and continual metrics in a plain PyTorch continual-learning loop.

Two Split-Digits tasks, a small tanh MLP, plain SGD. Four added lines (marked ``bea``):
bind the batch loss, hand it to the monitor before the update, evaluate every task after
it, and compute the metrics at the end. Runs in a few seconds on a CPU:

    python examples/continual_bracket_monitor.py
"""

import numpy as np
import torch

import bea
from bea.diagnostics import continual_metrics as cm
from bea.diagnostics.bracket_monitor import BracketMonitor
from bea.experiments.data import split_digits, subsample
from bea.loggers import MemoryLogger

torch.manual_seed(0)
tasks = split_digits(num_tasks=2, seed=0).tasks[:2]
model = torch.nn.Sequential(
    torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.Tanh(), torch.nn.Linear(32, 10)
)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
criterion = torch.nn.functional.cross_entropy
eval_sets = [subsample(t.x_test, t.y_test, 60, seed=0) for t in tasks]
logger = MemoryLogger()
monitor = BracketMonitor(lr=0.1, every=10, around=3, logger=logger)  # bea

steps_per_task, curve, step = 100, [], 0


def evaluate():
    with torch.no_grad():
        return [float((model(x).argmax(1) == y).float().mean()) for x, y in eval_sets]


curve.append(evaluate())
for task_index, task in enumerate(tasks):
    generator = torch.Generator().manual_seed(task_index)
    for _ in range(steps_per_task):
        step += 1
        index = torch.randint(0, task.num_train, (32,), generator=generator)
        x, y = task.x_train[index], task.y_train[index]
        batch_loss = bea.bind(model, criterion, x, y)  # bea
        monitor.observe(step, bea.params_of(model), batch_loss, task_index)  # bea
        optimizer.zero_grad()
        criterion(model(x), y).backward()
        optimizer.step()
        curve.append(evaluate())  # bea: per-iteration evaluation

ends = [steps_per_task * (k + 1) for k in range(len(tasks))]
summary = monitor.summary()
print("average accuracy", cm.average_accuracy(cm.accuracy_matrix(curve, ends)))
print("min-ACC", cm.min_accuracy(curve, ends), "WC-ACC", cm.worst_case_accuracy(curve, ends))
print("dip after the switch", np.nanmax(cm.stability_gap_dips(curve, ends, window=20)))
print("relative bracket, within a task:", summary["within"]["bracket_relative"])
print("relative bracket, across the switch:", summary["cross"]["bracket_relative"])
steps, changes = logger.series("bracket/delta_measured")
print(f"{len(steps)} one-step changes of the previous batch's loss measured")
