"""Train the oracle: a classifier of the run's architecture on every real training image of every
class at once. It never guides anything; it judges replay (guide.mechanism): is a replayed sample
still the old class it was conditioned on? Its own test accuracy goes to metrics/oracle.json, the
ceiling against which its judgement is read.

    python -m stages.oracle
"""
from __future__ import annotations

import sys

from guide.augment import make_augmentation
from guide.continual import evaluate, make_optimizer, train_classifier
from guide.io import atomic_write_json, save_checkpoint
from params import Params
from stages import paths
from stages.common import SEED, Context, Curve, progress, run_stage


def reads(p: Params, task: int | None = None, round: int | None = None) -> tuple[str, ...]:
    """The params keys (or groups) this stage reads: the graph declares them to DVC."""
    return (SEED, "data", "classifier.arch", "classifier.width", "classifier.momentum", "classifier.weight_decay",
            "classifier.augmentation", "oracle")


def run(ctx: Context) -> None:
    p, c, data = ctx.params.oracle, ctx.params.classifier, ctx.data
    model = ctx.new_classifier()
    optimizer = make_optimizer(model, p.lr, c.momentum, c.weight_decay)
    bar = progress(p.steps, "oracle")
    curve = Curve(paths.curve("oracle"), ("loss", "accuracy"), every=20, last=p.steps, prefix="oracle")
    last = {}

    def step_done(step: int, loss: float) -> None:
        bar.update(1)
        last["loss"] = loss
    train_classifier(model, optimizer, data.train_x.to(ctx.device), data.train_y.to(ctx.device),
                     steps=range(p.steps), total_steps=p.steps, batch_size=p.batch_size, lr=p.lr,
                     num_seen=data.num_classes, task=0,
                     augment=make_augmentation(c.augmentation, data.channels, data.image_size),
                     generator=ctx.generator("batches"), callback=step_done,
                     on_batch=lambda step, accuracy, lr: curve.add(step, loss=last["loss"], accuracy=accuracy))
    bar.close()
    curve.write()
    every = [range(0, data.num_classes)]
    accuracy = evaluate(model, data.test_x.to(ctx.device), data.test_y.to(ctx.device), every,
                        batch_size=p.batch_size)[0]
    save_checkpoint(paths.ORACLE, {"model": model.state_dict()})
    atomic_write_json(paths.ORACLE_METRICS, {"test_accuracy": round(accuracy, 6), "steps": p.steps})
    print(f"oracle: test accuracy {accuracy:.4f} over all {data.num_classes} classes")


def main(argv: list[str] | None = None) -> int:
    return run_stage("oracle", run, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
