"""Continual-learning metrics against values computed by hand on a small sequence.

The sequence: 3 tasks of 2 updates each (task_ends = 2, 4, 6); CURVE[n, j] is the
accuracy on task j after n updates. Every expected value below is worked out in the
comment next to it from the table, not from the code.
"""

import numpy as np
import pytest
import torch

from bea.diagnostics import continual_metrics as cm

#                 task0 task1 task2
CURVE = np.array(
    [
        [0.1, 0.2, 0.3],  # n=0 random init
        [0.6, 0.2, 0.3],  # n=1
        [0.8, 0.3, 0.2],  # n=2 end of task 0
        [0.4, 0.7, 0.3],  # n=3
        [0.9, 0.9, 0.4],  # n=4 end of task 1
        [0.5, 0.6, 0.8],  # n=5
        [0.6, 0.5, 1.0],  # n=6 end of task 2
    ]
)
ENDS = [2, 4, 6]
R = np.array([[0.8, 0.3, 0.2], [0.9, 0.9, 0.4], [0.6, 0.5, 1.0]])

CASES = {
    # (0.6 + 0.5 + 1.0) / 3
    "average_accuracy": (lambda: cm.average_accuracy(R), 0.7),
    # after task 1: (0.9 + 0.9) / 2
    "average_accuracy_after_1": (lambda: cm.average_accuracy(R, after_task=1), 0.9),
    # ((0.6 - 0.8) + (0.5 - 0.9)) / 2
    "backward_transfer": (lambda: cm.backward_transfer(R), -0.3),
    # ((R01 - b1) + (R12 - b2)) / 2 = ((0.3 - 0.2) + (0.4 - 0.3)) / 2
    "forward_transfer": (lambda: cm.forward_transfer(R, CURVE[0]), 0.1),
    # f0 = max(0.8, 0.9) - 0.6 = 0.3 (the max, not the diagonal), f1 = 0.9 - 0.5 = 0.4
    "forgetting": (lambda: cm.forgetting(R), 0.35),
    # task 0 over n = 3..6: min 0.4; task 1 over n = 5..6: min 0.5
    "min_accuracy": (lambda: cm.min_accuracy(CURVE, ENDS), 0.45),
    # after task 1: task 0 over n = 3..4: 0.4
    "min_accuracy_after_1": (lambda: cm.min_accuracy(CURVE, ENDS, after_task=1), 0.4),
    # 1/3 * 1.0 + 2/3 * 0.45
    "worst_case_accuracy": (lambda: cm.worst_case_accuracy(CURVE, ENDS), 1 / 3 + 0.3),
    # 1/2 * 0.9 + 1/2 * 0.4
    "worst_case_accuracy_after_1": (
        lambda: cm.worst_case_accuracy(CURVE, ENDS, after_task=1),
        0.65,
    ),
    # first task: just its own accuracy at its end
    "worst_case_accuracy_after_0": (
        lambda: cm.worst_case_accuracy(CURVE, ENDS, after_task=0),
        0.8,
    ),
    # lag 1 only. task0 n=0..6: 0.8->0.4 = 0.4; task1 n=2..6: 0.9->0.6 = 0.3; task2: no drop
    "windowed_forgetting_2": (lambda: cm.windowed_forgetting(CURVE, ENDS, 2), 0.7 / 3),
    # lags 1, 2. task0: 0.4; task1: 0.9->0.5 = 0.4; task2: 0
    "windowed_forgetting_3": (lambda: cm.windowed_forgetting(CURVE, ENDS, 3), 0.8 / 3),
    # lag 1 rises. task0: 0.4->0.9 = 0.5; task1: 0.3->0.7 = 0.4; task2: 0.4->0.8 = 0.4
    "windowed_plasticity_2": (lambda: cm.windowed_plasticity(CURVE, ENDS, 2), 1.3 / 3),
    # window longer than the run: any earlier/later pair. task0: 0.1->0.9; task1: 0.3->0.9;
    # task2: 0.4->1.0
    "windowed_plasticity_100": (
        lambda: cm.windowed_plasticity(CURVE, ENDS, 100),
        (0.8 + 0.6 + 0.6) / 3,
    ),
    # task0 (0.1+0.6)/2, task1 (0.3+0.7)/2, task2 (0.4+0.8)/2
    "learning_curve_area_1": (lambda: cm.learning_curve_area(CURVE, ENDS, 1), 1.45 / 3),
    # beta = 0: accuracy just before each task's first update: (0.1 + 0.3 + 0.4) / 3
    "learning_curve_area_0": (lambda: cm.learning_curve_area(CURVE, ENDS, 0), 0.8 / 3),
    "drop_in_window": (lambda: cm.max_windowed_drop([0.9, 0.5, 0.8, 0.2], 2), 0.6),
    "drop_never_negative": (lambda: cm.max_windowed_drop([0.1, 0.2, 0.3], 3), 0.0),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_metric_against_hand_value(name):
    compute, expected = CASES[name]
    got = compute()
    assert isinstance(got, float)
    assert got == pytest.approx(expected, abs=1e-12), f"{name}: got {got}, expected {expected}"


def test_accuracy_matrix_picks_task_end_rows():
    np.testing.assert_allclose(cm.accuracy_matrix(CURVE, ENDS), R)


def test_dips_after_each_switch():
    # switch into task 1 at n=2: task0 0.8 -> min(0.4, 0.9) = 0.4
    # switch into task 2 at n=4: task0 0.9 -> min(0.5, 0.6); task1 0.9 -> min(0.6, 0.5)
    whole = cm.stability_gap_dips(CURVE, ENDS)
    expected = np.array([[np.nan] * 3, [0.4, np.nan, np.nan], [0.4, 0.4, np.nan]])
    np.testing.assert_allclose(whole, expected, atol=1e-12)
    # one iteration after the switch only: task1 0.9 -> 0.6
    first = cm.stability_gap_dips(CURVE, ENDS, window=1)
    np.testing.assert_allclose(first[2, :2], [0.4, 0.3], atol=1e-12)


def test_tensor_input_gives_same_numbers():
    curve = torch.tensor(CURVE, dtype=torch.float32)
    got = cm.min_accuracy(curve, torch.tensor(ENDS))
    assert got == pytest.approx(0.45, abs=1e-6)


def test_summary_holds_every_metric():
    summary = cm.continual_summary(CURVE, ENDS, windows=(2, 3), lca_beta=1)
    assert summary["forgetting"] == pytest.approx(0.35)
    assert summary["windowed_forgetting_3"] == pytest.approx(0.8 / 3)
    assert summary["learning_curve_area_1"] == pytest.approx(1.45 / 3)
    # lca_beta longer than a task: left out rather than failing
    assert "learning_curve_area_10" not in cm.continual_summary(CURVE, ENDS, lca_beta=10)


ONE_TASK_CURVE = CURVE[:3, :1]

BAD = [
    (
        lambda: cm.backward_transfer([[0.9]]),
        ValueError,
        r"backward_transfer: .*at least 2 tasks, got 1",
    ),
    (lambda: cm.forgetting([[0.9]]), ValueError, r"forgetting_per_task: .*at least 2 tasks, got 1"),
    (lambda: cm.min_accuracy(ONE_TASK_CURVE, [2]), ValueError, r"min_accuracy: .*at least 2 tasks"),
    (lambda: cm.accuracy_matrix(CURVE, [2, 4]), ValueError, r"3 task columns but task_ends has 2"),
    (lambda: cm.accuracy_matrix(CURVE, [2, 2, 6]), ValueError, r"strictly increasing.*\[2, 2, 6\]"),
    (lambda: cm.accuracy_matrix(CURVE, [2, 4, 9]), ValueError, r"task_ends\[-1\] = 9"),
    (lambda: cm.accuracy_matrix(CURVE, [2.0, 4.0, 6.0]), TypeError, r"task_ends must be .* ints"),
    (lambda: cm.forward_transfer(R, [0.1, 0.2]), ValueError, r"baseline has 2 entries, expected 3"),
    (lambda: cm.average_accuracy(R[:2]), ValueError, r"must be square"),
    (lambda: cm.average_accuracy(R, after_task=3), ValueError, r"after_task must be in \[0, 2\]"),
    (lambda: cm.windowed_forgetting(CURVE, ENDS, 1), ValueError, r"window must be an int >= 2"),
    (lambda: cm.learning_curve_area(CURVE, ENDS, 3), ValueError, r"beta = 3 .*\[2, 2, 2\]"),
]


@pytest.mark.parametrize("call, error, match", BAD, ids=[b[2][:30] for b in BAD])
def test_bad_input_is_named(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_window_without_evaluations_is_an_error():
    from bea.diagnostics.continual_metrics import min_accuracy

    curve = np.full((6, 2), np.nan)
    curve[:3, 0] = [0.2, 0.6, 0.9]  # task 0 never evaluated after its training ends
    curve[3:, 1] = [0.3, 0.5, 0.8]
    with pytest.raises(
        ValueError, match=r"min_accuracy: task 0 has no evaluated accuracy in iterations \[3, 6\)"
    ):
        min_accuracy(curve, [2, 5])
