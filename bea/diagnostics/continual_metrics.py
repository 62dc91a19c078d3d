"""Continual-learning metrics: task-end and per-iteration (continual) evaluation.

Two inputs describe a run on a sequence of ``T`` tasks:

- ``curve``: array of shape ``(N + 1, T)``; ``curve[n, j]`` is the accuracy on the
  evaluation set of task ``j`` after ``n`` updates (row 0 is the model before any
  update). Entries may be NaN for tasks that were not evaluated at that iteration.
- ``task_ends``: ``T`` strictly increasing update counts; task ``k`` is trained by
  updates ``task_ends[k-1] + 1 .. task_ends[k]`` (with ``task_ends[-1] = 0``), so
  row ``task_ends[k]`` is the model at the end of task ``k``.

The accuracy matrix ``R[i, j] = curve[task_ends[i], j]`` (accuracy on task ``j``
after training task ``i``) feeds the task-end metrics of Lopez-Paz & Ranzato (2017,
GEM) and Chaudhry et al. (2018, RWalk); the per-iteration curve feeds the
continual-evaluation metrics of De Lange, van de Ven & Tuytelaars (2023,
"Continual evaluation for lifelong learning: identifying the stability gap", ICLR)
and the learning-curve area of Chaudhry et al. (2019, A-GEM).

All functions are pure; they accept numpy arrays, torch tensors or nested lists and
return Python floats or numpy arrays. Task indices are 0-based here, while the papers
count from 1.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "accuracy_matrix",
    "average_accuracy",
    "backward_transfer",
    "forward_transfer",
    "forgetting",
    "forgetting_per_task",
    "min_accuracy",
    "worst_case_accuracy",
    "windowed_forgetting",
    "windowed_plasticity",
    "max_windowed_drop",
    "learning_curve_area",
    "stability_gap_dips",
    "continual_summary",
]


def _as_array(call: str, values, ndim: int, what: str) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != ndim:
        raise ValueError(f"{call}: {what} must have {ndim} dimensions, got shape {array.shape}")
    return array


def _check_matrix(call: str, matrix, minimum_tasks: int = 1) -> np.ndarray:
    R = _as_array(call, matrix, 2, "the accuracy matrix")
    if R.shape[0] != R.shape[1]:
        raise ValueError(f"{call}: the accuracy matrix must be square (T, T), got shape {R.shape}")
    if R.shape[0] < minimum_tasks:
        raise ValueError(
            f"{call}: needs a sequence of at least {minimum_tasks} tasks, got {R.shape[0]}"
        )
    return R


def _check_curve(call: str, curve, task_ends, minimum_tasks: int = 1):
    A = _as_array(call, curve, 2, "curve")
    if hasattr(task_ends, "detach"):
        task_ends = task_ends.detach().cpu().numpy()
    ends = np.asarray(task_ends)
    if ends.ndim != 1 or not np.issubdtype(ends.dtype, np.integer):
        raise TypeError(f"{call}: task_ends must be a 1-D sequence of ints, got {task_ends!r}")
    T = A.shape[1]
    if ends.shape[0] != T:
        raise ValueError(
            f"{call}: curve has {T} task columns but task_ends has {ends.shape[0]} entries"
        )
    if T < minimum_tasks:
        raise ValueError(f"{call}: needs a sequence of at least {minimum_tasks} tasks, got {T}")
    if ends[0] < 1 or np.any(np.diff(ends) < 1):
        raise ValueError(
            f"{call}: task_ends must be strictly increasing update counts >= 1, got {ends.tolist()}"
        )
    if ends[-1] > A.shape[0] - 1:
        raise ValueError(
            f"{call}: task_ends[-1] = {ends[-1]} needs curve rows 0..{ends[-1]}, "
            f"but curve has {A.shape[0]} rows"
        )
    return A, ends.astype(np.int64)


def _task_start(ends: np.ndarray, k: int) -> int:
    """Row of the model just before the first update on task ``k``."""
    return 0 if k == 0 else int(ends[k - 1])


def accuracy_matrix(curve, task_ends) -> np.ndarray:
    """``R[i, j] = curve[task_ends[i], j]``: accuracy on task ``j`` after training task ``i``.

    Example:
        >>> accuracy_matrix([[0.1, 0.2], [0.9, 0.3], [0.6, 0.8]], [1, 2]).tolist()
        [[0.9, 0.3], [0.6, 0.8]]
    """
    A, ends = _check_curve("accuracy_matrix", curve, task_ends)
    return A[ends, :].copy()


def average_accuracy(matrix, after_task: int | None = None) -> float:
    """``ACC_k = (1/(k+1)) sum_{j<=k} R[k, j]``, the mean accuracy on the tasks seen so far.

    ``after_task`` is ``k`` (0-based, default: the last task), so the default is the
    final average accuracy of Lopez-Paz & Ranzato (2017).
    """
    R = _check_matrix("average_accuracy", matrix)
    T = R.shape[0]
    k = T - 1 if after_task is None else int(after_task)
    if not 0 <= k < T:
        raise ValueError(f"average_accuracy: after_task must be in [0, {T - 1}], got {after_task}")
    return float(np.mean(R[k, : k + 1]))


def backward_transfer(matrix) -> float:
    """``BWT = (1/(T-1)) sum_{j<T-1} (R[T-1, j] - R[j, j])`` (Lopez-Paz & Ranzato, 2017).

    Negative values mean forgetting. Needs at least two tasks.
    """
    R = _check_matrix("backward_transfer", matrix, minimum_tasks=2)
    T = R.shape[0]
    return float(np.mean(R[T - 1, : T - 1] - np.diag(R)[: T - 1]))


def forward_transfer(matrix, baseline) -> float:
    """``FWT = (1/(T-1)) sum_{j>=1} (R[j-1, j] - b_j)`` (Lopez-Paz & Ranzato, 2017).

    ``baseline[j] = b_j`` is the accuracy on task ``j`` of the model at random
    initialization (``curve[0]``). Needs at least two tasks.
    """
    R = _check_matrix("forward_transfer", matrix, minimum_tasks=2)
    b = _as_array("forward_transfer", baseline, 1, "baseline")
    T = R.shape[0]
    if b.shape[0] != T:
        raise ValueError(f"forward_transfer: baseline has {b.shape[0]} entries, expected {T}")
    return float(np.mean(R[np.arange(T - 1), np.arange(1, T)] - b[1:]))


def forgetting_per_task(matrix) -> np.ndarray:
    """``f_j = max_{l in [j, T-2]} R[l, j] - R[T-1, j]`` for ``j < T-1`` (Chaudhry et al., 2018).

    The largest drop from the best accuracy task ``j`` ever had before the last task
    to its final accuracy. Returns an array of ``T - 1`` values.
    """
    R = _check_matrix("forgetting_per_task", matrix, minimum_tasks=2)
    T = R.shape[0]
    best = np.array([np.max(R[j : T - 1, j]) for j in range(T - 1)])
    return best - R[T - 1, : T - 1]


def forgetting(matrix) -> float:
    """Average maximum-based forgetting ``F = (1/(T-1)) sum_{j<T-1} f_j`` (Chaudhry et al., 2018).

    Example:
        >>> forgetting([[0.9, 0.0], [0.5, 0.8]])
        0.4
    """
    return float(np.mean(forgetting_per_task(matrix)))


def _window_min(call: str, A: np.ndarray, task: int, start: int, stop: int) -> float:
    """``min`` of task ``task``'s accuracies over iterations ``[start, stop)``, ignoring NaN;
    a window with no evaluated accuracy is an error, not a silent NaN."""
    values = A[start:stop, task]
    if values.size == 0 or np.isnan(values).all():
        raise ValueError(
            f"{call}: task {task} has no evaluated accuracy in iterations [{start}, {stop})"
        )
    return float(np.nanmin(values))


def min_accuracy(curve, task_ends, after_task: int | None = None) -> float:
    """min-ACC (De Lange et al., 2023): mean over previous tasks of their worst accuracy.

    ``min-ACC_k = (1/k) sum_{i<k} min_{task_ends[i] < n <= task_ends[k]} curve[n, i]``:
    the minimum over every iteration after task ``i`` was learned, up to the end of
    task ``k`` (default: the last task). Needs ``k >= 1``.
    """
    call = "min_accuracy"
    A, ends = _check_curve(call, curve, task_ends, minimum_tasks=2)
    T = len(ends)
    k = T - 1 if after_task is None else int(after_task)
    if not 1 <= k < T:
        raise ValueError(f"{call}: after_task must be in [1, {T - 1}], got {after_task}")
    minima = [_window_min(call, A, i, ends[i] + 1, ends[k] + 1) for i in range(k)]
    return float(np.mean(minima))


def worst_case_accuracy(curve, task_ends, after_task: int | None = None) -> float:
    """WC-ACC (De Lange et al., 2023): ``(1/(k+1)) A_k + (1 - 1/(k+1)) min-ACC_k``.

    ``A_k = curve[task_ends[k], k]`` is the accuracy of the current task ``k`` at the
    end of its training (default ``k``: the last task). For ``k = 0`` it is ``A_0``.
    """
    call = "worst_case_accuracy"
    A, ends = _check_curve(call, curve, task_ends)
    T = len(ends)
    k = T - 1 if after_task is None else int(after_task)
    if not 0 <= k < T:
        raise ValueError(f"{call}: after_task must be in [0, {T - 1}], got {after_task}")
    current = float(A[ends[k], k])
    if k == 0:
        return current
    weight = 1.0 / (k + 1)
    return weight * current + (1.0 - weight) * min_accuracy(curve, task_ends, after_task=k)


def max_windowed_drop(series, window: int) -> float:
    """``max_{m < n, n - m < w} (a_m - a_n)``, clipped below at 0: the worst drop in any window.

    A window holds ``w`` consecutive evaluations, so the two points of a drop are at
    most ``w - 1`` evaluations apart. NaN entries are ignored. This is the per-task
    quantity inside WF_w (De Lange et al., 2023); apply it to ``-series`` for WP_w.

    Example:
        >>> max_windowed_drop([0.9, 0.5, 0.8, 0.2], window=2)
        0.6
    """
    a = _as_array("max_windowed_drop", series, 1, "series")
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 2:
        raise ValueError(f"max_windowed_drop: window must be an int >= 2, got {window!r}")
    best = 0.0
    for lag in range(1, min(window, a.shape[0])):
        drops = a[:-lag] - a[lag:]
        drops = drops[np.isfinite(drops)]
        if drops.size:
            best = max(best, float(drops.max()))
    return best


def _windowed(call: str, curve, task_ends, window: int, sign: float) -> float:
    A, ends = _check_curve(call, curve, task_ends)
    values = [
        max_windowed_drop(sign * A[_task_start(ends, j) : ends[-1] + 1, j], window)
        for j in range(len(ends))
    ]
    return float(np.mean(values))


def windowed_forgetting(curve, task_ends, window: int = 10) -> float:
    """WF_w (De Lange et al., 2023): mean over tasks of the largest accuracy drop in a window.

    ``WF_w = (1/T) sum_j max_{m<n, n-m<w} (curve[m, j] - curve[n, j])`` with ``m, n``
    ranging over the iterations from the start of task ``j``'s training to the end of
    the run. ``w = 10`` and ``w = 100`` are the paper's choices.
    """
    return _windowed("windowed_forgetting", curve, task_ends, window, 1.0)


def windowed_plasticity(curve, task_ends, window: int = 10) -> float:
    """WP_w (De Lange et al., 2023): mean over tasks of the largest accuracy rise in a window.

    ``WP_w = (1/T) sum_j max_{m<n, n-m<w} (curve[n, j] - curve[m, j])``, same ranges
    as :func:`windowed_forgetting`.
    """
    return _windowed("windowed_plasticity", curve, task_ends, window, -1.0)


def learning_curve_area(curve, task_ends, beta: int = 10) -> float:
    """LCA_beta (Chaudhry et al., 2019): area under the early learning curve of each task.

    ``LCA_beta = (1/(beta+1)) sum_{b=0}^{beta} Z_b`` with
    ``Z_b = (1/T) sum_k curve[task_ends[k-1] + b, k]``, the mean accuracy on each task
    after ``b`` updates on it (``b = 0``: just before its first update). Every task
    must have at least ``beta`` updates.
    """
    call = "learning_curve_area"
    A, ends = _check_curve(call, curve, task_ends)
    if isinstance(beta, bool) or not isinstance(beta, (int, np.integer)) or beta < 0:
        raise ValueError(f"{call}: beta must be an int >= 0, got {beta!r}")
    lengths = np.diff(np.concatenate([[0], ends]))
    if np.any(lengths < beta):
        raise ValueError(
            f"{call}: beta = {beta} needs every task to have >= {beta} updates, "
            f"got task lengths {lengths.tolist()}"
        )
    per_task = [
        np.mean(A[_task_start(ends, k) : _task_start(ends, k) + beta + 1, k])
        for k in range(len(ends))
    ]
    return float(np.mean(per_task))


def stability_gap_dips(curve, task_ends, window: int | None = None) -> np.ndarray:
    """Depth of the dip of each old task right after each task switch.

    ``dip[k, i] = curve[s, i] - min_{s < n <= s + w} curve[n, i]`` for ``i < k``, with
    ``s = task_ends[k-1]`` the switch into task ``k`` and ``w`` the window (default:
    the whole of task ``k``). NaN where ``i >= k``. Row 0 is all NaN. The "stability gap"
    of De Lange et al. (2023) is a large dip that later recovers.
    """
    call = "stability_gap_dips"
    A, ends = _check_curve(call, curve, task_ends, minimum_tasks=2)
    T = len(ends)
    if window is not None and (isinstance(window, bool) or window < 1):
        raise ValueError(f"{call}: window must be an int >= 1 or None, got {window!r}")
    dips = np.full((T, T), np.nan)
    for k in range(1, T):
        switch = int(ends[k - 1])
        stop = int(ends[k]) if window is None else min(int(ends[k]), switch + window)
        for i in range(k):
            dips[k, i] = A[switch, i] - _window_min(call, A, i, switch + 1, stop + 1)
    return dips


def continual_summary(curve, task_ends, baseline=None, windows=(10, 100), lca_beta=10) -> dict:
    """All the metrics above for one run, as a flat dict of floats.

    ``baseline`` defaults to ``curve[0]`` (the random-initialization accuracies).
    Windowed metrics are given for each ``w`` in ``windows``; LCA is left out if a
    task is shorter than ``lca_beta``.
    """
    A, ends = _check_curve("continual_summary", curve, task_ends, minimum_tasks=2)
    R = A[ends, :]
    base = A[0] if baseline is None else baseline
    summary = {
        "average_accuracy": average_accuracy(R),
        "forgetting": forgetting(R),
        "backward_transfer": backward_transfer(R),
        "forward_transfer": forward_transfer(R, base),
        "min_accuracy": min_accuracy(A, ends),
        "worst_case_accuracy": worst_case_accuracy(A, ends),
        "mean_dip": float(np.nanmean(stability_gap_dips(A, ends))),
    }
    for w in windows:
        summary[f"windowed_forgetting_{w}"] = windowed_forgetting(A, ends, w)
        summary[f"windowed_plasticity_{w}"] = windowed_plasticity(A, ends, w)
    if np.all(np.diff(np.concatenate([[0], ends])) >= lca_beta):
        summary[f"learning_curve_area_{lca_beta}"] = learning_curve_area(A, ends, lca_beta)
    return summary
