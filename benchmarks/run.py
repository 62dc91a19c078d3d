"""Run bea's benchmark suite.

    python benchmarks/run.py [--quick] [--device cpu|cuda] [--json] [--only NAME] [--save]

Each benchmark times bea against a floor and against peers *in the same run*,
interleaved round by round, and reports medians and ratios (see
``benchmarks/harness.py``). ``--json`` prints exactly one JSON object on stdout
(progress goes to stderr); without it a readable table is printed. ``--save``
writes ``benchmarks/results/<name>.json`` per benchmark (and the scaling plot),
which ``docs/performance.md`` quotes.

Benchmarks: bracket, hvp, gram, multitask, monitors, scaling, verify.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import harness  # noqa: E402
import targets  # noqa: E402
import torch  # noqa: E402

BENCHMARKS = ("bracket", "hvp", "gram", "multitask", "monitors", "scaling", "verify")
RESULTS = HERE / "results"


class Config:
    """What a benchmark needs to know about this run."""

    def __init__(self, args: argparse.Namespace):
        self.quick = args.quick
        self.toy = args.toy
        self.device = torch.device(args.device)
        self.threads = args.threads
        dtypes = args.dtypes or ("float32" if args.quick else "float32,float64")
        self.dtypes = [getattr(torch, d) for d in dtypes.split(",")]
        if args.repeats is not None:
            self.repeats = args.repeats
        else:
            self.repeats = 3 if (args.quick or args.toy) else 5
        self.warmup = args.warmup
        self.memory = not args.no_memory
        self.results_dir = RESULTS
        self.save = args.save
        self.verbose = not args.quiet

    def log(self, message: str) -> None:
        if self.verbose:
            print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    def as_dict(self) -> dict:
        return {
            "quick": self.quick,
            "toy": self.toy,
            "device": str(self.device),
            "threads": self.threads,
            "dtypes": [str(d).replace("torch.", "") for d in self.dtypes],
            "repeats": self.repeats,
            "warmup": self.warmup,
            "memory": self.memory,
        }


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and cases (~2 min)")
    parser.add_argument("--toy", action="store_true", help="toy model sizes (smoke tests)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--only", action="append", default=None, help=f"run only these ({', '.join(BENCHMARKS)})"
    )
    parser.add_argument("--save", action="store_true", help="write benchmarks/results/<name>.json")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument(
        "--dtypes", default=None, help="comma list (default float32,float64; --quick float32)"
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per case")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--no-memory", action="store_true", help="skip subprocess memory runs")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    args = parser.parse_args(argv)
    if args.only:
        chosen = [name for entry in args.only for name in entry.split(",") if name]
        unknown = sorted(set(chosen) - set(BENCHMARKS))
        if unknown:
            parser.error(f"--only: unknown benchmark(s) {unknown}; choose from {BENCHMARKS}")
        args.only = chosen
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    return args


def _module(name: str):
    return __import__(f"bench_{name}")


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    config = Config(args)
    chosen = args.only or list(BENCHMARKS)
    if args.only and "verify" in args.only:
        args.quick = config.quick = config.quick and False
    started = time.perf_counter()
    report = {
        "command": "python benchmarks/run.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": harness.machine_description(config.device),
        "config": config.as_dict(),
        "benchmarks": {},
        "skipped": {},
    }
    for name in chosen:
        config.log(f"== {name}")
        t0 = time.perf_counter()
        result = _module(name).run(config)
        if result is None or result.get("skipped"):
            report["skipped"][name] = (result or {}).get("skipped", "not available")
            continue
        result["wall_s"] = time.perf_counter() - t0
        report["benchmarks"][name] = result
        if config.save:
            RESULTS.mkdir(exist_ok=True)
            payload = {k: report[k] for k in ("command", "machine", "config")}
            payload[name] = result
            payload["targets"] = targets.evaluate({name: result})
            (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=1) + "\n")
    report["targets"] = targets.evaluate(report["benchmarks"])
    report["wall_s"] = time.perf_counter() - started
    if args.json:
        print(json.dumps(report))
    else:
        print(targets.render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
