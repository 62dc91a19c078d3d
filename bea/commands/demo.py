"""``bea demo``: the conflict term and the Lie bracket of two batches, on real digits.

Loads scikit-learn's 8×8 digits (shipped with the package, no download), trains a
small tanh MLP for a few SGD steps, then compares two pairs of batches: two
random batches of the whole task, and a batch of digits 0–4 against one of
digits 5–9 (as two tasks of a continual sequence would be). For each pair it
prints the losses, the gradient cosine, the conflict term ``(h/2)⟨g_A, g_B⟩``
and the Lie bracket ``[g_A, g_B] = H_B g_A − H_A g_B``.
"""

from __future__ import annotations

import argparse
import json

import torch
from torch import nn

import bea


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="losses, gradient cosine, conflict term and Lie bracket of two batches of digits",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--lr", type=float, default=0.1, help="SGD step size h (default 0.1)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    parser.add_argument("--steps", type=int, default=100, help="SGD steps before measuring")
    parser.add_argument("--hidden", type=int, default=32, help="hidden width of the MLP")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    parser.set_defaults(func=run)


def _load_digits(dtype):
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.as_tensor(digits.data / 16.0, dtype=dtype)
    y = torch.as_tensor(digits.target, dtype=torch.long)
    return x, y


def _check(args) -> None:
    if not args.lr > 0:
        raise ValueError(f"--lr must be > 0, got {args.lr}")
    for name in ("batch_size", "hidden"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.steps < 0:
        raise ValueError(f"--steps must be >= 0, got {args.steps}")


def measure_pair(model, loss_a, loss_b, lr: float) -> dict:
    """Losses, cosine, conflict term and bracket of two bound losses at the model's params."""
    params = bea.params_of(model)
    result = bea.lie_bracket(loss_a, loss_b, params, return_grads=True)
    grad_a, grad_b = result.grad_a, result.grad_b
    norm_a, norm_b = bea.tree_norm(grad_a), bea.tree_norm(grad_b)
    inner = bea.tree_dot(grad_a, grad_b)
    bracket_norm = bea.tree_norm(result.bracket)
    return {
        "loss_a": float(loss_a(params)),
        "loss_b": float(loss_b(params)),
        "grad_norm_a": float(norm_a),
        "grad_norm_b": float(norm_b),
        "cosine": float(inner / (norm_a * norm_b)),
        "conflict": float(lr / 2 * inner),
        "bracket_norm": float(bracket_norm),
        "bracket_relative": float(bracket_norm / (norm_a * norm_b)),
        "order_effect_norm": float(lr**2 * bracket_norm),
    }


def run(args) -> int:
    _check(args)
    dtype = torch.float64
    torch.manual_seed(args.seed)
    x, y = _load_digits(dtype)
    generator = torch.Generator().manual_seed(args.seed)
    model = nn.Sequential(nn.Linear(64, args.hidden), nn.Tanh(), nn.Linear(args.hidden, 10)).to(
        dtype
    )
    criterion = nn.functional.cross_entropy
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
    for _ in range(args.steps):
        index = torch.randint(0, len(x), (args.batch_size,), generator=generator)
        optimizer.zero_grad()
        criterion(model(x[index]), y[index]).backward()
        optimizer.step()

    def batch(mask):
        pool = torch.nonzero(mask).flatten()
        chosen = pool[torch.randperm(len(pool), generator=generator)[: args.batch_size]]
        return bea.bind(model, criterion, x[chosen], y[chosen])

    everything = torch.ones_like(y, dtype=torch.bool)
    pairs = {
        "same task (two random batches)": (batch(everything), batch(everything)),
        "two tasks (digits 0-4 vs 5-9)": (batch(y < 5), batch(y >= 5)),
    }
    rows = {name: measure_pair(model, a, b, args.lr) for name, (a, b) in pairs.items()}
    parameters = sum(p.numel() for p in model.parameters())
    if args.json:
        print(
            json.dumps(
                {"lr": args.lr, "steps": args.steps, "parameters": parameters, "pairs": rows}
            )
        )
        return 0
    print(
        f"scikit-learn digits (offline), tanh MLP 64-{args.hidden}-10 ({parameters:,} parameters), "
        f"float64, after {args.steps} SGD steps at h = {args.lr}, batches of {args.batch_size}\n"
    )
    header = (
        f"{'pair of batches':34s} {'loss A':>8s} {'loss B':>8s} {'cos(gA,gB)':>11s} "
        f"{'conflict':>10s} {'|[gA,gB]|':>10s} {'relative':>9s}"
    )
    print(header)
    print("-" * len(header))
    for name, r in rows.items():
        print(
            f"{name:34s} {r['loss_a']:8.4f} {r['loss_b']:8.4f} {r['cosine']:11.4f} "
            f"{r['conflict']:10.3e} {r['bracket_norm']:10.3e} {r['bracket_relative']:9.4f}"
        )
    print(
        "\nconflict = (h/2)<gA, gB>: the cross term of the modified loss that one SGD step on "
        "A+B follows;\n  SGD implicitly minimizes it, pushing the two gradients apart "
        "(negative = they already disagree).\n"
        "|[gA,gB]| = |H_B gA - H_A gB|: how much the order of a step on A and a step on B "
        "matters\n  (theta_AB - theta_BA = h^2 [gA,gB] + O(h^3)); relative = |[gA,gB]| / "
        "(|gA| |gB|),\n  so a larger gradient alone does not look like a larger bracket."
    )
    return 0
