"""Continual-learning metrics from the accuracy matrix A, where A[i][j] is the test accuracy on task
i after training task j (NaN where i > j: task i not seen yet)."""
from __future__ import annotations

import numpy as np


def _matrix(acc) -> np.ndarray:
    a = np.asarray(acc, dtype=float)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"accuracy matrix must be square T×T, got shape {a.shape}")
    return a


def final_average_accuracy(acc) -> float:
    """Mean over tasks i of A[i][T−1]."""
    a = _matrix(acc)
    return float(a[:, -1].mean())


def average_incremental_accuracy(acc) -> float:
    """Mean over j of the mean over i ≤ j of A[i][j]."""
    a = _matrix(acc)
    return float(np.mean([a[: j + 1, j].mean() for j in range(a.shape[0])]))


def forgetting(acc) -> float:
    """The reference's forgetting: for each task i < T−1, the largest drop from any earlier
    evaluation A[i][j] (i ≤ j < T−1) to A[i][T−1], averaged over those tasks (0 for one task)."""
    a = _matrix(acc)
    t = a.shape[0]
    if t < 2:
        return 0.0
    return float(np.mean([a[i, i : t - 1].max() - a[i, -1] for i in range(t - 1)]))


def backward_transfer(acc) -> float:
    """Mean over i < T−1 of A[i][T−1] − A[i][i] (negative when learning later tasks hurts)."""
    a = _matrix(acc)
    t = a.shape[0]
    if t < 2:
        return 0.0
    return float(np.mean([a[i, -1] - a[i, i] for i in range(t - 1)]))


# the registry of metrics, by the name they carry in metrics/summary.json and every table
METRICS = {f.__name__: f for f in (final_average_accuracy, average_incremental_accuracy, forgetting, backward_transfer)}
HEADLINE = ("final_average_accuracy", "average_incremental_accuracy", "forgetting")  # what comparisons lead with


def summarize(acc) -> dict[str, float]:
    return {name: f(acc) for name, f in METRICS.items()}
