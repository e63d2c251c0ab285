import math

import numpy as np
import pytest

from guide import metrics

NAN = math.nan
# A[i][j]: accuracy on task i after training task j
A = [[0.9, 0.6, 0.5],
     [NAN, 0.8, 0.7],
     [NAN, NAN, 0.95]]


def test_worked_3x3_matrix():
    assert metrics.final_average_accuracy(A) == pytest.approx((0.5 + 0.7 + 0.95) / 3)
    assert metrics.average_incremental_accuracy(A) == pytest.approx((0.9 + 0.7 + (0.5 + 0.7 + 0.95) / 3) / 3)
    # task 0: best earlier 0.9 → 0.5 now; task 1: 0.8 → 0.7
    assert metrics.forgetting(A) == pytest.approx((0.4 + 0.1) / 2)
    assert metrics.backward_transfer(A) == pytest.approx(((0.5 - 0.9) + (0.7 - 0.8)) / 2)


def test_forgetting_uses_the_best_earlier_evaluation_not_the_first():
    a = [[0.5, 0.9, 0.6], [NAN, 0.8, 0.8], [NAN, NAN, 1.0]]
    assert metrics.forgetting(a) == pytest.approx(((0.9 - 0.6) + 0.0) / 2)
    assert metrics.backward_transfer(a) == pytest.approx(((0.6 - 0.5) + 0.0) / 2)


def test_one_task_and_bad_shapes():
    assert metrics.summarize([[0.7]]) == {"final_average_accuracy": 0.7, "average_incremental_accuracy": 0.7,
                                          "forgetting": 0.0, "backward_transfer": 0.0}
    with pytest.raises(ValueError, match="square"):
        metrics.forgetting(np.zeros((2, 3)))
