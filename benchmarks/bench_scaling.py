"""Time and peak memory of ``bea.lie_bracket`` and of the two gradients as P grows.

An MLP 64-w-w-10 (GELU, batch 32) with P from 1e4 to 1e7 parameters; each
(size, operation) runs in a fresh subprocess (``memory.py``) that measures the
peak memory of one call above the resting state, then the median time of a few
more calls. A log-log fit over the sizes from 1e5 up gives the growth exponents:
linear growth means slope 1 (a hidden P² would show as 2).
"""

from __future__ import annotations

import memory
import numpy as np

FULL_SIZES = (10_000, 100_000, 300_000, 1_000_000, 3_000_000, 10_000_000)
QUICK_SIZES = (10_000, 100_000, 1_000_000)
TOY_SIZES = (1_000, 4_000)
OPS = ("two_grads", "bea_fused")
FIT_FROM = 90_000


def slope(sizes, values) -> float | None:
    """Least-squares slope of ``log(values)`` against ``log(sizes)``.

    Non-positive values (a peak below one page reads as 0) are left out; ``None``
    when fewer than two points remain.
    """
    sizes = np.asarray(sizes, dtype=float)
    values = np.asarray(values, dtype=float)
    keep = values > 0
    if keep.sum() < 2:
        return None
    x = np.log(sizes[keep])
    y = np.log(values[keep])
    x = x - x.mean()
    return float((x * (y - y.mean())).sum() / (x * x).sum())


def run(config) -> dict:
    sizes = TOY_SIZES if config.toy else QUICK_SIZES if config.quick else FULL_SIZES
    rows = []
    for size in sizes:
        row = {"target_params": size}
        spec = {"scaling_params": size, "dtype": "float32", "repeats": 7 if size <= 1e6 else 3}
        if config.quick or config.toy:
            # Quick runs measure both operations in one process (peak reset between them).
            config.log(f"scaling: P~{size:.0e} {OPS}")
            row.update(memory.measure_in_subprocess({**spec, "ops": list(OPS)}, config))
        else:
            for op in OPS:
                config.log(f"scaling: P~{size:.0e} {op}")
                row[op] = memory.measure_in_subprocess({**spec, "op": op}, config)
        row["params"] = row["two_grads"]["params"]
        row["time_ratio"] = row["bea_fused"]["median_s"] / row["two_grads"]["median_s"]
        base = row["two_grads"]["peak_extra_bytes"]
        row["memory_ratio"] = row["bea_fused"]["peak_extra_bytes"] / base if base > 0 else None
        rows.append(row)
    fit_rows = [r for r in rows if r["params"] >= FIT_FROM]
    if len(fit_rows) < 3:
        fit_rows = rows
    params = [r["params"] for r in fit_rows]
    slopes = {
        f"{what} {op}": slope(params, [r[op][key] for r in fit_rows])
        for op in OPS
        for what, key in (("time", "median_s"), ("memory", "peak_extra_bytes"))
    }
    out = {
        "model": "MLP 64-w-w-10, GELU, batch 32, float32",
        "fit_from_params": fit_rows[0]["params"],
        "rows": rows,
        "slopes": slopes,
        "largest": {
            "params": rows[-1]["params"],
            "time_ratio": rows[-1]["time_ratio"],
            "memory_ratio": rows[-1]["memory_ratio"],
        },
        "method": rows[0]["two_grads"]["method"],
    }
    if config.save:
        out["plot"] = plot(out, config.results_dir / "scaling.png")
    return out


def plot(result: dict, path) -> str:
    """Log-log plot of time and peak memory against P, with a slope-1 guide.

    The slopes in the legend are fitted from ``result["fit_from_params"]`` up.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    params = np.array([r["params"] for r in rows], dtype=float)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    labels = {"two_grads": "two gradients (floor)", "bea_fused": "bea.lie_bracket"}
    for ax, key, unit, scale, title in (
        (axes[0], "median_s", "time per call (s)", 1.0, "time"),
        (axes[1], "peak_extra_bytes", "peak extra memory (MiB)", 2.0**-20, "memory"),
    ):
        for op in OPS:
            values = np.array([r[op][key] for r in rows], dtype=float) * scale
            shown = values > 0  # a peak below one page reads as 0: nothing to draw on a log axis
            fit = result["slopes"][f"{title} {op}"]
            label = labels[op] if fit is None else f"{labels[op]} (slope {fit:.2f})"
            ax.loglog(params[shown], values[shown], "o-", label=label)
        top = np.array([r["bea_fused"][key] for r in rows], dtype=float) * scale
        ax.loglog(params, top[-1] * params / params[-1], "k:", label="slope 1")
        ax.set_xlabel("parameters P")
        ax.set_ylabel(unit)
        ax.set_title(f"{title} vs P ({result['model']})", fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
