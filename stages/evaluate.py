"""Evaluate classifier(t) on the test images of tasks 0 … t (prediction among the classes seen).

    python -m stages.evaluate --task 1
"""
from __future__ import annotations

import sys

from guide.continual import evaluate
from guide.io import atomic_write_json
from params import Params
from stages import paths
from stages.common import SEED, Context, log, run_stage


def reads(p: Params, task: int, round: int | None = None) -> tuple[str, ...]:
    """The params keys (or groups) this stage reads: the graph declares them to DVC."""
    return (SEED, "data", "classifier.arch", "classifier.width", "evaluate.batch_size")


def run(ctx: Context) -> None:
    t = ctx.task
    model, _ = ctx.load_classifier(ctx.final_classifier(t))
    acc = evaluate(model, ctx.data.test_x.to(ctx.device), ctx.data.test_y.to(ctx.device), ctx.tasks[: t + 1],
                   batch_size=ctx.params.evaluate.batch_size)
    atomic_write_json(paths.evaluation(t), {"task": t, "accuracy": acc})
    print(f"after task {t}: " + ", ".join(f"task {i} {a:.3f}" for i, a in enumerate(acc)))
    log({f"accuracy/task{i}": a for i, a in enumerate(acc)}, step=t)


def main(argv: list[str] | None = None) -> int:
    return run_stage("evaluate", run, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
