"""`bea demo` runs offline and prints consistent numbers."""

from __future__ import annotations

import json

import pytest

from bea.cli import main


def test_demo_json(capsys):
    assert main(["demo", "--json", "--steps", "3", "--hidden", "8", "--lr", "0.2"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["parameters"] == 64 * 8 + 8 + 8 * 10 + 10
    for pair in report["pairs"].values():
        product = pair["grad_norm_a"] * pair["grad_norm_b"]
        assert pair["conflict"] == pytest.approx(0.2 / 2 * pair["cosine"] * product, rel=1e-12)
        assert pair["bracket_relative"] == pytest.approx(pair["bracket_norm"] / product, rel=1e-12)
        assert pair["order_effect_norm"] == pytest.approx(0.04 * pair["bracket_norm"], rel=1e-12)
        assert pair["bracket_norm"] > 0 and -1 <= pair["cosine"] <= 1


def test_demo_table_and_bad_input(capsys):
    assert main(["demo", "--steps", "0", "--hidden", "4"]) == 0
    out = capsys.readouterr().out
    assert "two tasks (digits 0-4 vs 5-9)" in out and "|[gA,gB]|" in out
    assert main(["demo", "--batch-size", "0"]) == 2
    assert "bea demo: error: --batch-size must be >= 1, got 0" in capsys.readouterr().err


def test_measure_pair_agrees_with_independent_core_paths():
    """The demo's numbers against multitask_terms (Gram path) and the reverse-mode bracket."""
    import torch

    import bea
    from bea.commands.demo import measure_pair

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(5, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3)
    ).double()
    x, y = torch.randn(8, 5).double(), torch.randint(0, 3, (8,))
    loss_a = bea.bind(model, torch.nn.functional.cross_entropy, x[:4], y[:4])
    loss_b = bea.bind(model, torch.nn.functional.cross_entropy, x[4:], y[4:])
    pair = measure_pair(model, loss_a, loss_b, 0.3)
    params = bea.params_of(model)
    terms = bea.multitask_terms([loss_a, loss_b], params, 0.3)
    assert pair["conflict"] == pytest.approx(float(terms.conflict_total), rel=1e-12)
    assert pair["cosine"] == pytest.approx(float(terms.cosine[0, 1]), rel=1e-12)
    reverse = bea.lie_bracket(loss_a, loss_b, params, mode="reverse")
    assert pair["bracket_norm"] == pytest.approx(float(bea.tree_norm(reverse)), rel=1e-10)
