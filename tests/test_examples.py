"""The examples in examples/ run as shipped (they are documentation that must stay true)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("multitask_monitor.py", "mt/frac_negative_cosine/left-right"),
        ("continual_bracket_monitor.py", "relative bracket, across the switch"),
    ],
)
def test_example_runs(script, expected, tmp_path):
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert expected in result.stdout
