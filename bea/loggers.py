"""Loggers: the only place where diagnostics touch files.

A logger is any object with

    log(step: int, values: Mapping[str, value]) -> None
    close() -> None

(and optionally ``flush()``). Monitors in :mod:`bea.diagnostics` take a logger and
call ``log``; they never open files themselves. Values may be Python numbers, strings,
booleans, 0-d tensors or numpy scalars (stored as numbers), and tensors, arrays or
lists (stored as nested lists, for example a Gram matrix or a histogram).

Writers:

- :class:`JsonlLogger` -- one JSON object per line, ``{"step": 12, "loss/left": 0.53, ...}``.
  Non-finite floats are written as ``NaN``/``Infinity`` (Python's ``json`` reads them).
- :class:`CsvLogger` -- long format, one row per value: ``step,key,value`` (lists are
  JSON text in the ``value`` column), so records with different keys share one file.
- :class:`TensorBoardLogger` -- scalars with ``add_scalar``, flat numeric lists with
  ``add_histogram``; only when the ``tensorboard`` package is installed.
- :class:`MemoryLogger` -- keeps ``records`` in memory (tests, notebooks).
- :class:`MultiLogger` -- sends each record to several loggers.

:func:`open_logger` picks a writer from a path: ``*.jsonl``, ``*.csv``, or a
directory for TensorBoard.

Example::

    logger = open_logger("metrics.jsonl")
    logger.log(10, {"loss": 0.5, "gram": [[1.0, 0.2], [0.2, 1.0]]})
    logger.close()
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, Protocol, runtime_checkable


@runtime_checkable
class Logger(Protocol):
    """What a monitor needs: ``log(step, values)`` and ``close()``."""

    def log(self, step: int, values: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


def to_plain(value: Any, key: str = "value") -> Any:
    """Convert tensors, numpy values and nested lists to JSON-ready Python values.

    Raises:
        TypeError: for values that are not numbers, strings, booleans, None,
            tensors, arrays or lists of those; the message names the key.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value
    if hasattr(value, "detach"):  # torch.Tensor without importing torch here
        value = value.detach().cpu()
        return value.item() if value.ndim == 0 else value.tolist()
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [to_plain(v, key) for v in value]
    raise TypeError(f"log: value for {key!r} has unsupported type {type(value).__name__}")


def plain_record(step: int, values: Mapping[str, Any]) -> dict[str, Any]:
    """``{"step": step, **values}`` with every value made plain; checks the step."""
    if isinstance(step, bool) or not isinstance(step, int):
        raise TypeError(f"log: step must be an int, got {step!r}")
    if "step" in values:
        raise ValueError("log: 'step' is reserved and cannot be a value key")
    record: dict[str, Any] = {"step": step}
    for key, value in values.items():
        if not isinstance(key, str):
            raise TypeError(f"log: keys must be strings, got {key!r}")
        record[key] = to_plain(value, key)
    return record


class JsonlLogger:
    """Append one JSON object per ``log`` call to a file (or a text stream).

    Args:
        target: a path (opened for appending if ``append`` else truncated) or an open
            text stream (not closed by :meth:`close`).
        append: keep existing lines in ``target``.
    """

    def __init__(self, target: str | Path | IO[str], *, append: bool = False) -> None:
        if isinstance(target, (str, Path)):
            self.path: Path | None = Path(target)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._stream: IO[str] = open(self.path, "a" if append else "w", encoding="utf-8")
            self._owns = True
        else:
            self.path = None
            self._stream = target
            self._owns = False

    def log(self, step: int, values: Mapping[str, Any]) -> None:
        self._stream.write(json.dumps(plain_record(step, values)) + "\n")

    def flush(self) -> None:
        self._stream.flush()

    def close(self) -> None:
        if self._owns and not self._stream.closed:
            self._stream.close()


class CsvLogger:
    """Long-format CSV: a header ``step,key,value`` and one row per logged value."""

    def __init__(self, path: str | Path, *, append: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        exists = append and self.path.exists() and self.path.stat().st_size > 0
        self._stream = open(self.path, "a" if append else "w", encoding="utf-8", newline="")
        self._writer = csv.writer(self._stream)
        if not exists:
            self._writer.writerow(["step", "key", "value"])

    def log(self, step: int, values: Mapping[str, Any]) -> None:
        record = plain_record(step, values)
        for key, value in record.items():
            if key == "step":
                continue
            text = json.dumps(value) if isinstance(value, list) else value
            self._writer.writerow([step, key, text])

    def flush(self) -> None:
        self._stream.flush()

    def close(self) -> None:
        if not self._stream.closed:
            self._stream.close()


def tensorboard_available() -> bool:
    """Whether the ``tensorboard`` package (needed by torch's SummaryWriter) is installed."""
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


class TensorBoardLogger:
    """Scalars to ``add_scalar``; flat numeric lists to ``add_histogram``; others skipped.

    Raises:
        ImportError: when the ``tensorboard`` package is not installed.
    """

    def __init__(self, log_dir: str | Path) -> None:
        if not tensorboard_available():
            raise ImportError(
                "TensorBoardLogger: the 'tensorboard' package is not installed; "
                "use JsonlLogger or CsvLogger, or `pip install tensorboard`"
            )
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(log_dir))

    def log(self, step: int, values: Mapping[str, Any]) -> None:
        for key, value in plain_record(step, values).items():
            if key == "step":
                continue
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self._writer.add_scalar(key, value, step)
            elif (
                isinstance(value, list)
                and value
                and all(isinstance(v, (int, float)) and math.isfinite(v) for v in value)
            ):
                import numpy as np

                self._writer.add_histogram(key, np.asarray(value), step)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class MemoryLogger:
    """Keep every record in ``self.records`` (a list of dicts with a ``step`` key)."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def log(self, step: int, values: Mapping[str, Any]) -> None:
        self.records.append(plain_record(step, values))

    def series(self, key: str) -> tuple[list[int], list[Any]]:
        """Steps and values of ``key`` over the records that have it."""
        pairs = [(r["step"], r[key]) for r in self.records if key in r]
        return [s for s, _ in pairs], [v for _, v in pairs]

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class MultiLogger:
    """Send every record to each of ``loggers``."""

    def __init__(self, *loggers: Logger) -> None:
        self.loggers = list(loggers)

    def log(self, step: int, values: Mapping[str, Any]) -> None:
        for logger in self.loggers:
            logger.log(step, values)

    def flush(self) -> None:
        for logger in self.loggers:
            flush = getattr(logger, "flush", None)
            if flush is not None:
                flush()

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()


def open_logger(target: str | Path, *, append: bool = False) -> Logger:
    """A logger chosen by ``target``: ``*.jsonl`` / ``*.csv`` files, else a TensorBoard dir."""
    path = Path(target)
    if path.suffix == ".jsonl":
        return JsonlLogger(path, append=append)
    if path.suffix == ".csv":
        return CsvLogger(path, append=append)
    if path.suffix:
        raise ValueError(
            f"open_logger: unknown file type {path.suffix!r} in {str(path)!r} "
            "(use .jsonl, .csv, or a directory for TensorBoard)"
        )
    return TensorBoardLogger(path)
