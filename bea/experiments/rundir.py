"""Run directories: layout, atomic checkpoints, bit-identical resume.

Layout of a run directory::

    RUN_DIR/
      config.toml               the resolved config (every field, ``kind`` included)
      status.json               {"kind", "state", "step", "total_steps", "message", "updated"}
      metrics.jsonl             one JSON object per record: {"step": int, "<key>": value, ...}
      summary.json              {"kind", "metrics": {...}, "timing": {...}} (finished runs)
      checkpoints/step-00000120.pt   numbered checkpoints, newest = highest step
      report.html               self-contained report (``bea report RUN_DIR`` rebuilds it)

``state`` in status.json is one of ``running``, ``interrupted`` (stopped on purpose or
by a test hook; resumable), ``failed`` (an error; ``message`` says which; resumable,
from the last good checkpoint) and ``finished`` (never overwritten without ``--force``).
A run killed outright stays ``running`` on disk and resumes the same way.

A checkpoint is a ``torch.save`` dict written to a temporary file and moved into place
with ``os.replace``, so a kill never leaves a half-written checkpoint::

    {"format": 1, "kind": str, "step": int,
     "state": <the runner's dict: model, optimizer, data-order position, ...>,
     "rng": {"torch": ByteTensor, "numpy": tuple, "python": tuple},
     "metrics_bytes": int}   # size of metrics.jsonl when the checkpoint was taken

On resume, metrics.jsonl is truncated to ``metrics_bytes`` (records logged after the
checkpoint are logged again by the resumed run), the runner reloads ``state`` and
calls :meth:`RunContext.restore_rng` after rebuilding data and model, and continues at
``start_step + 1``; the result is bit-identical to an uninterrupted run with the same
seed on the same machine and thread count.

Checkpoints are loaded with ``torch.load(weights_only=False)`` (they hold numpy and
python RNG states): load only run directories you trust.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bea.experiments.progress import Progress
from bea.loggers import JsonlLogger, MultiLogger, TensorBoardLogger

CONFIG_FILE = "config.toml"
STATUS_FILE = "status.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.html"
CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_FORMAT = 1
STATES = ("running", "interrupted", "failed", "finished")


class RunStopped(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised by :meth:`RunContext.step_done` when asked to stop (``stop_after``)."""

    def __init__(self, step: int) -> None:
        super().__init__(f"run stopped after step {step}")
        self.step = step


class TrainingDiverged(ValueError):
    """A loss or metric became NaN/inf; the last good checkpoint is kept."""


# --------------------------------------------------------------------------- file helpers


def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file, then ``os.replace`` onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Records of a JSONL file (blank lines skipped; a torn last line is ignored)."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    with open(path, encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    for number, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines) - 1:
                break  # a write interrupted by a kill
            raise ValueError(f"read_jsonl: {path} line {number + 1} is not JSON") from None
    return records


