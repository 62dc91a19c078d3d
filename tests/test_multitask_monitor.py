"""The multitask monitor against bea.multitask_terms and a dense per-layer oracle."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import bea
from bea.diagnostics.multitask_monitor import MultitaskMonitor
from bea.experiments.models import multitask_mlp
from bea.loggers import MemoryLogger


def setup(seed=0, tasks=3):
    torch.manual_seed(seed)
    model = multitask_mlp(5, [1] * tasks, hidden=(6, 4), activation="tanh", seed=seed).double()
    x = torch.randn(12, 5, dtype=torch.float64)
    y = torch.randn(12, tasks, dtype=torch.float64)
    mse = lambda out, t: ((out.squeeze(-1) - t) ** 2).mean()  # noqa: E731
    return model, x, y, [mse] * tasks


def test_record_matches_multitask_terms():
    model, x, y, criteria = setup()
    names = ("a", "b", "c")
    alpha = [1.0, 0.5, 2.0]
    logger = MemoryLogger()
    monitor = MultitaskMonitor(
        model,
        names,
        lr=0.3,
        weights=alpha,
        shared="trunk",
        logger=logger,
        every=1,
        criteria=criteria,
    )
    losses = monitor.task_loss_fns(x, y)
    record = monitor.observe(0, losses)
    params = {n: p.detach() for n, p in model.named_parameters()}
    terms = bea.multitask_terms(losses, params, 0.3, weights=alpha, shared="trunk")
    assert logger.records[0]["step"] == 0

    def close(a, b):
        return torch.allclose(
            torch.as_tensor(a, dtype=torch.float64),
            torch.as_tensor(b, dtype=torch.float64),
            rtol=1e-10,
            atol=1e-14,
        )

    assert close(record["mt/conflict_total"], terms.conflict_total)
    assert close(record["mt/igr_total"], terms.igr_total)
    assert close(record["mt/gram"], terms.gram)
    for k, name in enumerate(names):
        assert close(record[f"mt/loss/{name}"], terms.loss[k])
        assert close(record[f"mt/igr/{name}"], terms.igr[k])
        assert close(record[f"mt/grad_norm/{name}"], terms.grad_norms[k])
    for i, j in [(0, 1), (0, 2), (1, 2)]:
        pair = f"{names[i]}-{names[j]}"
        assert close(record[f"mt/conflict/{pair}"], terms.conflict[i, j])
        assert close(record[f"mt/cosine/{pair}"], terms.cosine[i, j])
    assert close(record["mt/modified_loss"], terms.modified_loss)
    assert close(record["mt/unshared_cross_total"], terms.unshared_cross_total)


def test_per_layer_conflict_sums_to_total_and_matches_a_layer_oracle():
    model, x, y, criteria = setup(seed=1, tasks=2)
    monitor = MultitaskMonitor(
        model, ("a", "b"), lr=0.1, shared="trunk", every=1, criteria=criteria
    )
    record = monitor.observe(0, monitor.task_loss_fns(x, y))
    layers = {k: v for k, v in record.items() if k.startswith("mt/layer_conflict/")}
    assert sorted(layers) == ["mt/layer_conflict/trunk.1", "mt/layer_conflict/trunk.3"]
    assert sum(layers.values()) == pytest.approx(record["mt/conflict_total"], rel=1e-10)
    losses = monitor.task_loss_fns(x, y)
    params = {n: p.detach() for n, p in model.named_parameters()}
    g = [bea.grad(loss, params) for loss in losses]
    layer = ["trunk.3.weight", "trunk.3.bias"]
    inner = sum((g[0][n] * g[1][n]).sum() for n in layer)
    assert layers["mt/layer_conflict/trunk.3"] == pytest.approx(float(0.05 * inner), rel=1e-10)


def test_every_and_running_statistics():
    model, x, y, criteria = setup(tasks=2)
    logger = MemoryLogger()
    monitor = MultitaskMonitor(
        model, ("a", "b"), lr=0.1, shared="trunk", logger=logger, every=3, bins=4, criteria=criteria
    )
    cosines = []
    for step in range(7):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.3 * torch.randn_like(p))
        record = monitor.observe(step, monitor.task_loss_fns(x, y))
        if step % 3:
            assert record is None
        else:
            cosines.append(record["mt/cosine/a-b"])
    assert [r["step"] for r in logger.records] == [0, 3, 6]
    last = logger.records[-1]
    negative = sum(c < 0 for c in cosines) / 3
    assert last["mt/frac_negative_cosine/a-b"] == pytest.approx(negative)
    assert last["mt/mean_cosine/a-b"] == pytest.approx(sum(cosines) / 3)
    expected = [0] * 4
    for c in cosines:
        expected[min(3, int((c + 1) / 2 * 4))] += 1
    assert last["mt/cosine_hist/a-b"] == expected
    state = monitor.state_dict()
    other = MultitaskMonitor(model, ("a", "b"), lr=0.1, shared="trunk", every=3, bins=4)
    other.load_state_dict(state)
    assert other.summary() == monitor.summary()


def test_metrics_are_logged_with_inputs_and_targets():
    torch.manual_seed(0)
    model = multitask_mlp(4, {"l": 3, "r": 3}, hidden=(5,), seed=0)
    x = torch.randn(10, 4)
    y = torch.randint(0, 3, (10, 2))
    accuracy = lambda out, t: (out.argmax(-1) == t).double().mean()  # noqa: E731
    monitor = MultitaskMonitor(
        model, ("l", "r"), lr=0.1, shared="trunk", every=1, metrics=[accuracy, accuracy]
    )
    record = monitor.observe(0, inputs=x, targets=y)
    with torch.no_grad():
        expected = (model(x)[1].argmax(-1) == y[:, 1]).double().mean()
    assert record["mt/metric/r"] == pytest.approx(float(expected))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"task_names": ("a",)}, r"need at least 2 tasks"),
        ({"lr": -0.1}, r"lr must be > 0, got -0\.1"),
        ({"every": 0}, r"every must be an int >= 1, got 0"),
        ({"weights": [1.0]}, r"weights must have 2 entries"),
        ({"shared": "encoder"}, r"MultitaskMonitor: shared=\[?'encoder'\]? selects no parameter"),
    ],
)
def test_bad_input(kwargs, message):
    model = multitask_mlp(3, [1, 1], hidden=(4,), seed=0)
    arguments = {"task_names": ("a", "b"), "lr": 0.1, **kwargs}
    with pytest.raises(ValueError, match=message):
        MultitaskMonitor(model, **arguments)


def test_observe_needs_losses_or_data():
    model = multitask_mlp(3, [1, 1], hidden=(4,), seed=0)
    monitor = MultitaskMonitor(model, ("a", "b"), lr=0.1, every=1, criteria=[nn.MSELoss()] * 2)
    with pytest.raises(ValueError, match="give losses, or inputs and targets"):
        monitor.observe(0)
    with pytest.raises(ValueError, match="got 1 losses for 2 tasks"):
        monitor.observe(0, [lambda p: p["trunk.1.bias"].sum()])
