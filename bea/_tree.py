"""Algebra on parameter trees: ``dict[str, Tensor]`` treated as one vector.

All functions are pure and keep the dtype and device of their inputs. Two trees
combined by an operation must have the same keys; mismatches raise ``ValueError``
naming the call and the keys that differ.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
from torch import Tensor

Tree = dict[str, Tensor]


def check_same_keys(call: str, a: Mapping[str, Tensor], b: Mapping[str, Tensor], what=("a", "b")):
    """Raise ``ValueError`` if ``a`` and ``b`` do not have the same keys."""
    if a.keys() != b.keys():
        only_a = sorted(set(a) - set(b))
        only_b = sorted(set(b) - set(a))
        raise ValueError(
            f"{call}: {what[0]} and {what[1]} have different keys "
            f"(only in {what[0]}: {only_a}, only in {what[1]}: {only_b})"
        )


def tree_map(fn: Callable[..., Tensor], tree: Mapping[str, Tensor], *rest: Mapping[str, Tensor]):
    """Apply ``fn`` leaf-wise: ``{k: fn(tree[k], *(r[k] for r in rest))}``."""
    for other in rest:
        check_same_keys("tree_map", tree, other)
    return {k: fn(v, *(r[k] for r in rest)) for k, v in tree.items()}


def tree_add(a: Tree, b: Tree) -> Tree:
    """``a + b``."""
    check_same_keys("tree_add", a, b)
    return {k: a[k] + b[k] for k in a}


def tree_sub(a: Tree, b: Tree) -> Tree:
    """``a - b``."""
    check_same_keys("tree_sub", a, b)
    return {k: a[k] - b[k] for k in a}


def tree_scale(a: Tree, scale: float | Tensor) -> Tree:
    """``scale * a``."""
    return {k: scale * v for k, v in a.items()}


def tree_axpy(alpha: float | Tensor, x: Tree, y: Tree) -> Tree:
    """``alpha * x + y``."""
    check_same_keys("tree_axpy", x, y, what=("x", "y"))
    return {k: y[k] + alpha * x[k] for k in y}


def tree_sum(trees: Iterable[Tree]) -> Tree:
    """Sum of a non-empty sequence of trees."""
    trees = list(trees)
    if not trees:
        raise ValueError("tree_sum: got an empty sequence of trees")
    out = dict(trees[0])
    for tree in trees[1:]:
        check_same_keys("tree_sum", out, tree)
        out = {k: out[k] + tree[k] for k in out}
    return out


def tree_zeros_like(a: Tree) -> Tree:
    """A tree of zeros shaped like ``a``."""
    return {k: torch.zeros_like(v) for k, v in a.items()}


def tree_dot(a: Tree, b: Tree) -> Tensor:
    """Euclidean inner product ``<a, b> = sum_k sum(a[k] * b[k])`` as a 0-dim tensor."""
    check_same_keys("tree_dot", a, b)
    if not a:
        raise ValueError("tree_dot: got empty trees")
    return sum((a[k] * b[k]).sum() for k in a)


def tree_norm(a: Tree) -> Tensor:
    """Euclidean norm ``sqrt(<a, a>)`` as a 0-dim tensor."""
    return torch.sqrt(tree_dot(a, a))


def tree_ravel(a: Tree) -> Tensor:
    """Concatenate the leaves of ``a`` (in key order) into one flat vector."""
    if not a:
        raise ValueError("tree_ravel: got an empty tree")
    return torch.cat([v.reshape(-1) for v in a.values()])


def tree_unravel(flat: Tensor, like: Tree) -> Tree:
    """Inverse of :func:`tree_ravel`: split ``flat`` into leaves shaped like ``like``."""
    total = sum(v.numel() for v in like.values())
    if flat.ndim != 1 or flat.numel() != total:
        raise ValueError(
            f"tree_unravel: flat has shape {tuple(flat.shape)}, expected ({total},) to match 'like'"
        )
    out, offset = {}, 0
    for k, v in like.items():
        out[k] = flat[offset : offset + v.numel()].reshape(v.shape)
        offset += v.numel()
    return out