def series(records: list[Mapping[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """Steps and values of ``key`` (records without it skipped) as float arrays."""
    pairs = [(r["step"], r[key]) for r in records if key in r and r[key] is not None]
    steps = np.array([p[0] for p in pairs], dtype=float)
    values = np.array([p[1] for p in pairs], dtype=float)
    return steps, values


# --------------------------------------------------------------------------- RNG


def seed_everything(seed: int) -> None:
    """Seed python ``random``, numpy's global generator and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - user code may draw from the legacy global
    torch.manual_seed(seed)


def capture_rng() -> dict[str, Any]:
    """The global RNG states of torch, numpy and python."""
    return {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),  # noqa: NPY002
        "python": random.getstate(),
    }


def restore_rng(state: Mapping[str, Any]) -> None:
    """Restore what :func:`capture_rng` returned."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])  # noqa: NPY002
    random.setstate(state["python"])


# --------------------------------------------------------------------------- run directory


@dataclass(frozen=True)
class RunDir:
    """Paths and small readers of one run directory."""

    path: Path

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def status_path(self) -> Path:
        return self.path / STATUS_FILE

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def summary_path(self) -> Path:
        return self.path / SUMMARY_FILE

    @property
    def report_path(self) -> Path:
        return self.path / REPORT_FILE

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / CHECKPOINT_DIR

    def checkpoint_path(self, step: int) -> Path:
        return self.checkpoint_dir / f"step-{step:08d}.pt"

    def checkpoints(self) -> list[tuple[int, Path]]:
        """``(step, path)`` of every checkpoint, oldest first."""
        found = []
        for path in self.checkpoint_dir.glob("step-*.pt"):
            try:
                found.append((int(path.stem[5:]), path))
            except ValueError:
                continue
        return sorted(found)

    def latest_checkpoint(self) -> Path | None:
        found = self.checkpoints()
        return found[-1][1] if found else None

    def load_checkpoint(self, path: str | Path | None = None) -> dict[str, Any] | None:
        """A checkpoint dict (the newest when ``path`` is None), or None if there is none."""
        path = self.latest_checkpoint() if path is None else Path(path)
        if path is None:
            return None
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        if checkpoint.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(
                f"load_checkpoint: {path} has unknown format {checkpoint.get('format')}"
            )
        return checkpoint

    def read_config_dict(self) -> dict[str, Any]:
        from bea.experiments.config import tomllib

        with open(self.config_path, "rb") as handle:
            return tomllib.load(handle)

    def kind(self) -> str:
        return str(self.read_config_dict().get("kind", ""))

    def read_status(self) -> dict[str, Any]:
        if not self.status_path.exists():
            return {}
        return json.loads(self.status_path.read_text(encoding="utf-8"))

    def write_status(self, **fields: Any) -> None:
        status = self.read_status()
        status.update(fields)
        status["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        atomic_write_text(self.status_path, json.dumps(status, indent=1) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        return read_jsonl(self.metrics_path)

    def read_summary(self) -> dict[str, Any]:
        if not self.summary_path.exists():
            return {}
        return json.loads(self.summary_path.read_text(encoding="utf-8"))

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        atomic_write_text(
            self.summary_path,
            json.dumps(
                summary,
                indent=1,
            )
            + "\n",
        )


def create_run_dir(
    path: str | Path, config_toml: str, kind: str, *, overwrite: bool = False
) -> RunDir:
    """Make a fresh run directory holding ``config.toml`` and a ``running`` status.

    Raises:
        FileExistsError: ``path`` exists and is not empty, unless ``overwrite`` (then it
            is deleted first; refused if it is not a run directory, to protect other data).
    """
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        run_dir = RunDir(path)
        if not overwrite:
            state = run_dir.read_status().get("state", "unknown")
            hint = "" if state == "finished" else f"; `bea run --resume {path}` continues it"
            raise FileExistsError(
                f"run: {str(path)!r} already exists (state {state}); "
                f"pass --force to overwrite{hint}"
            )
        if not run_dir.config_path.exists():
            raise FileExistsError(
                f"run: refusing to overwrite {str(path)!r}: it is not a run directory "
                f"(no {CONFIG_FILE})"
            )
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    run_dir = RunDir(path)
    atomic_write_text(run_dir.config_path, config_toml)
    run_dir.write_status(kind=kind, state="running", step=0, message="")
    return run_dir


def open_run_dir(path: str | Path) -> RunDir:
    """An existing run directory. Raises FileNotFoundError if ``path`` is not one."""
    run_dir = RunDir(Path(path))
    if not run_dir.config_path.is_file():
        raise FileNotFoundError(f"run: {str(path)!r} is not a run directory (no {CONFIG_FILE})")
    return run_dir


# --------------------------------------------------------------------------- run context


class RunContext:
    """What a runner gets besides its config: logger, checkpoints, progress, resume state.

    Attributes:
        run_dir: the :class:`RunDir`.
        logger: the run's logger (``metrics.jsonl``, plus TensorBoard if configured).
        resume_state: the runner's ``state`` dict from the newest checkpoint, or None
            for a fresh start.
        start_step: the step of that checkpoint (0 for a fresh start).
    """

    def __init__(
        self,
        run_dir: RunDir,
        config: Any,
        *,
        resume: bool = False,
        progress: bool | None = None,
        stop_after: int | None = None,
    ) -> None:
        self.run_dir = run_dir
        self.config = config
        self.stop_after = stop_after
        settings = config.run
        self.keep_checkpoints = settings.keep_checkpoints
        checkpoint = run_dir.load_checkpoint() if resume else None
        self._checkpoint_rng = checkpoint["rng"] if checkpoint else None
        self.resume_state: dict[str, Any] | None = checkpoint["state"] if checkpoint else None
        self.start_step: int = int(checkpoint["step"]) if checkpoint else 0
        if resume:
            keep = int(checkpoint["metrics_bytes"]) if checkpoint else 0
            if run_dir.metrics_path.exists():
                with open(run_dir.metrics_path, "r+b") as handle:
                    handle.truncate(keep)
        self._jsonl = JsonlLogger(run_dir.metrics_path, append=resume)
        loggers: list[Any] = [self._jsonl]
        if settings.tensorboard:
            loggers.append(TensorBoardLogger(run_dir.path / "tensorboard"))
        self.logger = MultiLogger(*loggers) if len(loggers) > 1 else self._jsonl
        self.show_progress = settings.progress if progress is None else progress
        self.progress: Progress | None = None
        self.last_good_checkpoint: Path | None = run_dir.latest_checkpoint() if resume else None

    def start_progress(self, total: int, label: str | None = None) -> Progress:
        """Create the progress display for ``total`` steps (resumed runs start part-way)."""
        label = label or f"{self.config.kind} {self.config.name}"
        self.progress = Progress(total, label, enabled=self.show_progress, start=self.start_step)
        self.run_dir.write_status(total_steps=int(total))
        return self.progress

    def log(self, step: int, values: Mapping[str, Any]) -> None:
        self.logger.log(step, values)

    def restore_rng(self) -> None:
        """On resume, put back the global RNG states saved with the checkpoint (no-op otherwise).

        Call it after data and model are rebuilt and their states loaded, right before
        the training loop continues.
        """
        if self._checkpoint_rng is not None:
            restore_rng(self._checkpoint_rng)

    def should_checkpoint(self, step: int, total: int) -> bool:
        every = self.config.run.checkpoint_every
        return step == total or (every > 0 and step % every == 0)

    def save_checkpoint(self, step: int, state: Mapping[str, Any]) -> Path:
        """Write ``state`` (plus RNG states and the metrics position) atomically.

        ``state`` must hold everything the runner needs to continue after ``step``:
        model and optimizer ``state_dict`` s, data-order generator states and positions,
        running statistics. Tensors are saved by value (cloned by ``torch.save``).
        """
        self.logger.flush()
        metrics_bytes = self.run_dir.metrics_path.stat().st_size
        checkpoint = {
            "format": CHECKPOINT_FORMAT,
            "kind": self.config.kind,
            "step": int(step),
            "state": dict(state),
            "rng": capture_rng(),
            "metrics_bytes": metrics_bytes,
        }
        path = self.run_dir.checkpoint_path(step)
        atomic_torch_save(checkpoint, path)
        self.last_good_checkpoint = path
        if self.keep_checkpoints > 0:
            for _, old in self.run_dir.checkpoints()[: -self.keep_checkpoints]:
                old.unlink(missing_ok=True)
        self.run_dir.write_status(step=int(step))
        return path

    def step_done(self, step: int, **info: Any) -> None:
        """End of a step: update progress; raise :class:`RunStopped` at ``stop_after``."""
        if self.progress is not None:
            self.progress.update(step, **info)
        if self.stop_after is not None and step >= self.stop_after:
            raise RunStopped(step)

    def diverged(self, step: int, what: str, value: Any) -> TrainingDiverged:
        """The error to raise when ``what`` became non-finite at ``step``."""
        good = self.last_good_checkpoint
        where = str(good.relative_to(self.run_dir.path)) if good else "none yet"
        return TrainingDiverged(
            f"{self.config.kind}: {what} is {value} at step {step}; training stopped, "
            f"last good checkpoint: {where}"
        )

    def close(self) -> None:
        self.logger.close()
