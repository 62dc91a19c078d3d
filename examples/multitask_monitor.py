"""The conflict-term monitor in a plain PyTorch training loop.

Run: python examples/multitask_monitor.py  (well under a minute; writes multitask_monitor.jsonl)

Two digit-classification tasks share an MLP trunk (MultiDigits: two scikit-learn digits
side by side). Four lines added to an ordinary loop log, every 20 steps, each task's loss
and accuracy, the IGR per task, the conflict term (h/2) <grad_theta L_left, grad_theta
L_right> and cosine on the shared trunk, the Gram matrix, a per-layer breakdown and the
running fraction of steps with a negative cosine.
"""

import torch
from torch import nn

from bea.diagnostics.multitask_monitor import MultitaskMonitor, accuracy
from bea.experiments.data import batches, multi_digits
from bea.experiments.models import multitask_mlp
from bea.loggers import JsonlLogger

torch.manual_seed(0)
data = multi_digits(seed=0, flatten=True)
model = multitask_mlp(128, {"left": 10, "right": 10}, hidden=(64, 64), seed=0)
lr = 0.1
optimizer = torch.optim.SGD(model.parameters(), lr=lr)

logger = JsonlLogger("multitask_monitor.jsonl")  # 1
monitor = MultitaskMonitor(  # 2
    model,
    ("left", "right"),
    lr,
    shared="trunk",
    logger=logger,
    every=20,
    metrics=[accuracy, accuracy],
)

step = 0
generator = torch.Generator().manual_seed(0)
for _epoch in range(3):
    for x, y in batches(data.x_train, data.y_train, 64, generator):
        monitor.observe(step, inputs=x, targets=y)  # 3: measures only every 20 steps
        left, right = model(x)
        loss = nn.functional.cross_entropy(left, y[:, 0]) + nn.functional.cross_entropy(
            right, y[:, 1]
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
logger.close()  # 4

print(f"{step} steps; last record:")
for key in (
    "mt/loss/left",
    "mt/conflict_total",
    "mt/cosine/left-right",
    "mt/frac_negative_cosine/left-right",
    "mt/grad_norm_ratio",
):
    print(f"  {key} = {monitor.last[key]:.4g}")
