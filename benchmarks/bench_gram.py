"""``bea.gram`` for K = 2..16 tasks against K separate gradients and torchjd's Gramian engine.

The model is the ~1M-parameter MLP; task k has its own batch. Contenders:

* ``k_grads``  the floor: K autograd gradients, stacked, one K×P by P×K product.
* ``bea_gram`` ``bea.gram(losses, params)``.
* ``proposed_gram`` ``bea.gram`` with plain-autograd gradients (``prototypes.gram_autograd``).
* ``torchjd``  ``torchjd.autogram.Engine(model, batch_dim=None).compute_gramian`` on the
  K task losses from one concatenated forward pass (see ``contenders.make_torchjd_gram``).
"""

from __future__ import annotations

import contenders
import harness
import models
import prototypes
import torch

import bea


def run_case(spec, count: int, dtype, config) -> dict:
    case = models.make_case(spec, dtype, config.device, bind=bea.bind)
    generator = torch.Generator().manual_seed(11)
    batches = [
        tuple(
            t.to(device=config.device, dtype=dtype)
            if t.is_floating_point()
            else t.to(config.device)
            for t in spec.batch(generator, torch.float64)
        )
        for _ in range(count)
    ]
    losses = [bea.bind(case.model, case.criterion, x, y) for x, y in batches]
    made = {
        "k_grads": contenders.make_k_grads_gram(case.model, case.criterion, batches),
        "bea_gram": lambda: bea.gram(losses, case.params),
    }
    if not config.quick:
        # A plain-autograd variant (benchmarks/prototypes.py), timed beside it.
        made["proposed_gram"] = lambda: prototypes.gram_autograd(losses, case.params)
    skipped = {}
    torchjd_run = contenders.make_torchjd_gram(case.model, batches)
    if torchjd_run is None:
        skipped["torchjd"] = "torchjd is not installed"
    else:
        made["torchjd"] = torchjd_run
    results, failed, notes, _ = contenders.first_results(made, optional=("torchjd",))
    agree = harness.agreement(results, "k_grads", dtype)
    del results
    times = harness.time_interleaved(made, config.device, config.repeats, config.warmup)
    return {
        "model": spec.name,
        "K": count,
        "dtype": str(dtype).replace("torch.", ""),
        "params": case.num_params,
        **harness.summarize(times, "k_grads"),
        "agreement": agree,
        "skipped": skipped,
        "failed": failed,
        "notes": notes,
    }


def run(config) -> dict:
    spec = models.specs(config.toy)["mlp_1m"]
    counts = (2, 4, 8) if config.quick else (2, 4, 8, 16)
    cases = []
    # float32 only: the cost structure (K gradients + inner products) does not change
    # with the dtype, and the float64 runs would double the suite's time.
    for dtype in config.dtypes[:1]:
        for count in counts:
            config.log(f"gram: K={count} {dtype}")
            cases.append(run_case(spec, count, dtype, config))
    return {"cases": cases}
