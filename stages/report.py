"""Collect every task's evaluation into the accuracy matrix (CSV), the final metrics (JSON, for
`dvc metrics show` and `dvc exp show`) and the accuracy heatmap; print them. With generated replay,
the summary also holds the mechanism metrics (guide.mechanism) averaged over every replay shard,
weighted by the number of samples, and the oracle's test accuracy.

    python -m stages.report
"""
from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd

from guide.io import atomic_path, atomic_write_text
from guide.mechanism import STATS, VIEWS
from guide.metrics import METRICS, summarize
from params import Params
from stages import paths, plots
from stages.common import SEED, Context, log, log_image, log_table, run_stage


def reads(p: Params, task: int | None = None, round: int | None = None) -> tuple[str, ...]:
    """The params keys (or groups) this stage reads: the graph declares them to DVC."""
    return (SEED, "run.method", "data.dataset", "data.num_tasks", "tracking")


def accuracy_matrix(num_tasks: int) -> np.ndarray:
    """A[i][j] from the evaluation files; NaN where task i comes after task j."""
    a = np.full((num_tasks, num_tasks), np.nan)
    for j in range(num_tasks):
        for i, acc in enumerate(json.loads(open(paths.evaluation(j)).read())["accuracy"]):
            a[i, j] = acc
    return a


def replay_summary(files: list[str]) -> dict:
    """Each view's mechanism statistics averaged over the replay shards, weighted by sample count."""
    shards = [json.loads(open(f).read()) for f in files]
    total = sum(s["count"] for s in shards)
    order = ("oracle_accuracy", "current_mass", *(k for k in STATS if k not in ("oracle_accuracy", "current_mass")))
    out = {view: {k: round(sum(s[view][k] * s["count"] for s in shards) / total, 6) for k in order}
           for view in (*VIEWS, "delta")}
    return {**out, "count": total}


def run(ctx: Context) -> None:
    n = ctx.params.data.num_tasks
    a = accuracy_matrix(n)
    frame = pd.DataFrame(a, index=[f"task {i}" for i in range(n)], columns=[f"after task {j}" for j in range(n)])
    with atomic_path(paths.ACCURACY_CSV) as tmp:
        frame.to_csv(tmp, float_format="%.4f")
    # key order is column order in `dvc exp show`: the headline metrics, replay quality, then the rest
    summary = summarize(a)
    mechanism = paths.all_replay_metrics(ctx.params)
    if mechanism:
        summary["replay"] = replay_summary(mechanism)
        summary["oracle_test_accuracy"] = json.loads(open(paths.ORACLE_METRICS).read())["test_accuracy"]
    summary.update({"method": ctx.params.run.method, "seed": ctx.params.run.seed, "num_tasks": n,
                    "accuracy_matrix": [[None if np.isnan(v) else round(v, 4) for v in row] for row in a]})
    atomic_write_text(paths.SUMMARY, json.dumps(summary, indent=2) + "\n")
    title = f"{ctx.params.data.dataset}/{n}, {ctx.params.run.method}, seed {ctx.params.run.seed}"
    plots.accuracy_heatmap(paths.ACCURACY_PNG, a, title)
    print(f"accuracy matrix, {title} (row: task, column: after training task)")
    print(frame.to_string(float_format=lambda v: f"{v:.3f}", na_rep="·"))
    for k in METRICS:
        print(f"{k:30s} {summary[k]:.4f}")
    if mechanism:
        r = summary["replay"]
        print(f"replay (guided / unguided twin): oracle accuracy {r['guided']['oracle_accuracy']:.3f} / "
              f"{r['unguided']['oracle_accuracy']:.3f}, current-task mass {r['guided']['current_mass']:.3f} / "
              f"{r['unguided']['current_mass']:.3f}; oracle test accuracy {summary['oracle_test_accuracy']:.3f}")
    log({k: v for k, v in summary.items() if isinstance(v, float)})
    log_table("accuracy_matrix", frame.reset_index())
    log_image("accuracy_matrix", paths.ACCURACY_PNG)


def main(argv: list[str] | None = None) -> int:
    return run_stage("report", run, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
