"""``bea.multitask_terms`` for K tasks on a shared trunk with K heads.

The trunk is the ~1M-parameter MLP without its last layer; each task has a
linear head and its own batch. Contenders:

* ``k_grads``       the floor: the K task gradients with plain autograd.
* ``bea_terms``     ``bea.multitask_terms(losses, params, lr, shared="trunk")``.
* ``naive_terms``   IGR per task and the pairwise conflict written directly from K
  autograd gradients (``contenders.make_naive_multitask``).

Agreement: bea's (loss, igr, conflict) against the naive ones.
"""

from __future__ import annotations

import contenders
import harness
import models
import torch

import bea

LR = 0.1


def _trunk_widths(toy: bool) -> tuple[list[int], int, tuple]:
    if toy:
        return [12, 16, 8], 4, (16, 12)
    return [784, 1024, 256], 10, (128, 784)


def run_case(count: int, dtype, config) -> dict:
    widths, classes, shape = _trunk_widths(config.toy)
    torch.manual_seed(0)
    model = contenders.MultiHead(models.mlp(widths), widths[-1], classes, count)
    model = model.to(device=config.device, dtype=dtype).eval()
    generator = torch.Generator().manual_seed(3)
    batches = []
    for _ in range(count):
        inputs = torch.randn(*shape, generator=generator, dtype=torch.float64)
        targets = torch.randint(0, classes, (shape[0],), generator=generator)
        batches.append((inputs.to(device=config.device, dtype=dtype), targets.to(config.device)))
    criterion = torch.nn.CrossEntropyLoss()
    losses = [
        bea.bind(model, criterion, (inputs, task), targets)
        for task, (inputs, targets) in enumerate(batches)
    ]
    params = bea.params_of(model)

    def bea_terms():
        terms = bea.multitask_terms(losses, params, LR, shared="trunk")
        return terms.loss, terms.igr, terms.conflict

    made = {
        "k_grads": contenders.make_k_grads(model, criterion, batches),
        "bea_terms": bea_terms,
        "naive_terms": contenders.make_naive_multitask(model, criterion, batches, LR),
    }
    results, failed, notes, _ = contenders.first_results(made)
    agree = harness.agreement(
        {k: results[k] for k in ("bea_terms", "naive_terms")}, "naive_terms", dtype
    )
    del results
    times = harness.time_interleaved(made, config.device, config.repeats, config.warmup)
    return {
        "model": "multihead_mlp",
        "K": count,
        "dtype": str(dtype).replace("torch.", ""),
        "params": sum(p.numel() for p in params.values()),
        **harness.summarize(times, "k_grads"),
        "agreement": agree,
        "failed": failed,
        "notes": notes,
    }


def run(config) -> dict:
    counts = (2, 4) if config.quick else (2, 4, 8)
    cases = []
    # float32 only: the cost structure (K gradients + inner products) does not change
    # with the dtype, and the float64 runs would double the suite's time.
    for dtype in config.dtypes[:1]:
        for count in counts:
            config.log(f"multitask: K={count} {dtype}")
            cases.append(run_case(count, dtype, config))
    return {"cases": cases}
