"""Parameter-tree algebra against the same operations on raveled vectors."""

from __future__ import annotations

import pytest
import torch

import bea


def _trees():
    gen = torch.Generator().manual_seed(0)
    shapes = {"w": (3, 2), "b": (2,), "s": ()}

    def make():
        return {k: torch.randn(s, generator=gen, dtype=torch.float64) for k, s in shapes.items()}

    return make(), make()


def test_operations_match_flat_vectors():
    a, b = _trees()
    fa, fb = bea.tree_ravel(a), bea.tree_ravel(b)
    assert torch.equal(bea.tree_ravel(bea.tree_add(a, b)), fa + fb)
    assert torch.equal(bea.tree_ravel(bea.tree_sub(a, b)), fa - fb)
    assert torch.equal(bea.tree_ravel(bea.tree_scale(a, 2.5)), 2.5 * fa)
    assert torch.allclose(
        bea.tree_ravel(bea.tree_axpy(-0.5, a, b)), fb - 0.5 * fa, rtol=0, atol=1e-15
    )
    assert torch.allclose(bea.tree_dot(a, b), fa @ fb, rtol=1e-15)
    assert torch.allclose(bea.tree_norm(a), fa.norm(), rtol=1e-15)
    assert torch.equal(bea.tree_ravel(bea.tree_map(torch.mul, a, b)), fa * fb)
    assert torch.count_nonzero(bea.tree_ravel(bea.tree_zeros_like(a))) == 0
    round_trip = bea.tree_unravel(fa, a)
    assert all(torch.equal(round_trip[k], a[k]) for k in a)


def test_mismatched_keys_and_sizes_name_the_call():
    a, b = _trees()
    del b["s"]
    with pytest.raises(
        ValueError, match=r"tree_add: a and b have different keys \(only in a: \['s'\]"
    ):
        bea.tree_add(a, b)
    with pytest.raises(ValueError, match=r"tree_unravel: flat has shape \(4,\), expected \(9,\)"):
        bea.tree_unravel(torch.zeros(4), a)
