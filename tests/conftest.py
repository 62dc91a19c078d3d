"""Fixtures: declarative cases (tests/cases.py) bound into losses with dense oracles."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

import bea
from bea._tree import tree_ravel, tree_unravel
from tests.cases import CASES, CRITERIA, SMALL_CASES, Case


@dataclass
class Bound:
    """A case bound into two losses at its parameters, with dense float64 oracles."""

    case: Case
    model: torch.nn.Module
    loss_a: bea.BoundLoss
    loss_b: bea.BoundLoss
    params: dict

    def flat(self, loss):
        params = self.params
        return lambda x: loss(tree_unravel(x, params))

    def _which(self, loss) -> str:
        return "a" if loss is self.loss_a else "b" if loss is self.loss_b else ""

    def dense_grad(self, loss) -> torch.Tensor:
        """Reverse-mode autograd on the flat vector: an oracle independent of torch.func."""
        key = (self.case, self._which(loss), "grad")
        if key[1] and key in _DENSE:
            return _DENSE[key]
        x = tree_ravel(self.params).clone().requires_grad_(True)
        (g,) = torch.autograd.grad(self.flat(loss)(x), x)
        if key[1]:
            _DENSE[key] = g
        return g

    def dense_hessian(self, loss) -> torch.Tensor:
        """The full P×P Hessian by double backward (torch.autograd.functional), cached per case."""
        key = (self.case, self._which(loss), "hessian")
        if key[1] and key in _DENSE:
            return _DENSE[key]
        hessian = torch.autograd.functional.hessian(
            self.flat(loss), tree_ravel(self.params), vectorize=True
        )
        if key[1]:
            _DENSE[key] = hessian
        return hessian


# Dense oracles are the expensive part of the suite: compute each once per session.
# Cases are rebuilt from their seed for every test, so cached values stay valid.
_DENSE: dict = {}


def bind_case(case: Case, dtype=torch.float64) -> Bound:
    model, (xa, ya), (xb, yb) = case.make(dtype)
    criterion = CRITERIA[case.criterion]
    loss_a = bea.bind(model, criterion, xa, ya, mode=case.mode)
    loss_b = bea.bind(model, criterion, xb, yb, mode=case.mode)
    return Bound(case, model, loss_a, loss_b, bea.params_of(model))


@pytest.fixture(params=CASES, ids=lambda c: c.name)
def bound(request) -> Bound:
    return bind_case(request.param)


@pytest.fixture(params=SMALL_CASES, ids=lambda c: c.name)
def small_bound(request) -> Bound:
    return bind_case(request.param)


def assert_close(actual, expected, rtol=1e-10, atol=0.0, what="value"):
    """Relative closeness of two tensors with a message saying where and by how much."""
    actual, expected = torch.as_tensor(actual), torch.as_tensor(expected)
    error = (actual - expected).norm()
    scale = expected.norm()
    bound = rtol * scale + atol
    assert error <= bound, (
        f"{what}: |actual - expected| = {error:.3e}, |expected| = {scale:.3e}, "
        f"relative {error / max(scale, 1e-300):.3e} > rtol {rtol:.1e}"
    )


def fitted_slope(hs, errors) -> float:
    """Least-squares slope of log(error) against log(h)."""
    import numpy as np

    return float(np.polyfit(np.log(hs), np.log(errors), 1)[0])
