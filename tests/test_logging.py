"""Loggers: the JSONL, CSV and in-memory writers and their input checks."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
import torch

from bea.loggers import (
    CsvLogger,
    JsonlLogger,
    Logger,
    MemoryLogger,
    MultiLogger,
    TensorBoardLogger,
    open_logger,
    tensorboard_available,
)

VALUES = {
    "loss": torch.tensor(0.5, dtype=torch.float64),
    "gram": torch.tensor([[1.0, 0.25], [0.25, 2.0]]),
    "count": np.int64(3),
    "name": "left",
    "ok": True,
}


def test_jsonl_round_trip(tmp_path):
    path = tmp_path / "m.jsonl"
    logger = open_logger(path)
    assert isinstance(logger, Logger)
    logger.log(4, VALUES)
    logger.log(8, {"loss": float("nan")})
    logger.close()
    first, second = [json.loads(line) for line in path.read_text().splitlines()]
    assert first == {
        "step": 4,
        "loss": 0.5,
        "gram": [[1.0, 0.25], [0.25, 2.0]],
        "count": 3,
        "name": "left",
        "ok": True,
    }
    assert second["step"] == 8 and np.isnan(second["loss"])


def test_jsonl_append_keeps_lines_and_stream_target(tmp_path):
    path = tmp_path / "m.jsonl"
    for step in (1, 2):
        logger = JsonlLogger(path, append=True)
        logger.log(step, {"x": step})
        logger.close()
    assert [json.loads(line)["x"] for line in path.read_text().splitlines()] == [1, 2]
    stream = io.StringIO()
    JsonlLogger(stream).log(0, {"y": 1.5})
    assert json.loads(stream.getvalue()) == {"step": 0, "y": 1.5}


def test_csv_is_long_format(tmp_path):
    path = tmp_path / "m.csv"
    logger = CsvLogger(path)
    logger.log(1, {"a": 1.0, "v": [1, 2]})
    logger.log(2, {"b": 2.0})
    logger.close()
    with path.open() as handle:
        rows = list(csv.reader(handle))
    assert rows == [
        ["step", "key", "value"],
        ["1", "a", "1.0"],
        ["1", "v", "[1, 2]"],
        ["2", "b", "2.0"],
    ]


def test_memory_and_multi_logger():
    a, b = MemoryLogger(), MemoryLogger()
    logger = MultiLogger(a, b)
    logger.log(0, {"x": 1.0})
    logger.log(5, {"x": 2.0, "y": 0.0})
    logger.close()
    assert a.records == b.records
    assert a.series("x") == ([0, 5], [1.0, 2.0])


@pytest.mark.parametrize(
    ("step", "values", "error", "message"),
    [
        (1.5, {"x": 1}, TypeError, r"log: step must be an int, got 1\.5"),
        (1, {"step": 2}, ValueError, r"'step' is reserved"),
        (1, {3: 1.0}, TypeError, r"keys must be strings, got 3"),
        (1, {"x": object()}, TypeError, r"value for 'x' has unsupported type object"),
    ],
)
def test_bad_records(step, values, error, message):
    with pytest.raises(error, match=message):
        MemoryLogger().log(step, values)


def test_open_logger_unknown_suffix(tmp_path):
    with pytest.raises(ValueError, match=r"open_logger: unknown file type '\.txt'"):
        open_logger(tmp_path / "m.txt")


@pytest.mark.skipif(tensorboard_available(), reason="tensorboard is installed")
def test_tensorboard_logger_needs_the_package(tmp_path):
    with pytest.raises(ImportError, match="'tensorboard' package is not installed"):
        TensorBoardLogger(tmp_path / "tb")
