"""Wall time of ``bea verify`` at its defaults (target: under 60 s).

Runs ``python -m bea.cli verify --json`` in a subprocess with this run's
thread count; skipped when the ``verify`` command does not exist yet.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time


def run(config) -> dict:
    if importlib.util.find_spec("bea.commands.verify") is None:
        return {"skipped": "bea verify does not exist (bea/commands/verify.py missing)"}
    if config.toy or config.quick:
        return {"skipped": "run only by the full suite or --only verify (it takes up to a minute)"}
    env = dict(
        os.environ,
        OMP_NUM_THREADS=str(config.threads),
        MKL_NUM_THREADS=str(config.threads),
        PYTHONWARNINGS="ignore",
    )
    command = [sys.executable, "-m", "bea.cli", "verify", "--json"]
    config.log("verify: " + " ".join(command[1:]))
    start = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - start
    out = {
        "command": "bea verify --json",
        "wall_s_command": wall,
        "returncode": completed.returncode,
        "threads_env": config.threads,
    }
    try:
        payload = json.loads(completed.stdout)
        out["checks"] = len(payload) if isinstance(payload, (list, dict)) else None
    except json.JSONDecodeError:
        out["stdout_tail"] = completed.stdout[-300:]
    if completed.returncode != 0:
        out["stderr_tail"] = completed.stderr[-500:]
    return out
