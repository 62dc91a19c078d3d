"""Declarative test cases for the core: a model, a criterion, data, a mode.

Each case builds a small float64 model and two batches, so that dense Hessians
(P ≤ a few hundred) serve as oracles. Ids read as ``<model>-<activation>-<loss>``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "softplus": nn.Softplus,
    "sigmoid": nn.Sigmoid,
    "silu": nn.SiLU,
    "elu": nn.ELU,
    "selu": nn.SELU,
    "leaky_relu": nn.LeakyReLU,
    "mish": nn.Mish,
    "hardswish": nn.Hardswish,
}

CRITERIA: dict[str, Callable] = {
    "mse": F.mse_loss,
    "ce": F.cross_entropy,
    "huber": F.huber_loss,
    "l1smooth": F.smooth_l1_loss,
    "nll": lambda out, y: F.nll_loss(F.log_softmax(out, dim=-1), y),
}


class Attention(nn.Module):
    """A pre-norm attention block followed by a linear read-out."""

    def __init__(self, width: int = 8, heads: int = 2, classes: int = 3):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.attention = nn.MultiheadAttention(width, heads, batch_first=True)
        self.mlp = nn.Sequential(
            nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width)
        )
        self.out = nn.Linear(width, classes)

    def forward(self, x):
        h = self.norm(x)
        x = x + self.attention(h, h, h, need_weights=False)[0]
        x = x + self.mlp(x)
        return self.out(x.mean(dim=1))


class Encoder(nn.Module):
    """torch's own TransformerEncoderLayer (uses scaled dot-product attention)."""

    def __init__(self, width: int = 8, classes: int = 3):
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(width, 2, 12, dropout=0.0, batch_first=True)
        self.out = nn.Linear(width, classes)

    def forward(self, x):
        return self.out(self.layer(x).mean(dim=1))


def mlp(activation: str = "tanh", inputs: int = 4, hidden: int = 6, outputs: int = 3) -> nn.Module:
    return nn.Sequential(
        nn.Linear(inputs, hidden), ACTIVATIONS[activation](), nn.Linear(hidden, outputs)
    )


def cnn(activation: str = "tanh", pool: str = "avg") -> nn.Module:
    pooling = nn.AvgPool2d(2) if pool == "avg" else nn.MaxPool2d(2)
    return nn.Sequential(
        nn.Conv2d(1, 2, 3),
        ACTIVATIONS[activation](),
        pooling,
        nn.Flatten(),
        nn.Linear(2 * 3 * 3, 3),
    )


def batchnorm_net() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 3))


def dropout_net() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Dropout(0.5), nn.Linear(6, 3))


@dataclass(frozen=True)
class Case:
    """One model/loss/data combination."""

    name: str
    build: Callable[[], nn.Module]
    criterion: str
    input_shape: tuple[int, ...]
    mode: str = "eval"
    seed: int = 0

    def make(self, dtype=torch.float64):
        """``(model, (inputs_a, targets_a), (inputs_b, targets_b))`` for this case."""
        torch.manual_seed(self.seed)
        model = self.build().to(dtype)
        batches = []
        for _ in range(2):
            x = torch.randn(6, *self.input_shape, dtype=dtype)
            if self.criterion in ("ce", "nll"):
                y = torch.randint(0, 3, (6,))
            else:
                y = torch.randn(6, 3, dtype=dtype)
            batches.append((x, y))
        if isinstance(model, nn.Sequential) and any(
            isinstance(m, nn.BatchNorm1d) for m in model.modules()
        ):
            model.train()
            with torch.no_grad():  # non-trivial running statistics
                model(torch.randn(32, *self.input_shape, dtype=dtype) * 2 + 1)
        return model, batches[0], batches[1]


CASES = (
    [Case(f"mlp-{act}-mse", lambda a=act: mlp(a), "mse", (4,)) for act in ACTIVATIONS]
    + [Case(f"mlp-{act}-ce", lambda a=act: mlp(a), "ce", (4,)) for act in ACTIVATIONS]
    + [
        Case("mlp-tanh-huber", mlp, "huber", (4,)),
        Case("mlp-softplus-l1smooth", lambda: mlp("softplus"), "l1smooth", (4,)),
        Case("mlp-gelu-nll", lambda: mlp("gelu"), "nll", (4,)),
        Case("cnn-tanh-avgpool-ce", cnn, "ce", (1, 8, 8)),
        Case("cnn-relu-maxpool-ce", lambda: cnn("relu", "max"), "ce", (1, 8, 8)),
        Case("cnn-gelu-avgpool-mse", lambda: cnn("gelu"), "mse", (1, 8, 8)),
        Case("attention-ce", Attention, "ce", (4, 8)),
        Case("attention-mse", Attention, "mse", (4, 8)),
        Case("encoder-ce", Encoder, "ce", (4, 8)),
        Case("batchnorm-eval-ce", batchnorm_net, "ce", (4,), mode="eval"),
        Case("batchnorm-train-ce", batchnorm_net, "ce", (4,), mode="train"),
        Case("dropout-train-mse", dropout_net, "mse", (4,), mode="train"),
    ]
)

# A smaller representative set for the more expensive checks.
SMALL_CASES = [
    c
    for c in CASES
    if c.name
    in {
        "mlp-tanh-mse",
        "mlp-gelu-ce",
        "cnn-tanh-avgpool-ce",
        "attention-ce",
        "batchnorm-train-ce",
        "dropout-train-mse",
    }
]
