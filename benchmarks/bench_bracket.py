"""``bea.lie_bracket`` against the floor and against peers, model by model.

Contenders (all compute ``[g_a, g_b] = H_b g_a − H_a g_b`` except the floor):

* ``two_grads``       the floor: ``g_a`` and ``g_b`` with plain autograd.
* ``bea_fused``       ``bea.lie_bracket`` (default mode, one fused reverse pass).
* ``bea_forward``     ``bea.lie_bracket(mode="forward")`` (forward-over-reverse).
* ``bea_reverse``     ``bea.lie_bracket(mode="reverse")`` (two products, one graph at a time).
* ``pyhessian_style`` two products with ``create_graph=True`` + ``autograd.grad``.
* ``curvlinops``      two mat-vecs with curvlinops' ``HessianLinearOperator``.
* ``dense_hessian``   two dense ``torch.func.hessian`` matrices (small model only).
* ``proposed_autograd`` the fused pass with plain autograd (``prototypes.py``); full runs only.

Every contender's result is compared with ``bea_fused`` before any timing.
"""

from __future__ import annotations

import contenders
import harness
import memory
import models
import prototypes
import torch

import bea

DENSE_MAX_PARAMS = 5_000
BASE = "two_grads"


def _contenders(case, quick: bool) -> tuple[dict, dict]:
    made = {
        "two_grads": contenders.make_two_grads(case),
        "bea_fused": lambda: bea.lie_bracket(case.loss_a, case.loss_b, case.params),
    }
    skipped = {}
    light = quick or case.dtype == torch.float64
    if not light:
        made["bea_forward"] = lambda: bea.lie_bracket(
            case.loss_a, case.loss_b, case.params, mode="forward"
        )
        # One gradient graph alive at a time: the low-memory mode.
        made["bea_reverse"] = lambda: bea.lie_bracket(
            case.loss_a, case.loss_b, case.params, mode="reverse"
        )
    if not quick:
        # A functorch-free variant of the fused pass (benchmarks/prototypes.py), beside it.
        made["proposed_autograd"] = lambda: prototypes.bracket_autograd(
            case.loss_a, case.loss_b, case.params
        )
    made["pyhessian_style"] = contenders.make_pyhessian_bracket(case)
    in_float64 = case.dtype == torch.float64
    curvlinops_run = None if in_float64 else contenders.make_curvlinops_bracket(case)
    if in_float64:
        skipped["curvlinops"] = "timed in float32 only (time budget)"
    elif curvlinops_run is None:
        skipped["curvlinops"] = "curvlinops-for-pytorch is not installed"
    else:
        made["curvlinops"] = curvlinops_run
    if case.name == "mlp_small" and case.num_params <= DENSE_MAX_PARAMS:
        made["dense_hessian"] = contenders.make_dense_bracket(case)
    else:
        skipped["dense_hessian"] = f"{case.num_params} parameters: P x P Hessian not formed"
    return made, skipped


def run_case(case, config) -> dict:
    made, skipped = _contenders(case, config.quick)
    # Agreement first: every bracket against bea's, the floor's gradients against bea's.
    results, failed, notes, flops = contenders.first_results(
        made,
        optional=("bea_forward", "bea_reverse", "pyhessian_style", "curvlinops", "dense_hessian"),
    )
    grads = bea.lie_bracket(case.loss_a, case.loss_b, case.params, return_grads=True)
    agree = harness.agreement(
        {k: v for k, v in results.items() if k != "two_grads"}, "bea_fused", case.dtype
    )
    agree["two_grads"] = harness.agreement(
        {"two_grads": results["two_grads"], "bea": [grads.grad_a, grads.grad_b]},
        "bea",
        case.dtype,
    )["two_grads"]
    del results, grads
    repeats = config.repeats if case.dtype != torch.float64 else min(config.repeats, 3)
    times = harness.time_interleaved(made, case.device, repeats, config.warmup)
    summary = harness.summarize(times, "two_grads")
    return {
        "model": case.name,
        "description": case.description,
        "dtype": str(case.dtype).replace("torch.", ""),
        "params": case.num_params,
        **summary,
        "agreement": agree,
        "skipped": skipped,
        "failed": failed,
        "notes": notes,
        "flops": flops,
        "flop_ratio": {k: f / flops[BASE] for k, f in flops.items() if k != BASE and flops[BASE]},
    }


def run(config) -> dict:
    specs = models.specs(config.toy)
    names = ["mlp_small", "mlp_1m", "cnn", "transformer"]
    cases = []
    for dtype in config.dtypes:
        for name in names:
            case = models.make_case(specs[name], dtype, config.device, bind=bea.bind)
            config.log(f"bracket: {name} {dtype} ({case.num_params} params)")
            cases.append(run_case(case, config))
    out = {"cases": cases}
    if config.memory:
        out["memory"] = memory_cases(config)
    return out


def _memory_ops(name: str, quick: bool) -> list[str]:
    if quick:
        return ["two_grads", "bea_fused"]
    ops = ["two_grads", "bea_fused", "bea_reverse", "proposed_autograd"]
    if name != "mlp_1m":
        ops.append("bea_forward")  # forward-over-reverse keeps no backward graph
    if name == "mlp_1m":
        ops.append("pyhessian_style")
        if contenders.curvlinops_available():
            ops.append("curvlinops")
    return ops


def memory_cases(config) -> list[dict]:
    """Peak memory above the resting state, one fresh subprocess per (model, contender)."""
    out = []
    names = ["mlp_1m"] if config.quick else ["mlp_1m", "cnn", "transformer"]
    for name in names:
        ops = _memory_ops(name, config.quick)
        peaks = {}
        for op in ops:
            config.log(f"bracket memory: {name} {op}")
            peaks[op] = memory.measure_in_subprocess(
                {"model": name, "op": op, "dtype": "float32", "toy": config.toy}, config
            )
        base = peaks["two_grads"]["peak_extra_bytes"]
        out.append(
            {
                "model": name,
                "dtype": "float32",
                "peak_extra_bytes": {op: p["peak_extra_bytes"] for op, p in peaks.items()},
                "ratio": {
                    op: p["peak_extra_bytes"] / base
                    for op, p in peaks.items()
                    if op != "two_grads" and base > 0
                },
                "method": peaks["two_grads"]["method"],
            }
        )
    return out
