"""The issue's performance targets, checked against one run's results, and a text table."""

from __future__ import annotations

import harness

BRACKET_TIME_LIMITS = {"mlp_1m": 2.0, "cnn": 2.5, "transformer": 2.5}
BRACKET_MEMORY_LIMIT = 2.0
PEER_SPEEDUP = 1.25
MONITOR_OVERHEAD = 0.10
VERIFY_SECONDS = 60.0


def _target(name: str, value, limit: float, kind: str, note: str = "") -> dict:
    if value is None:
        met = None
    elif kind == "max":
        met = bool(value <= limit)
    else:
        met = bool(value >= limit)
    return {"name": name, "value": value, "limit": limit, "kind": kind, "met": met, "note": note}


def evaluate(benchmarks: dict) -> list[dict]:
    """Each target with its measured value (``None`` when the benchmark did not run)."""
    out = []
    bracket = benchmarks.get("bracket")
    if bracket:
        for case in bracket["cases"]:
            limit = BRACKET_TIME_LIMITS.get(case["model"])
            if limit is None:
                continue
            label = f"{case['model']} {case['dtype']}"
            out.append(
                _target(
                    f"lie_bracket / two gradients, time, {label}",
                    case["ratio"].get("bea_fused"),
                    limit,
                    "max",
                    "median of per-round ratios, interleaved",
                )
            )
            for peer in ("pyhessian_style", "curvlinops"):
                if peer in case["times_s"]:
                    target = _target(
                        f"speed-up of lie_bracket over {peer}, {label}",
                        harness.paired_speedup(case["times_s"], peer, "bea_fused"),
                        PEER_SPEEDUP,
                        "min",
                        "median of per-round t_peer / t_bea, interleaved",
                    )
                    if not case["agreement"].get(peer, {}).get("agree", True):
                        target["met"] = None
                        target["note"] = "not comparable: the peer's result disagrees with bea's"
                    out.append(target)
        for case in bracket.get("memory", []):
            out.append(
                _target(
                    f"lie_bracket / two gradients, peak memory, {case['model']} {case['dtype']}",
                    case["ratio"].get("bea_fused"),
                    BRACKET_MEMORY_LIMIT,
                    "max",
                    case["method"],
                )
            )
    scaling = benchmarks.get("scaling")
    if scaling and scaling.get("largest"):
        largest = scaling["largest"]
        out.append(
            _target(
                f"lie_bracket / two gradients, peak memory, scaling MLP P={largest['params']}",
                largest["memory_ratio"],
                BRACKET_MEMORY_LIMIT,
                "max",
                "fresh subprocess per measurement",
            )
        )
    monitors = benchmarks.get("monitors")
    if monitors:
        for case in monitors["cases"]:
            out.append(
                _target(
                    f"monitor overhead, {case['monitor']}",
                    case.get("overhead"),
                    MONITOR_OVERHEAD,
                    "max",
                    "training wall time with / without monitor - 1, interleaved",
                )
            )
    verify = benchmarks.get("verify")
    if verify and verify.get("wall_s_command") is not None:
        out.append(
            _target(
                "bea verify (default) wall time, s", verify["wall_s_command"], VERIFY_SECONDS, "max"
            )
        )
    return out


def _ms(seconds) -> str:
    return "-" if seconds is None else f"{1000 * seconds:.1f}"


def _case_title(case: dict) -> str:
    keys = ("model", "dtype", "params", "K", "monitor")
    return "  ".join(f"{k}={case[k]}" for k in keys if k in case)


def render(report: dict) -> str:
    """A readable table of every benchmark's medians and ratios, then the targets."""
    m = report["machine"]
    lines = [
        f"bea benchmarks  ({m['cpu_model']}, {m['cpu_cores']} cores, torch {m['torch']}, "
        f"{m['torch_threads']} thread(s), device {m['device']}, load {m['load_average_1m']:.2f})",
        f"command: {report['command']}",
    ]
    for name, bench in report["benchmarks"].items():
        lines.append("")
        lines.append(f"== {name}  ({bench.get('wall_s', 0):.0f} s)")
        for case in bench.get("cases", []):
            if "median_s" not in case:
                continue
            lines.append(f"  {_case_title(case)}")
            lines.append(f"    {'contender':<22}{'median ms':>11}{'ratio':>9}{'rel. error':>12}")
            agreement = case.get("agreement", {})
            for contender, median in case["median_s"].items():
                ratio = case["ratio"].get(contender)
                error = agreement.get(contender, {}).get("relative_error")
                lines.append(
                    f"    {contender:<22}{_ms(median):>11}"
                    f"{('baseline' if ratio is None else f'{ratio:.2f}x'):>9}"
                    f"{('' if error is None else f'{error:.1e}'):>12}"
                )
            for key in ("skipped", "failed"):
                for contender, why in case.get(key, {}).items():
                    lines.append(f"    {contender:<22}{key}: {why}")
        for case in bench.get("memory", []):
            peaks = ", ".join(
                f"{op} {b / 2**20:.1f} MiB" for op, b in case["peak_extra_bytes"].items()
            )
            ratios = ", ".join(f"{op} {r:.2f}x" for op, r in case["ratio"].items())
            lines.append(f"  peak memory {case['model']} {case['dtype']}: {peaks}  ({ratios})")
        if name == "scaling":
            for row in bench["rows"]:
                lines.append(
                    f"  P={row['params']:>9}  two_grads {_ms(row['two_grads']['median_s']):>9} ms "
                    f"{row['two_grads']['peak_extra_bytes'] / 2**20:8.1f} MiB   "
                    f"bracket {_ms(row['bea_fused']['median_s']):>9} ms "
                    f"{row['bea_fused']['peak_extra_bytes'] / 2**20:8.1f} MiB"
                )
            for key, fit in bench["slopes"].items():
                lines.append(f"  log-log slope {key}: " + ("-" if fit is None else f"{fit:.2f}"))
        if name == "verify":
            lines.append(
                f"  bea verify --json: {bench['wall_s_command']:.1f} s, "
                f"exit code {bench['returncode']}"
            )
    lines.append("")
    lines.append("== targets")
    for target in report["targets"]:
        mark = {True: "MET ", False: "MISS", None: "n/a "}[target["met"]]
        value = "-" if target["value"] is None else f"{target['value']:.3g}"
        sign = "<=" if target["kind"] == "max" else ">="
        lines.append(f"  [{mark}] {target['name']}: {value} ({sign} {target['limit']})")
    for name, why in report["skipped"].items():
        lines.append(f"  skipped {name}: {why}")
    lines.append(f"total wall time {report['wall_s']:.0f} s")
    return "\n".join(lines)
