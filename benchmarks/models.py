"""The benchmark models and their random batches.

Four models, each at a "full" size (the issue's targets) and a "toy" size
(smoke tests): a small MLP (dense-Hessian contender), a ~1M-parameter MLP, a
small CNN, and a transformer block of a few million parameters. Every model is
smooth (GELU), has no Dropout or BatchNorm, and is used in eval mode, so all
contenders differentiate exactly the same function.

A :class:`Case` holds a model, its criterion, two batches ``a`` and ``b``, and
the bound losses ``loss_a``, ``loss_b`` made with :func:`bea.bind`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn


class Flatten(nn.Module):
    """``x.flatten(1)`` (as a module so torchjd's hooks see a plain child)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1)


def mlp(widths: list[int]) -> nn.Sequential:
    """``Linear -> GELU -> ... -> Linear`` through ``widths``."""
    layers: list[nn.Module] = []
    for index, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(nn.Linear(fan_in, fan_out))
        if index < len(widths) - 2:
            layers.append(nn.GELU())
    return nn.Sequential(*layers)


def cnn(channels: tuple[int, int, int], hidden: int, classes: int) -> nn.Sequential:
    """Three 3x3 conv blocks (GELU, 2x2 max-pool after the first two), then an MLP head."""
    c1, c2, c3 = channels
    return nn.Sequential(
        nn.Conv2d(3, c1, 3, padding=1),
        nn.GELU(),
        nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 3, padding=1),
        nn.GELU(),
        nn.MaxPool2d(2),
        nn.Conv2d(c2, c3, 3, padding=1),
        nn.GELU(),
        nn.AdaptiveAvgPool2d(4),
        Flatten(),
        nn.Linear(c3 * 16, hidden),
        nn.GELU(),
        nn.Linear(hidden, classes),
    )


class TransformerBlockLM(nn.Module):
    """Token embedding + learned positions, one pre-norm encoder block, a linear readout.

    The output is flattened to ``(batch * seq, vocab)`` so that plain cross-entropy
    against flattened next-token targets is the loss.
    """

    def __init__(self, vocab: int, d_model: int, heads: int, d_ff: int, seq: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.position = nn.Embedding(seq, d_model)
        self.block = nn.TransformerEncoderLayer(
            d_model, heads, d_ff, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.norm = nn.LayerNorm(d_model)
        self.readout = nn.Linear(d_model, vocab)
        self.register_buffer("positions", torch.arange(seq), persistent=False)

    def forward(self, tokens: Tensor) -> Tensor:
        hidden = self.embed(tokens) + self.position(self.positions[: tokens.shape[1]])
        hidden = self.block(hidden)
        return self.readout(self.norm(hidden)).flatten(0, 1)


@dataclass
class Spec:
    """How to build one model at one size, and its batches."""

    name: str
    build: object  # () -> nn.Module
    batch: object  # (generator, dtype) -> (inputs, targets)
    description: str


def _classification_batch(shape, classes):
    def make(generator: torch.Generator, dtype: torch.dtype):
        inputs = torch.randn(*shape, generator=generator, dtype=dtype)
        targets = torch.randint(0, classes, (shape[0],), generator=generator)
        return inputs, targets

    return make


def _token_batch(batch, seq, vocab):
    def make(generator: torch.Generator, dtype: torch.dtype):
        tokens = torch.randint(0, vocab, (batch, seq + 1), generator=generator)
        return tokens[:, :-1].contiguous(), tokens[:, 1:].reshape(-1).contiguous()

    return make


def specs(toy: bool = False) -> dict[str, Spec]:
    """The models by name, at full or toy size."""
    if toy:
        return {
            "mlp_small": Spec(
                "mlp_small", lambda: mlp([6, 8, 3]), _classification_batch((16, 6), 3), "toy MLP"
            ),
            "mlp_1m": Spec(
                "mlp_1m", lambda: mlp([12, 16, 8, 4]), _classification_batch((16, 12), 4), "toy MLP"
            ),
            "cnn": Spec(
                "cnn",
                lambda: cnn((4, 4, 4), 8, 3),
                _classification_batch((4, 3, 8, 8), 3),
                "toy CNN",
            ),
            "transformer": Spec(
                "transformer",
                lambda: TransformerBlockLM(vocab=11, d_model=8, heads=2, d_ff=16, seq=6),
                _token_batch(2, 6, 11),
                "toy transformer block",
            ),
        }
    return {
        "mlp_small": Spec(
            "mlp_small",
            lambda: mlp([16, 24, 24, 4]),
            _classification_batch((64, 16), 4),
            "MLP 16-24-24-4, GELU, batch 64 (dense-Hessian size)",
        ),
        "mlp_1m": Spec(
            "mlp_1m",
            lambda: mlp([784, 1024, 256, 10]),
            _classification_batch((128, 784), 10),
            "MLP 784-1024-256-10, GELU, batch 128",
        ),
        "cnn": Spec(
            "cnn",
            lambda: cnn((32, 64, 64), 128, 10),
            _classification_batch((32, 3, 32, 32), 10),
            "CNN 3x(conv3x3+GELU) 32-64-64, maxpool, MLP head 128, 32x32 RGB, batch 32",
        ),
        "transformer": Spec(
            "transformer",
            lambda: TransformerBlockLM(vocab=256, d_model=512, heads=8, d_ff=2048, seq=32),
            _token_batch(4, 32, 256),
            "pre-norm encoder block d=512, 8 heads, ff 2048, GELU, seq 32, batch 4, vocab 256",
        ),
    }


def scaling_mlp(target_params: int) -> tuple[nn.Sequential, int]:
    """An MLP 64-w-w-10 whose parameter count is closest to ``target_params``.

    ``P(w) = w² + 76 w + 10``.
    """
    width = max(1, round((-76 + math.sqrt(76**2 + 4 * (target_params - 10))) / 2))
    return mlp([64, width, width, 10]), width


@dataclass
class Case:
    """One model with two batches, ready for every contender."""

    name: str
    model: nn.Module
    criterion: nn.Module
    batch_a: tuple
    batch_b: tuple
    dtype: torch.dtype
    device: torch.device
    description: str
    loss_a: object = None
    loss_b: object = None
    params: dict = field(default_factory=dict)

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)


def _to(batch, device, dtype):
    return tuple(
        t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device) for t in batch
    )


def make_case(
    spec: Spec, dtype: torch.dtype, device: torch.device, seed: int = 0, bind=None
) -> Case:
    """Build ``spec``'s model in ``dtype`` on ``device`` with two random batches."""
    torch.manual_seed(seed)
    model = spec.build().to(device=device, dtype=dtype).eval()
    generator = torch.Generator().manual_seed(seed + 1)
    batch_a = _to(spec.batch(generator, torch.float64), device, dtype)
    batch_b = _to(spec.batch(generator, torch.float64), device, dtype)
    case = Case(
        spec.name, model, nn.CrossEntropyLoss(), batch_a, batch_b, dtype, device, spec.description
    )
    if bind is not None:
        case.loss_a = bind(model, case.criterion, batch_a[0], batch_a[1])
        case.loss_b = bind(model, case.criterion, batch_b[0], batch_b[1])
        case.params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    return case
