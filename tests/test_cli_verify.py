"""``bea verify`` end to end on the cheap settings (quadratics), in process."""

from __future__ import annotations

import json

import pytest

from bea.cli import main


def test_json_output_is_one_object_with_the_checks(capsys):
    code = main(["verify", "--json", "--setting", "quadratic"])
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1, out
    payload = json.loads(lines[0])
    names = [check["name"] for check in payload["checks"]]
    assert names and all(name.startswith("quadratic-") for name in names)
    for check in payload["checks"]:
        assert {"name", "expected_slope", "fitted_slope", "passed", "h", "drift"} <= set(check)
    slopes = {c["name"]: c["fitted_slope"] for c in payload["checks"]}
    assert abs(slopes["quadratic-continual-bracket"] - 3.0) <= 0.15
    assert code == 0 and payload["passed"] is True


def test_table_and_plots(capsys, tmp_path):
    code = main(["verify", "--setting", "quadratic-gd", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    assert "quadratic-gd-igr-flow" in out and "quadratic-continual" not in out
    assert "expected" in out.splitlines()[0] and "fitted" in out.splitlines()[0]
    assert list(tmp_path.glob("drift-*.png"))


def test_failing_check_gives_exit_code_one(capsys):
    code = main(["verify", "--json", "--setting", "quadratic-gd", "--tol", "1e-6"])
    payload = json.loads(capsys.readouterr().out)
    assert code == 1 and payload["passed"] is False


def test_custom_grid_is_used(capsys):
    main(["verify", "--json", "--setting", "quadratic-gd-gradient-flow", "--h-grid", "4:6"])
    (check,) = json.loads(capsys.readouterr().out)["checks"]
    assert check["h"] == [2.0**-4, 2.0**-5, 2.0**-6]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--setting", "nosuch"], "--setting: no setting matches ['nosuch']"),
        (["--h-grid", "0.1,-0.05,0.02"], "--h-grid: every h must be > 0, got -0.05"),
        (["--h-grid", "3:4"], "--h-grid: need K2 >= K1 + 2"),
        (["--h-grid", "a:b"], "--h-grid: expected 'K1:K2' with integers"),
    ],
)
def test_bad_options_give_a_clear_error(capsys, argv, message):
    code = main(["verify", *argv])
    captured = capsys.readouterr()
    assert code == 2
    assert message in captured.err and captured.out == ""
