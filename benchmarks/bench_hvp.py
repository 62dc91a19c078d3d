"""``bea.hvp`` in each mode against one gradient, model by model.

Contenders: ``one_grad`` (the floor: one forward and backward with plain
autograd), ``hvp_forward`` (forward-over-reverse), ``hvp_reverse``
(reverse-over-reverse), ``hvp_auto`` (the default), and ``pyhessian_style``
(``create_graph=True`` then ``autograd.grad``). The products are compared with
``hvp_reverse`` before timing.
"""

from __future__ import annotations

import contenders
import harness
import models
import torch

import bea

BASE = "one_grad"


def run_case(case, config) -> dict:
    generator = torch.Generator().manual_seed(7)
    v = {
        k: torch.randn(p.shape, generator=generator, dtype=torch.float64).to(p)
        for k, p in case.params.items()
    }
    made = {
        "one_grad": contenders.make_one_grad(case),
        "hvp_auto": lambda: bea.hvp(case.loss_a, case.params, v),
        "hvp_forward": lambda: bea.hvp(case.loss_a, case.params, v, mode="forward"),
        "hvp_reverse": lambda: bea.hvp(case.loss_a, case.params, v, mode="reverse"),
        "pyhessian_style": contenders.make_pyhessian_hvp(case, list(v.values())),
    }
    results, failed, notes, flops = contenders.first_results(
        made, optional=("hvp_forward", "hvp_auto", "pyhessian_style")
    )
    grad = bea.grad(case.loss_a, case.params)
    agree = harness.agreement(
        {k: r for k, r in results.items() if k != "one_grad"}, "hvp_reverse", case.dtype
    )
    agree["one_grad"] = harness.agreement(
        {"one_grad": results["one_grad"], "bea_grad": grad}, "bea_grad", case.dtype
    )["one_grad"]
    del results, grad
    times = harness.time_interleaved(made, case.device, config.repeats, config.warmup)
    return {
        "model": case.name,
        "description": case.description,
        "dtype": str(case.dtype).replace("torch.", ""),
        "params": case.num_params,
        **harness.summarize(times, "one_grad"),
        "agreement": agree,
        "failed": failed,
        "notes": notes,
        "flops": flops,
        "flop_ratio": {k: f / flops[BASE] for k, f in flops.items() if k != BASE and flops[BASE]},
    }


def run(config) -> dict:
    specs = models.specs(config.toy)
    names = ["mlp_1m", "cnn", "transformer"]
    dtypes = config.dtypes[:1] if config.quick else config.dtypes
    cases = []
    for dtype in dtypes:
        for name in names:
            case = models.make_case(specs[name], dtype, config.device, bind=bea.bind)
            config.log(f"hvp: {name} {dtype}")
            cases.append(run_case(case, config))
    return {"cases": cases}
