"""Render ``benchmarks/results/*.json`` into the tables of ``docs/performance.md``.

    python benchmarks/report_md.py            # rewrites docs/performance.md

The prose around the tables lives in ``docs/performance_notes.md`` (hand-written
analysis) and is appended as is.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import harness  # noqa: E402

ROOT = HERE.parent
RESULTS = HERE / "results"
DOC = ROOT / "docs" / "performance.md"
NOTES = ROOT / "docs" / "performance_notes.md"


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _ms(seconds) -> str:
    return "–" if seconds is None else f"{1000 * seconds:.1f}"


def _x(value) -> str:
    return "–" if value is None else f"{value:.2f}×"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def _contender_table(cases: list[dict], keys: list[str], extra=None) -> list[str]:
    """One row per case: medians (ms) and paired ratios of every contender."""
    contenders: list[str] = []
    for case in cases:
        for name in case.get("median_s", {}):
            if name not in contenders:
                contenders.append(name)
    header = keys + [f"{c} ms (ratio)" for c in contenders]
    if extra:
        header += [title for title, _ in extra]
    rows = []
    for case in cases:
        if "median_s" not in case:
            continue
        row = [str(case.get(k, "")) for k in keys]
        for c in contenders:
            median = case["median_s"].get(c)
            if median is None:
                why = case.get("failed", {}).get(c) or case.get("skipped", {}).get(c)
                row.append("n/a" if why is None else "n/a¹")
                continue
            ratio = case["ratio"].get(c)
            cell = _ms(median) + ("" if ratio is None else f" ({_x(ratio)})")
            agree = case.get("agreement", {}).get(c)
            if agree is not None and not agree["agree"]:
                cell += " ≠"
            row.append(cell)
        if extra:
            row += [fn(case) for _, fn in extra]
        rows.append(row)
    return _table(header, rows)


def _machine_line(payload: dict) -> str:
    m = payload["machine"]
    return (
        f"{m['cpu_model']}, {m['cpu_cores']} cores (shared), torch {m['torch']}, "
        f"{m['torch_threads']} torch thread(s), device {m['device']}, "
        f"load average {m['load_average_1m']:.1f} at the start"
    )


def render() -> str:
    lines = [
        "# Performance",
        "",
        "How much bea's derivatives cost next to the floor (the gradients they are made of)",
        "and next to other ways of computing the same numbers. Every table below comes from",
        "one command and is rebuilt from the JSON it writes:",
        "",
        "```",
        "python benchmarks/run.py --save            # full suite, 7–11 min on 2 busy cores",
        "python benchmarks/report_md.py             # rewrites this page from benchmarks/results/",
        "```",
        "",
        "`python benchmarks/run.py --quick` is the 2-minute version and `--json` prints one",
        "JSON object instead of the table. Method: each contender is run once and compared",
        "with bea's result (relative error, float64 tolerance 1e-8, float32 2e-3) before any",
        "timing; then all contenders of a case run *interleaved*, round by round in rotated",
        "order, after a warm-up round. A time is the median over rounds; a ratio is the median",
        "of the per-round ratios to the baseline, so the machine's load (shared by several",
        "people) hits both sides of a ratio alike. `≠` marks a contender whose result",
        "disagrees with bea's; `n/a¹` one that could not run (see the JSON for why).",
        "",
    ]
    payloads = {
        name: _load(name)
        for name in ("bracket", "hvp", "gram", "multitask", "monitors", "scaling", "verify")
    }
    first = next((p for p in payloads.values() if p), None)
    if first is None:
        return "\n".join(lines + ["No results yet: run the commands above."])
    lines += [f"Machine: {_machine_line(first)}.", ""]

    targets = []
    for payload in payloads.values():
        if payload and "targets" in payload:
            targets += payload["targets"]
    if targets:
        lines += ["## Targets", ""]
        rows = []
        for t in targets:
            sign = "≤" if t["kind"] == "max" else "≥"
            mark = {True: "met", False: "**missed**", None: "n/a"}[t["met"]]
            value = "–" if t["value"] is None else f"{t['value']:.3g}"
            rows.append([t["name"], value, f"{sign} {t['limit']}", mark, t.get("note", "")])
        lines += _table(["target", "measured", "limit", "", "how"], rows) + [""]

    bracket = payloads["bracket"]
    if bracket:
        cases = bracket["bracket"]["cases"]
        lines += [
            "## Lie bracket",
            "",
            "`bea.lie_bracket` (`bea_fused`, the default mode) against the two gradients alone",
            "(`two_grads`, plain autograd on the module), `bea_forward` (its forward-over-reverse",
            "mode), two Hessian-vector products the way PyHessian does them (`pyhessian_style`),",
            "curvlinops' `HessianLinearOperator` (`curvlinops`), two dense `torch.func.hessian`",
            "matrices on the small MLP (`dense_hessian`), and a functorch-free variant of the",
            "fused pass (`proposed_autograd`, see below). Ratios are to `two_grads`; `flops` is",
            "the ratio of counted",
            "matmul/conv flops of `bea_fused` to `two_grads` (a floor for the time ratio of any",
            "exact double-backward or forward-over-reverse bracket).",
            "",
        ]
        lines += _contender_table(
            cases,
            ["model", "dtype", "params"],
            extra=[
                ("flops", lambda c: _x(c.get("flop_ratio", {}).get("bea_fused"))),
                (
                    "speed-up vs pyhessian",
                    lambda c: (
                        _x(harness.paired_speedup(c["times_s"], "pyhessian_style", "bea_fused"))
                        if "pyhessian_style" in c["times_s"]
                        else "–"
                    ),
                ),
            ],
        )
        lines += [""]
        for case in cases:
            for name, note in case.get("notes", {}).items():
                lines.append(f"- {case['model']} {case['dtype']}, `{name}`: {note.split(' (')[0]}.")
        lines += [""]
        memory = bracket["bracket"].get("memory", [])
        if memory:
            lines += [
                "Peak memory above the resting state (float32, one fresh process per",
                f"measurement; {memory[0]['method']}):",
                "",
            ]
            ops = []
            for case in memory:
                ops += [op for op in case["peak_extra_bytes"] if op not in ops]
            rows = []
            for case in memory:
                row = [case["model"]]
                for op in ops:
                    b = case["peak_extra_bytes"].get(op)
                    r = case["ratio"].get(op)
                    if b is None:
                        row.append("–")
                        continue
                    row.append(f"{b / 2**20:.1f} MiB" + ("" if r is None else f" ({_x(r)})"))
                rows.append(row)
            lines += _table(["model"] + ops, rows) + [""]

    hvp = payloads["hvp"]
    if hvp:
        lines += [
            "## Hessian-vector products",
            "",
            "`bea.hvp` in each mode against one gradient (`one_grad`, plain autograd) and the",
            "PyHessian-style product.",
            "",
        ]
        lines += _contender_table(
            hvp["hvp"]["cases"],
            ["model", "dtype", "params"],
            extra=[("flops (auto)", lambda c: _x(c.get("flop_ratio", {}).get("hvp_auto")))],
        )
        lines += [""]

    gram = payloads["gram"]
    if gram:
        lines += [
            "## Gram matrices",
            "",
            "`bea.gram` for K tasks (each its own batch of 128) on the 1M MLP, against K",
            "separate autograd gradients (`k_grads`) and torchjd's autogram `Engine`",
            "(`torchjd`, one concatenated forward pass, `batch_dim=None`); `proposed_gram` is",
            "`bea.gram` with plain-autograd gradients (`prototypes.gram_autograd`).",
            "",
        ]
        lines += _contender_table(gram["gram"]["cases"], ["K", "dtype", "params"]) + [""]

    multitask = payloads["multitask"]
    if multitask:
        lines += [
            "## Multitask terms",
            "",
            "`bea.multitask_terms` (shared trunk 784-1024-256, K linear heads) against the K",
            "task gradients alone and against the same terms written directly.",
            "",
        ]
        lines += _contender_table(multitask["multitask"]["cases"], ["K", "dtype", "params"]) + [""]

    monitors = payloads["monitors"]
    if monitors:
        lines += ["## Monitor overhead", ""]
        rows = []
        for case in monitors["monitors"]["cases"]:
            if "failed" in case:
                rows.append([case["monitor"], "failed", case["failed"][:80], "", "", ""])
                continue
            rows.append(
                [
                    case["monitor"],
                    case["description"],
                    ", ".join(f"{k}={v}" for k, v in case["default_sampling"].items()),
                    f"{case['median_s']['without_monitor']:.2f}",
                    f"{case['median_s']['with_monitor']:.2f}",
                    f"{100 * case['overhead']:.0f}%",
                ]
            )
        lines += _table(
            ["monitor", "training run", "default sampling", "without (s)", "with (s)", "overhead"],
            rows,
        )
        lines += [""]

    scaling = payloads["scaling"]
    if scaling:
        result = scaling["scaling"]
        lines += [
            "## Scaling with the number of parameters",
            "",
            f"{result['model']}; each point is a fresh process ({result['method']}).",
            f"Log-log slopes fitted from P = {result['fit_from_params']:,} up:",
            ", ".join(f"{k} {v:.2f}" for k, v in result["slopes"].items() if v is not None) + ".",
            "",
            "![time and peak memory against P](../benchmarks/results/scaling.png)",
            "",
        ]
        rows = []
        for row in result["rows"]:
            rows.append(
                [
                    f"{row['params']:,}",
                    _ms(row["two_grads"]["median_s"]),
                    _ms(row["bea_fused"]["median_s"]),
                    _x(row["time_ratio"]),
                    f"{row['two_grads']['peak_extra_bytes'] / 2**20:.1f}",
                    f"{row['bea_fused']['peak_extra_bytes'] / 2**20:.1f}",
                    _x(row["memory_ratio"]),
                ]
            )
        lines += _table(
            [
                "P",
                "two grads ms",
                "bracket ms",
                "time ratio",
                "two grads MiB",
                "bracket MiB",
                "memory ratio",
            ],
            rows,
        )
        lines += [""]

    verify = payloads["verify"]
    if verify:
        v = verify["verify"]
        lines += [
            "## bea verify",
            "",
            f"`bea verify --json` (defaults): {v['wall_s_command']:.1f} s, exit code {v['returncode']}.",
            "",
        ]
    if NOTES.exists():
        lines += [NOTES.read_text().rstrip(), ""]
    return "\n".join(lines)


def main() -> int:
    scaling = _load("scaling")
    if scaling:
        import bench_scaling

        bench_scaling.plot(scaling["scaling"], RESULTS / "scaling.png")
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(render() + "\n")
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
