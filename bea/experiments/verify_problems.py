"""The default problems of ``bea verify``: small float64 networks on scikit-learn's digits.

Everything is offline (``sklearn.datasets.load_digits`` ships with scikit-learn) and
small enough that third derivatives through a few steps stay cheap:

* ``mlp``: ``64 → 16 → 10`` with tanh; ``cnn``: a 3x3 convolution with 4 channels,
  tanh, 2x2 average pooling and a linear layer (smooth, so the theory applies);
* ``relu-mlp``: the MLP with ReLU, for the activation-pattern report;
* each at an *early* point (the seeded initialization) and a *trained* point
  (a few hundred full-batch gradient steps on all the problem's losses).

Tasks: one batch of all classes (one GD step); a shared trunk with a digit head
(α = 1) and a parity head (β = 0.5) (multitask); class groups ``{0–4}, {5–9}``
(and 3 or 4 groups) as consecutive tasks (continual).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

import torch
from torch import Tensor, nn

from bea.functional import bind, params_of

MODELS = ("mlp", "cnn")
POINTS = ("early", "trained")
MULTITASK_WEIGHTS = (1.0, 0.5)


@dataclass(frozen=True)
class Problem:
    """Losses and points of one model.

    Attributes:
        model: ``"mlp"``, ``"cnn"`` or ``"relu-mlp"``.
        points: ``{"early": params, "trained": params}`` for the single-head network.
        batch_loss: one batch of all classes (the GD step).
        task_losses: ``{n: [L_1, …, L_n]}`` class-group tasks for ``n = 2, 3, 4``.
        multitask_points: the two-head network's points.
        multitask_losses: ``[L_digit, L_parity]`` on the two-head network.
        shared: names of the shared trunk parameters.
        pattern: ``params -> pre-activations`` of the hidden units (ReLU model only).
    """

    model: str
    points: dict
    batch_loss: Callable
    task_losses: dict
    multitask_points: dict = field(default_factory=dict)
    multitask_losses: list = field(default_factory=list)
    shared: tuple = ()
    pattern: Callable | None = None


@lru_cache(maxsize=4)
def digits(samples: int, seed: int, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """``samples`` digits (inputs in ``[0, 1]``, shape ``(N, 64)``) drawn with ``seed``."""
    from sklearn.datasets import load_digits

    inputs, labels = load_digits(return_X_y=True)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=generator)[:samples]
    x = torch.as_tensor(inputs, dtype=dtype)[order] / 16.0
    y = torch.as_tensor(labels, dtype=torch.long)[order]
    return x, y


def _trunk(model: str) -> tuple[nn.Module, int]:
    if model == "mlp":
        return nn.Sequential(nn.Linear(64, 16), nn.Tanh()), 16
    if model == "relu-mlp":
        return nn.Sequential(nn.Linear(64, 16), nn.ReLU()), 16
    if model == "cnn":
        return (
            nn.Sequential(
                nn.Unflatten(1, (1, 8, 8)),
                nn.Conv2d(1, 4, 3, padding=1),
                nn.Tanh(),
                nn.AvgPool2d(2),
                nn.Flatten(),
            ),
            64,
        )
    raise ValueError(f"verify_problems: unknown model {model!r}, expected one of {MODELS}")


class _Head(nn.Module):
    """``head(trunk(x))`` for one head of a shared-trunk network."""

    def __init__(self, trunk: nn.Module, heads: nn.ModuleList, index: int):
        super().__init__()
        self.trunk = trunk
        self.heads = heads
        self.index = index

    def forward(self, x: Tensor) -> Tensor:
        return self.heads[self.index](self.trunk(x))


def _train(losses: list[Callable], params: dict, steps: int, lr: float) -> dict:
    """``steps`` full-batch gradient steps on the mean of ``losses`` (plain autograd)."""
    params = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    for _ in range(steps):
        total = sum(loss(params) for loss in losses) / len(losses)
        grads = torch.autograd.grad(total, list(params.values()))
        with torch.no_grad():
            for value, g in zip(params.values(), grads, strict=True):
                value -= lr * g
    return {k: v.detach().clone() for k, v in params.items()}


def _groups(n: int) -> list[list[int]]:
    bounds = [round(10 * i / n) for i in range(n + 1)]
    return [list(range(bounds[i], bounds[i + 1])) for i in range(n)]


def build_problem(
    model: str = "mlp",
    seed: int = 0,
    samples: int = 128,
    train_steps: int = 200,
    train_lr: float = 0.5,
    dtype: torch.dtype = torch.float64,
) -> Problem:
    """The losses and early/trained points of ``model`` (see the module docstring)."""
    if model not in (*MODELS, "relu-mlp"):
        raise ValueError(f"build_problem: unknown model {model!r}, expected one of {MODELS}")
    x, y = digits(samples, seed, dtype)
    criterion = nn.functional.cross_entropy

    torch.manual_seed(seed)
    trunk, width = _trunk(model)
    heads = nn.ModuleList([nn.Linear(width, 10), nn.Linear(width, 2)]).to(dtype)
    trunk = trunk.to(dtype)
    single = nn.Sequential(trunk, heads[0])
    batch_loss = bind(single, criterion, x, y)
    task_losses = {}
    for n in (2, 3, 4):
        losses = []
        for group in _groups(n):
            mask = torch.isin(y, torch.tensor(group))
            losses.append(bind(single, criterion, x[mask], y[mask]))
        task_losses[n] = losses
    early = params_of(single)
    early = {k: v.clone() for k, v in early.items()}
    trained = _train([batch_loss], early, train_steps, train_lr)

    views = [_Head(trunk, heads, 0), _Head(trunk, heads, 1)]
    multitask_losses = [
        bind(views[0], criterion, x, y),
        bind(views[1], criterion, x, y % 2),
    ]
    multitask_early = {k: v.clone() for k, v in params_of(views[0]).items()}
    weighted = [
        lambda p: MULTITASK_WEIGHTS[0] * multitask_losses[0](p),
        lambda p: MULTITASK_WEIGHTS[1] * multitask_losses[1](p),
    ]
    multitask_trained = _train(weighted, multitask_early, train_steps, train_lr)
    shared = tuple(k for k in multitask_early if k.startswith("trunk."))

    pattern = None
    if model == "relu-mlp":

        def pattern(params: dict) -> Tensor:
            """Pre-activations of the hidden ReLU units, one per (sample, unit)."""
            return x @ params["0.0.weight"].T + params["0.0.bias"]

    return Problem(
        model=model,
        points={"early": early, "trained": trained},
        batch_loss=batch_loss,
        task_losses=task_losses,
        multitask_points={"early": multitask_early, "trained": multitask_trained},
        multitask_losses=multitask_losses,
        shared=shared,
        pattern=pattern,
    )


def quadratic_problem(seed: int = 0, dim: int = 6, dtype: torch.dtype = torch.float64):
    """Two quadratics ``½ θᵀA_iθ − b_iᵀθ`` with SPD ``A_i`` (eigenvalues in [0.5, 2]).

    Returns:
        ``([A1, A2], [b1, b2], θ0)``.
    """
    generator = torch.Generator().manual_seed(seed)
    matrices, offsets = [], []
    for _ in range(2):
        q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=dtype))
        eigenvalues = 0.5 + 1.5 * torch.rand(dim, generator=generator, dtype=dtype)
        matrices.append(q @ torch.diag(eigenvalues) @ q.T)
        offsets.append(torch.randn(dim, generator=generator, dtype=dtype))
    theta = torch.randn(dim, generator=generator, dtype=dtype)
    return matrices, offsets, theta


# ---------------------------------------------------------------------------------------
# The default suite of `bea verify`
# ---------------------------------------------------------------------------------------

#: Default ``h = 2^-k`` ranges ``(k_first, k_last)`` per check family and point, chosen
#: inside the asymptotic range of each check (design.md §1.5): at the trained point the
#: drift is smaller, so larger ``h`` keep it above the rounding floor.
DEFAULT_K = {
    "order0": {"early": (3, 7), "trained": (3, 7)},
    "order1": {"early": (3, 7), "trained": (3, 7)},
    "order2": {"early": (3, 6), "trained": (2, 5)},
    "sequence": {"early": (3, 7), "trained": (4, 8)},
}


@dataclass(frozen=True)
class Setting:
    """A group of checks run together: ``run()`` returns their :class:`DriftCheck` list."""

    name: str
    run: Callable


def default_suite(
    model: str = "mlp",
    seed: int = 0,
    hs: list | None = None,
    dtype: torch.dtype = torch.float64,
    points: tuple = POINTS,
    tol: float = 0.15,
) -> list[Setting]:
    """The settings of ``bea verify`` for one model (see :mod:`bea.verify`).

    Args:
        hs: one grid for every check (overrides :data:`DEFAULT_K`).
    """
    from bea import verify

    cache: dict = {}

    def problem() -> Problem:
        if "problem" not in cache:
            cache["problem"] = build_problem(model, seed, dtype=dtype)
        return cache["problem"]

    def grid(kind: str, point: str) -> list:
        if hs is not None:
            return list(hs)
        return verify.h_grid(*DEFAULT_K[kind][point])

    def grids(point: str) -> dict:
        return {
            "gradient-flow": grid("order0", point),
            "igr-flow": grid("order1", point),
            "modified": grid("order1", point),
            "order2": grid("order2", point),
        }

    settings = []
    for point in points:
        suffix = f"/{model}/{point}"

        def gd(point=point, suffix=suffix):
            p = problem()
            return verify.gd_checks(
                p.batch_loss, p.points[point], grids(point), suffix=suffix, tol=tol
            )

        def multitask(point=point, suffix=suffix):
            p = problem()
            return verify.multitask_checks(
                p.multitask_losses,
                p.multitask_points[point],
                grids(point),
                weights=MULTITASK_WEIGHTS,
                shared=list(p.shared),
                suffix=suffix,
                tol=tol,
            )

        def continual(point=point, suffix=suffix):
            p = problem()
            return verify.continual_checks(
                p.task_losses[2], p.points[point], grids(point), suffix=suffix, tol=tol
            )

        def sequences(point=point, suffix=suffix):
            p = problem()
            return [
                verify.sequence_check(
                    p.task_losses[n],
                    p.points[point],
                    grid("sequence", point),
                    name=f"continual-{n}steps-bracket{suffix}",
                    tol=tol,
                )
                for n in (3, 4)
            ]

        def order_effect(point=point, suffix=suffix):
            p = problem()
            first, second = p.task_losses[2]
            return [
                verify.order_effect_check(
                    first,
                    second,
                    p.points[point],
                    grid("order1", point),
                    name=f"order-effect{suffix}",
                    tol=tol,
                )
            ]

        def reshuffling(point=point, suffix=suffix):
            p = problem()
            return [
                verify.reshuffling_check(
                    p.task_losses[3],
                    p.points[point],
                    grid("sequence", point),
                    name=f"reshuffling-3tasks{suffix}",
                    tol=tol,
                )
            ]

        settings += [
            Setting(f"gd{suffix}", gd),
            Setting(f"multitask{suffix}", multitask),
            Setting(f"continual{suffix}", continual),
            Setting(f"continual-nsteps{suffix}", sequences),
            Setting(f"order-effect{suffix}", order_effect),
            Setting(f"reshuffling{suffix}", reshuffling),
        ]
    return settings


def quadratic_suite(
    seed: int = 0, hs: list | None = None, dtype=torch.float64, tol: float = 0.15
) -> list[Setting]:
    """The quadratic checks against exact ``expm`` flows."""
    from bea import verify

    def run():
        matrices, offsets, theta = quadratic_problem(seed, dtype=dtype)
        grids = {
            kind: list(hs) if hs is not None else verify.h_grid(*DEFAULT_K[kind]["early"])
            for kind in ("order0", "order1", "order2")
        }
        return verify.quadratic_checks(matrices, offsets, theta, grids, tol=tol)

    return [Setting("quadratic", run)]


def relu_suite(
    seed: int = 0, hs: list | None = None, dtype=torch.float64, tol: float = 0.15
) -> list[Setting]:
    """One GD step of a ReLU MLP with the number of activation-pattern flips per ``h``."""
    from bea import verify

    def run():
        p = build_problem("relu-mlp", seed, dtype=dtype)
        grid = list(hs) if hs is not None else verify.h_grid(*RELU_K)
        return verify.gd_checks(
            p.batch_loss,
            p.points["early"],
            {"gradient-flow": grid, "igr-flow": grid},
            prefix="gd-relu",
            suffix="/relu-mlp/early",
            pattern=p.pattern,
            orders=("gradient-flow", "igr-flow"),
            tol=tol,
        )

    return [Setting("gd-relu", run)]


RELU_K = (5, 11)
