"""Timing, agreement and machine description shared by the benchmarks.

Timings on a shared machine are noisy, so every benchmark times its contenders
*interleaved*: each round runs every contender once, in an order rotated from
round to round, after a few warm-up rounds. A contender's time is the median
over rounds; its ratio to the baseline is the median over rounds of the
per-round ratio ``t_contender / t_baseline`` (paired, so load that hits one round
hits both numbers alike), reported beside the plain ratio of medians.
"""

from __future__ import annotations

import gc
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping

import torch

Result = object  # a tensor, a dict of tensors, or a tuple of them


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (falls back to ``platform``)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description(device: torch.device) -> dict:
    """What the numbers were measured on."""
    description = {
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else None,
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        description["gpu"] = torch.cuda.get_device_name(device)
        description["cuda"] = torch.version.cuda
    return description


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Result], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    elapsed = time.perf_counter() - start
    del out
    return elapsed


def time_interleaved(
    contenders: Mapping[str, Callable[[], Result]],
    device: torch.device,
    repeats: int,
    warmup: int = 1,
) -> dict[str, list[float]]:
    """Seconds per call of each contender, ``repeats`` interleaved rounds after ``warmup``.

    Round ``r`` runs the contenders in the order rotated by ``r``, so none is
    always first (cold caches) or always last.
    """
    names = list(contenders)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(warmup + repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            elapsed = _timed(contenders[name], device)
            if round_index >= warmup:
                times[name].append(elapsed)
        gc.collect()
    return times


def summarize(times: Mapping[str, list[float]], baseline: str) -> dict:
    """Medians, and ratios to ``baseline`` (paired median and ratio of medians)."""
    medians = {name: statistics.median(values) for name, values in times.items()}
    base = times[baseline]
    ratios = {}
    ratios_of_medians = {}
    for name, values in times.items():
        if name == baseline:
            continue
        ratios[name] = statistics.median(v / b for v, b in zip(values, base, strict=True))
        ratios_of_medians[name] = medians[name] / medians[baseline]
    spread = {
        name: (max(values) - min(values)) / statistics.median(values) if values else None
        for name, values in times.items()
    }
    return {
        "baseline": baseline,
        "median_s": medians,
        "ratio": ratios,
        "ratio_of_medians": ratios_of_medians,
        "relative_spread": spread,
        "repeats": len(base),
        "times_s": {name: list(values) for name, values in times.items()},
    }


def paired_speedup(times: Mapping[str, list[float]], slow: str, fast: str) -> float:
    """Median over rounds of ``t_slow / t_fast`` (how many times faster ``fast`` is)."""
    return statistics.median(s / f for s, f in zip(times[slow], times[fast], strict=True))


def _flatten(result: Result) -> torch.Tensor:
    if isinstance(result, torch.Tensor):
        return result.detach().reshape(-1)
    if isinstance(result, Mapping):
        return torch.cat([v.detach().reshape(-1) for v in result.values()])
    if isinstance(result, (list, tuple)):
        return torch.cat([_flatten(r) for r in result])
    raise TypeError(f"cannot compare a result of type {type(result).__name__}")


def relative_error(result: Result, reference: Result) -> float:
    """``‖result − reference‖ / ‖reference‖`` in float64 over all entries."""
    a = _flatten(result).to(torch.float64).cpu()
    b = _flatten(reference).to(torch.float64).cpu()
    if a.shape != b.shape:
        raise ValueError(f"results have {a.numel()} and {b.numel()} entries")
    scale = float(b.norm())
    diff = float((a - b).norm())
    return diff / scale if scale > 0 else diff


def tolerance(dtype: torch.dtype) -> float:
    """Agreement tolerance between contenders computing the same quantity.

    Contenders sum in different orders; a bracket is a difference of two
    Hessian-vector products, so float32 loses a few digits to cancellation.
    """
    return 1e-8 if dtype == torch.float64 else 2e-3


def agreement(results: Mapping[str, Result], reference: str, dtype: torch.dtype) -> dict[str, dict]:
    """Relative error of every result against ``results[reference]``."""
    tol = tolerance(dtype)
    out = {}
    for name, result in results.items():
        if name == reference:
            continue
        error = relative_error(result, results[reference])
        out[name] = {"relative_error": error, "tolerance": tol, "agree": bool(error <= tol)}
    return out
