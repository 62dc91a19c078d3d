"""Peak memory of one computation, measured in a fresh subprocess.

``tracemalloc`` does not see torch's allocations, and a process's peak resident
size only grows, so each measurement runs in its own subprocess::

    python benchmarks/memory.py '{"model": "mlp_1m", "op": "bea_fused", ...}'

which builds the model, runs the operation once to warm up (lazy
initialisations, thread pools), and then measures the peak memory of a second
call *above the resting state just before it*:

* CPU: the kernel's high-water mark ``VmHWM`` is reset through
  ``/proc/self/clear_refs`` before the call and read after it, minus ``VmRSS``
  before it. glibc is told to serve every allocation over 64 KiB by ``mmap``
  (``MALLOC_MMAP_THRESHOLD_``) so that freed tensors leave the resident set at
  once instead of lingering in the heap. Without ``clear_refs`` the peak is the
  growth of ``ru_maxrss`` over the call (an underestimate if an earlier peak was
  higher).
* CUDA: ``torch.cuda.max_memory_allocated`` minus ``memory_allocated`` before.

The worker prints one JSON line: the peak, the method, and (for scaling) the
median time of ``repeats`` further calls.
"""

from __future__ import annotations

import gc
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        match = re.search(rf"^{field}:\s+(\d+)\s+kB", handle.read(), re.MULTILINE)
    return int(match.group(1)) if match else -1


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_extra_bytes(fn, device) -> tuple[int, str]:
    """Peak bytes above the resting state during ``fn()``, and how it was measured."""
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        out = fn()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        del out
        return peak - before, "torch.cuda.max_memory_allocated"
    if _reset_peak():
        before = _status_kib("VmRSS")
        out = fn()
        peak = _status_kib("VmHWM")
        del out
        return (peak - before) * 1024, "VmHWM after clear_refs, minus VmRSS before"
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = fn()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    del out
    return (peak - before) * 1024, "growth of ru_maxrss (lower bound)"


def _build(spec: dict, device):
    import contenders
    import models
    import torch

    import bea

    dtype = getattr(torch, spec.get("dtype", "float32"))
    if "scaling_params" in spec:
        model, width = models.scaling_mlp(spec["scaling_params"])
        model_spec = models.Spec(
            "scaling_mlp",
            lambda: model,
            models._classification_batch((spec.get("batch", 32), 64), 10),
            f"MLP 64-{width}-{width}-10",
        )
    else:
        model_spec = models.specs(spec.get("toy", False))[spec["model"]]
    case = models.make_case(model_spec, dtype, device, bind=bea.bind)
    op = spec["op"]
    if op == "two_grads":
        fn = contenders.make_two_grads(case)
    elif op == "bea_fused":

        def fn():
            return bea.lie_bracket(case.loss_a, case.loss_b, case.params)

    elif op in ("bea_forward", "bea_reverse"):
        mode = op.removeprefix("bea_")

        def fn():
            return bea.lie_bracket(case.loss_a, case.loss_b, case.params, mode=mode)

    elif op == "proposed_autograd":
        import prototypes

        def fn():
            return prototypes.bracket_autograd(case.loss_a, case.loss_b, case.params)

    elif op == "pyhessian_style":
        fn = contenders.make_pyhessian_bracket(case)
    elif op == "curvlinops":
        fn = contenders.make_curvlinops_bracket(case)
    else:
        raise ValueError(f"memory worker: unknown op {op!r}")
    return case, fn


def worker(spec: dict) -> dict:
    """Measure ``spec["op"]``, or each of ``spec["ops"]`` in turn (one result per op)."""
    if spec.get("ops"):
        return {op: worker({**spec, "op": op, "ops": None}) for op in spec["ops"]}
    import torch

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    device = torch.device(spec.get("device", "cpu"))
    case, fn = _build(spec, device)
    out = fn()  # warm-up
    del out
    peak, method = peak_extra_bytes(fn, device)
    result = {
        "op": spec["op"],
        "params": case.num_params,
        "peak_extra_bytes": peak,
        "method": method,
        "param_bytes": case.num_params * torch.finfo(case.dtype).bits // 8,
    }
    repeats = spec.get("repeats", 0)
    if repeats:
        times = []
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            out = fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
            del out
        result["median_s"] = statistics.median(times)
        result["times_s"] = times
    return result


def measure_in_subprocess(spec: dict, config) -> dict:
    """Run :func:`worker` on ``spec`` in a fresh Python process and return its answer."""
    spec = {"threads": config.threads, "device": str(config.device), **spec}
    if config.toy:
        # Smoke runs: the same worker in this process (toy sizes are below page size anyway).
        result = worker({**spec, "threads": None})
        for entry in result.values() if "ops" in spec else [result]:
            entry["method"] += " (in-process, toy)"
        return result
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", PYTHONWARNINGS="ignore")
    completed = subprocess.run(
        [sys.executable, str(HERE / "memory.py"), json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
        cwd=HERE,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(
            f"memory worker failed on {spec}: {completed.stderr.strip().splitlines()[-1:]}"
        )
    return json.loads(completed.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    print(json.dumps(worker(json.loads(sys.argv[1]))))
