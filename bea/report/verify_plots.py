"""Log-log plots of discretization drift against ``h`` for ``bea verify``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def plot_drift(checks: Sequence, out_dir: Path) -> list[Path]:
    """One PNG per setting (checks grouped by the part of the name before ``/``).

    Each panel shows ``drift(h)`` for every check of the setting, with a reference line
    of the expected slope through the smallest ``h``.

    Returns:
        The paths written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    groups: dict[str, list] = {}
    for check in checks:
        if not check.drift:
            continue
        family = check.name.split("/")[0].split("-")[0]
        point = "/".join(check.name.split("/")[1:])
        groups.setdefault(f"{family}-{point}" if point else family, []).append(check)
    written = []
    for group, members in groups.items():
        figure, axis = plt.subplots(figsize=(5.5, 4.2))
        for check in members:
            h = np.asarray(check.h)
            drift = np.asarray(check.drift)
            label = f"{check.name.split('/')[0]} ({check.fitted_slope:.2f}, expect {check.expected_slope:g})"
            (line,) = axis.loglog(h, drift, "o-", label=label)
            if check.expected_slope is not None and drift[-1] > 0:
                reference = drift[-1] * (h / h[-1]) ** check.expected_slope
                axis.loglog(h, reference, ":", color=line.get_color(), alpha=0.6)
        axis.set_xlabel("h")
        axis.set_ylabel("drift |flow(h) - step(h)|")
        axis.set_title(group)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7)
        figure.tight_layout()
        path = out_dir / f"drift-{_safe(group)}.png"
        figure.savefig(path, dpi=110)
        plt.close(figure)
        written.append(path)
    return written
