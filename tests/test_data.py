"""Tests of bea.experiments.data: shapes, determinism, splits, rotations, permutations,
the conflict and similarity knobs, the two-objective toy, and bad input."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from bea.experiments import data as D

# --------------------------------------------------------------------------------------
# Declarative cases: (builder, kwargs, expected input shape, expected number of tasks)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    kwargs: dict = field(default_factory=dict)
    input_shape: tuple[int, ...] = ()
    num_tasks: int = 0


MULTITASK_CASES = [
    Case("multi_digits", {}, (1, 8, 16), 2),
    Case("multi_digits", {"flatten": True, "num_train": 100, "num_test": 50}, (128,), 2),
    Case("multi_mnist_5k", {"downscale": 2}, (1, 14, 28), 2),
    Case("conflict_regression", {"num_tasks": 3, "conflict": 0.3}, (16,), 3),
]
CONTINUAL_CASES = [
    Case("split_digits", {}, (1, 8, 8), 5),
    Case("split_digits", {"num_tasks": 2, "flatten": True}, (64,), 2),
    Case("rotated_mnist_5k", {"angles": (0, 45), "downscale": 4}, (1, 7, 7), 2),
    Case("permuted_mnist_5k", {"num_tasks": 3, "downscale": 2, "flatten": True}, (196,), 3),
    Case("generated_tasks", {"num_tasks": 4, "similarity": 0.5}, (20,), 4),
]


def case_id(case: Case) -> str:
    return case.name + "".join(f"-{k}={v}" for k, v in case.kwargs.items())


@pytest.mark.parametrize("case", MULTITASK_CASES, ids=case_id)
def test_multitask_shapes_and_dtypes(case):
    data = D.load_dataset(case.name, **case.kwargs)
    assert isinstance(data, D.MultitaskData)
    assert data.input_shape == case.input_shape
    assert data.num_tasks == case.num_tasks == data.y_train.shape[1] == data.y_test.shape[1]
    assert data.x_train.dtype == torch.float32
    if data.kind == "classification":
        assert data.y_train.dtype == torch.long
        for k, classes in enumerate(data.num_classes_per_task):
            assert 0 <= int(data.y_train[:, k].min()) and int(data.y_train[:, k].max()) < classes
        assert 0.0 <= float(data.x_train.min()) and float(data.x_train.max()) <= 1.0
    else:
        assert data.y_train.dtype == torch.float32


@pytest.mark.parametrize("case", CONTINUAL_CASES, ids=case_id)
def test_continual_shapes_and_labels(case):
    data = D.load_dataset(case.name, **case.kwargs)
    assert isinstance(data, D.ContinualData)
    assert data.num_tasks == case.num_tasks
    assert data.input_shape == case.input_shape
    for task in data.tasks:
        assert task.x_train.dtype == torch.float32 and task.y_train.dtype == torch.long
        assert set(torch.unique(task.y_train).tolist()) == set(task.classes)
        assert task.num_train > task.num_test > 0


def test_source_arrays_are_the_packaged_digits():
    mnist, mnist_labels = D._mnist_arrays()
    digits, digits_labels = D._digits_arrays()
    assert mnist.shape == (5000, 28, 28) and digits.shape == (1797, 8, 8)
    np.testing.assert_array_equal(np.bincount(mnist_labels), [500] * 10)
    # pixel values were integers 0..255 (MNIST) and 0..16 (digits) before scaling
    np.testing.assert_allclose(mnist * 255, np.round(mnist * 255), atol=1e-9)
    np.testing.assert_allclose(digits * 16, np.round(digits * 16), atol=1e-12)
    assert mnist.max() == 1.0 and digits.max() == 1.0 and mnist.min() == digits.min() == 0.0


def test_float64_dtype_is_respected():
    data = D.multi_digits(seed=0, num_train=10, num_test=10, dtype=torch.float64)
    seq = D.generated_tasks(2, 0.5, seed=0, num_train=20, num_test=10, dtype=torch.float64)
    assert data.x_train.dtype == torch.float64 and data.y_train.dtype == torch.long
    assert seq.tasks[0].x_train.dtype == torch.float64


# --------------------------------------------------------------------------------------
# Determinism
# --------------------------------------------------------------------------------------

CHEAP_BUILDS = [
    ("multi_digits", {"num_train": 200, "num_test": 50}),
    ("conflict_regression", {"num_tasks": 2, "conflict": 0.5}),
    ("split_digits", {}),
    ("permuted_mnist_5k", {"num_tasks": 2, "downscale": 4}),
    ("generated_tasks", {"num_tasks": 2, "similarity": 0.3}),
]


def tensors_of(data) -> list[torch.Tensor]:
    if isinstance(data, D.MultitaskData):
        return [data.x_train, data.y_train, data.x_test, data.y_test]
    return [
        t for task in data.tasks for t in (task.x_train, task.y_train, task.x_test, task.y_test)
    ]


@pytest.mark.parametrize(("name", "kwargs"), CHEAP_BUILDS, ids=[n for n, _ in CHEAP_BUILDS])
def test_same_seed_same_data_other_seed_other_data(name, kwargs):
    first = tensors_of(D.load_dataset(name, seed=3, **kwargs))
    again = tensors_of(D.load_dataset(name, seed=3, **kwargs))
    other = tensors_of(D.load_dataset(name, seed=4, **kwargs))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], other[0])


# --------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------


def row_set(x: torch.Tensor) -> set[bytes]:
    return {row.tobytes() for row in x.reshape(x.shape[0], -1).numpy()}


def test_stratified_split_is_a_disjoint_cover_with_class_shares():
    labels = np.repeat(np.arange(4), [10, 20, 30, 40])
    train, test = D._stratified_split(labels, 0.2, np.random.default_rng(0))
    assert set(train).isdisjoint(test)
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(labels.size))
    np.testing.assert_array_equal(np.bincount(labels[test]), [2, 4, 6, 8])


def test_multi_digits_test_digits_never_appear_in_training():
    data = D.multi_digits(seed=1)
    halves = {
        split: torch.cat([x[..., :8], x[..., 8:]])
        for split, x in (("train", data.x_train), ("test", data.x_test))
    }
    assert row_set(halves["train"]).isdisjoint(row_set(halves["test"]))
    # every source digit appears once as a left and once as a right digit
    assert len(row_set(data.x_train[..., :8])) == data.x_train.shape[0]


def test_multi_digits_test_pairs_do_not_depend_on_the_training_size():
    small = D.multi_digits(seed=0, num_train=50)
    large = D.multi_digits(seed=0, num_train=3000)
    assert torch.equal(small.x_test, large.x_test) and torch.equal(small.y_test, large.y_test)
    assert large.x_train.shape[0] == 3000  # pools are reused when more pairs are asked for


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [("split_digits", {}), ("permuted_mnist_5k", {"num_tasks": 2, "downscale": 2})],
    ids=["split_digits", "permuted_mnist_5k"],
)
def test_continual_train_and_test_images_are_disjoint(name, kwargs):
    for task in D.load_dataset(name, seed=2, **kwargs).tasks:
        assert row_set(task.x_train).isdisjoint(row_set(task.x_test)), task.name


def test_split_digits_classes_partition_the_labels():
    seq = D.split_digits(5, seed=0, class_order=[9, 8, 7, 6, 5, 4, 3, 2, 1, 0])
    assert [task.classes for task in seq.tasks] == [(8, 9), (6, 7), (4, 5), (2, 3), (0, 1)]
    assert seq.num_classes == 10
    assert sum(task.num_train + task.num_test for task in seq.tasks) == 1797


# --------------------------------------------------------------------------------------
# Rotations and permutations
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def images64() -> torch.Tensor:
    return torch.rand(3, 1, 9, 9, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def test_rotation_by_zero_is_identity(images64):
    torch.testing.assert_close(D.rotate_images(images64, 0.0), images64, rtol=0, atol=1e-12)


def test_rotation_by_180_twice_is_identity(images64):
    twice = D.rotate_images(D.rotate_images(images64, 180.0), 180.0)
    torch.testing.assert_close(twice, images64, rtol=0, atol=1e-12)


@pytest.mark.parametrize("quarter_turns", [1, -1, 2])
def test_rotation_by_right_angles_matches_rot90(images64, quarter_turns):
    rotated = D.rotate_images(images64, 90.0 * quarter_turns)
    expected = torch.rot90(images64, quarter_turns, dims=(-2, -1))
    torch.testing.assert_close(rotated, expected, rtol=0, atol=1e-12)


def test_rotation_matches_scipy_away_from_the_border(images64):
    from scipy.ndimage import rotate

    ours = D.rotate_images(images64, 30.0)[0, 0].numpy()
    reference = rotate(images64[0, 0].numpy(), 30.0, reshape=False, order=1, mode="constant")
    # border pixels differ by the padding convention; the interior is the same bilinear map
    np.testing.assert_allclose(ours[2:-2, 2:-2], reference[2:-2, 2:-2], rtol=0, atol=1e-12)


def test_rotated_mnist_zero_angle_task_is_the_unrotated_permuted_identity_task():
    rotated = D.rotated_mnist_5k(angles=(0, 80, 160), seed=0, downscale=2)
    permuted = D.permuted_mnist_5k(2, seed=0, downscale=2)
    assert rotated.task_names == ("rot0", "rot80", "rot160")
    torch.testing.assert_close(
        rotated.tasks[0].x_train, permuted.tasks[0].x_train, rtol=0, atol=1e-6
    )
    assert not torch.allclose(rotated.tasks[1].x_train, rotated.tasks[0].x_train)
    assert torch.equal(rotated.tasks[1].y_train, rotated.tasks[0].y_train)


def test_pixel_permutations_are_bijections():
    perms = D.pixel_permutations(4, 50, seed=1)
    assert torch.equal(perms[0], torch.arange(50))
    for row in perms:
        assert torch.equal(torch.sort(row).values, torch.arange(50))
    assert len({tuple(row.tolist()) for row in perms}) == 4


def test_permuted_tasks_invert_back_to_the_first_task():
    seq = D.permuted_mnist_5k(3, seed=5, downscale=2, flatten=True)
    perms = D.pixel_permutations(3, 196, seed=5)
    base = seq.tasks[0].x_train
    for k in (1, 2):
        inverse = torch.argsort(perms[k])
        torch.testing.assert_close(seq.tasks[k].x_train[:, inverse], base, rtol=0, atol=0)


# --------------------------------------------------------------------------------------
# Knobs
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_tasks", [2, 3, 5])
def test_conflict_weights_have_the_documented_cosine(num_tasks):
    for conflict in (0.0, 0.4, 1.0):
        w = D.conflict_regression_weights(num_tasks, conflict, in_features=8, seed=0)
        cosine = 1 - conflict * num_tasks / (num_tasks - 1)
        expected = torch.full((num_tasks, num_tasks), cosine, dtype=torch.float64)
        expected.fill_diagonal_(1.0)
        torch.testing.assert_close(w @ w.T, expected, rtol=0, atol=1e-12)


def least_squares_gradient_cosine(data: D.MultitaskData) -> torch.Tensor:
    """Closed form: L_k(theta) = mean (x.theta - y_k)^2 has gradient (2/N) X^T (X theta - y_k);
    at theta = 0 it is -(2/N) X^T y_k. Returns the K x K cosine matrix of these gradients."""
    x, y = data.x_train.double(), data.y_train.double()
    grads = -(2.0 / x.shape[0]) * (x.T @ y)  # (d, K)
    grads = grads / grads.norm(dim=0, keepdim=True)
    return grads.T @ grads


def test_conflict_knob_makes_task_gradients_more_opposed():
    cosines = []
    for conflict in (0.0, 0.25, 0.5, 0.75, 1.0):
        data = D.conflict_regression(2, conflict, seed=0, num_train=4096, dtype=torch.float64)
        cosines.append(float(least_squares_gradient_cosine(data)[0, 1]))
    assert all(a > b + 0.2 for a, b in zip(cosines, cosines[1:], strict=False)), cosines
    assert cosines[0] > 0.95 and cosines[-1] < -0.9, cosines
    np.testing.assert_allclose(cosines, [1.0, 0.5, 0.0, -0.5, -1.0], atol=0.1)


def probe_accuracy(source: D.TaskData, target: D.TaskData) -> float:
    """Fit a least-squares linear probe on ``source`` and score it on ``target``."""
    x, y = source.x_train.double(), source.y_train.double() * 2 - 1
    w = torch.linalg.lstsq(x, y[:, None]).solution
    prediction = (target.x_test.double() @ w)[:, 0] > 0
    return float((prediction.long() == target.y_test).double().mean())


def test_similarity_knob_makes_tasks_transfer():
    transfer = []
    for similarity in (0.0, 0.6, 1.0):
        seq = D.generated_tasks(2, similarity, seed=0, num_train=2000, num_test=1000)
        transfer.append(probe_accuracy(seq.tasks[0], seq.tasks[1]))
    assert transfer[0] < 0.7 < transfer[1] < transfer[2], transfer
    assert transfer[2] > 0.9, transfer


# --------------------------------------------------------------------------------------
# The two-objective toy
# --------------------------------------------------------------------------------------


def toy_reference(x1: float, x2: float) -> tuple[float, float]:
    """The CAGrad toy transcribed with the math module, one point at a time."""
    upper, lower = max(math.tanh(x2 / 2), 0.0), max(math.tanh(-x2 / 2), 0.0)
    log1 = math.log(max(abs(0.5 * (-x1 - 7) - math.tanh(-x2)), 5e-6)) + 6
    log2 = math.log(max(abs(0.5 * (-x1 + 3) + math.tanh(-x2) + 2), 5e-6)) + 6
    sq1 = ((-x1 + 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
    sq2 = ((-x1 - 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
    return log1 * upper + sq1 * lower, log2 * upper + sq2 * lower


TOY_POINTS = [(-8.5, 7.5), (9.0, 9.0), (-7.5, -5.0), (9.0, -1.0), (1.3, 0.4), (-2.0, -3.0)]


def test_toy_values_match_the_transcribed_formula():
    toy = D.toy_two_objective()
    x = torch.tensor(TOY_POINTS, dtype=torch.float64)
    values = toy.objectives(x)
    expected = torch.tensor([toy_reference(*p) for p in TOY_POINTS], dtype=torch.float64)
    torch.testing.assert_close(values, expected, rtol=1e-13, atol=1e-13)
    assert values.shape == (len(TOY_POINTS), 2)


@pytest.mark.parametrize("point", TOY_POINTS, ids=[f"x={p}" for p in TOY_POINTS])
def test_toy_gradients_match_finite_differences(point):
    toy = D.toy_two_objective(scale=0.5)
    step = 1e-6
    for f in (toy.f1, toy.f2):
        x = torch.tensor(point, dtype=torch.float64, requires_grad=True)
        (grad,) = torch.autograd.grad(f(x), x)
        fd = torch.stack(
            [
                (f(x.detach() + step * e) - f(x.detach() - step * e)) / (2 * step)
                for e in torch.eye(2, dtype=torch.float64)
            ]
        )
        torch.testing.assert_close(grad, fd, rtol=1e-6, atol=1e-7)


def test_toy_losses_read_params_and_the_initial_points_are_cagrads():
    toy = D.toy_two_objective()
    assert toy.initial_points.shape == (5, 2)
    loss1, loss2 = toy.as_losses("x")
    params = {"x": toy.initial_points[3]}
    assert float(loss1(params)) == pytest.approx(toy_reference(-7.5, -5.0)[0], rel=1e-12)
    assert float(loss2(params)) == pytest.approx(toy_reference(-7.5, -5.0)[1], rel=1e-12)


# --------------------------------------------------------------------------------------
# batches and subsample
# --------------------------------------------------------------------------------------


def test_batches_cover_each_example_once_and_follow_the_generator():
    x = torch.arange(10.0)[:, None]
    y = torch.arange(10)

    def epoch(seed):
        return list(D.batches(x, y, 4, torch.Generator().manual_seed(seed)))

    first = epoch(0)
    assert [len(xb) for xb, _ in first] == [4, 4, 2]
    assert sorted(torch.cat([yb for _, yb in first]).tolist()) == list(range(10))
    assert all(torch.equal(xb[:, 0].long(), yb) for xb, yb in first)
    assert all(torch.equal(a[1], b[1]) for a, b in zip(first, epoch(0), strict=True))
    dropped = list(D.batches(x, y, 4, shuffle=False, drop_last=True))
    assert [yb.tolist() for _, yb in dropped] == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_subsample_is_a_fixed_subset():
    x = torch.arange(100.0)[:, None]
    y = torch.arange(100)
    xs, ys = D.subsample(x, y, 10, seed=7)
    xs2, ys2 = D.subsample(x, y, 10, seed=7)
    assert torch.equal(ys, ys2) and torch.equal(xs[:, 0].long(), ys)
    assert len(set(ys.tolist())) == 10
    assert not torch.equal(ys, D.subsample(x, y, 10, seed=8)[1])


# --------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------


def tiny_task(name: str, labels: list[int], classes: tuple[int, ...]) -> D.TaskData:
    y = torch.tensor(labels)
    return D.TaskData(name, torch.zeros(len(labels), 2), y, torch.zeros(len(labels), 2), y, classes)


BAD_CALLS = [
    (
        "subsample-too-many",
        lambda: D.subsample(torch.zeros(5, 1), torch.zeros(5), 6),
        ValueError,
        r"subsample: n=6 is larger than the data \(5",
    ),
    (
        "split-one-task",
        lambda: D.split_digits(1),
        ValueError,
        r"split_digits: num_tasks must be an int >= 2, got 1",
    ),
    ("split-three-tasks", lambda: D.split_digits(3), ValueError, r"split_digits: .* got 3"),
    (
        "split-bad-order",
        lambda: D.split_digits(5, class_order=[0, 0, 1, 2, 3, 4, 5, 6, 7, 8]),
        ValueError,
        r"split_digits: class_order must be a permutation",
    ),
    (
        "permuted-one-task",
        lambda: D.permuted_mnist_5k(1),
        ValueError,
        r"permuted_mnist_5k: num_tasks must be an int >= 2, got 1",
    ),
    (
        "rotated-one-angle",
        lambda: D.rotated_mnist_5k(angles=(0,)),
        ValueError,
        r"rotated_mnist_5k: needs at least 2 angles",
    ),
    (
        "generated-one-task",
        lambda: D.generated_tasks(1),
        ValueError,
        r"generated_tasks: num_tasks must be an int >= 2, got 1",
    ),
    (
        "generated-similarity",
        lambda: D.generated_tasks(2, 1.5),
        ValueError,
        r"generated_tasks: similarity must be in \[0, 1\], got 1.5",
    ),
    (
        "conflict-range",
        lambda: D.conflict_regression(2, -0.1),
        ValueError,
        r"conflict_regression_weights: conflict must be in \[0, 1\], got -0.1",
    ),
    (
        "conflict-too-few-features",
        lambda: D.conflict_regression(4, 0.5, in_features=4),
        ValueError,
        r"in_features must be >= num_tasks \+ 1 = 5, got 4",
    ),
    (
        "conflict-scales",
        lambda: D.conflict_regression(2, 0.5, scales=[1.0]),
        ValueError,
        r"conflict_regression: scales must be 2 finite numbers",
    ),
    (
        "unknown-dataset",
        lambda: D.load_dataset("cifar10"),
        ValueError,
        r"load_dataset: unknown data set 'cifar10'; valid names are \[.*'multi_digits'",
    ),
    (
        "int-dtype",
        lambda: D.multi_digits(dtype=torch.int64),
        TypeError,
        r"multi_digits: dtype must be a floating torch.dtype",
    ),
    (
        "downscale",
        lambda: D.multi_mnist_5k(downscale=3),
        ValueError,
        r"multi_mnist_5k: downscale must divide the image size 28x28, got 3",
    ),
    (
        "negative-seed",
        lambda: D.multi_digits(seed=-1),
        ValueError,
        r"multi_digits: seed must be a non-negative int, got -1",
    ),
    (
        "labels-outside-classes",
        lambda: tiny_task("t", [0, 3], (0, 1)),
        ValueError,
        r"TaskData: task 't' y_train has labels \[3\] outside its classes \(0, 1\)",
    ),
    (
        "one-task-sequence",
        lambda: D.ContinualData((tiny_task("t", [0, 1], (0, 1)),), "x"),
        ValueError,
        r"ContinualData: a continual sequence needs at least 2 tasks, got 1",
    ),
    (
        "duplicate-task-names",
        lambda: D.ContinualData((tiny_task("t", [0], (0,)), tiny_task("t", [1], (1,))), "x"),
        ValueError,
        r"ContinualData: task names must be unique",
    ),
    (
        "batches-mismatch",
        lambda: list(D.batches(torch.zeros(3, 1), torch.zeros(4), 2)),
        ValueError,
        r"batches: x has 3 rows but y has 4",
    ),
    (
        "batch-size",
        lambda: list(D.batches(torch.zeros(3, 1), torch.zeros(3), 0)),
        ValueError,
        r"batches: batch_size must be an int >= 1, got 0",
    ),
    (
        "toy-scale",
        lambda: D.toy_two_objective(scale=0.0),
        ValueError,
        r"toy_two_objective: scale must be a finite number > 0, got 0.0",
    ),
    (
        "toy-shape",
        lambda: D.toy_two_objective().f1(torch.zeros(3)),
        ValueError,
        r"toy_two_objective: x must have a last dimension of 2",
    ),
]


@pytest.mark.parametrize(
    ("call", "error", "message"), [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS]
)
def test_bad_input_names_the_call_and_the_value(call, error, message):
    with pytest.raises(error, match=message):
        call()
