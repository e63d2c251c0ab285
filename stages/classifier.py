"""Train classifier(t) for round r: real task-t images mixed with replay of the old classes.

Round 0 starts from classifier(t−1) (task 0: a fresh network); round r > 0 resumes round r−1's
weights and optimizer. In `guidance.mode: online` there is one round and replay is regenerated
inside this stage every `classifier.interval` steps, guided by the classifier as it trains — the
reference's loop — and everything generated is written to a shard as well.

    python -m stages.classifier --task 1 --round 0
"""
from __future__ import annotations

import sys

import torch

from guide.augment import make_augmentation
from guide.continual import METHODS, make_optimizer, mixed_batch_sizes, train_classifier
from guide.data import task_subset
from guide.io import load_shard, save_checkpoint, save_shard
from stages import paths
from stages.common import Context, ParamsError, log, progress, run_stage


def round_source(ctx: Context):
    """Replay from this round's shard: step s uses chunk ⌊(s − first step) / interval⌋."""
    shard = load_shard(paths.replay(ctx.task, ctx.round))
    per, first = shard["manifest"]["per_chunk"], ctx.round * (ctx.params.classifier.steps_later
                                                                // ctx.params.classifier_rounds(ctx.task))
    x, y, interval = shard["images"].to(ctx.device), shard["labels"].to(ctx.device), ctx.params.classifier.interval

    def source(step: int):
        c = (step - first) // interval
        return x[c * per : (c + 1) * per], y[c * per : (c + 1) * per]

    return source, None


def online_source(ctx: Context, classifier: torch.nn.Module):
    """Replay regenerated every `interval` steps by the classifier being trained (the reference)."""
    from stages.replay import Replayer  # only the online mode samples here

    replayer, interval = Replayer(ctx), ctx.params.classifier.interval
    per = mixed_batch_sizes(ctx.params.classifier.batch_size, ctx.task, replay=True)[1]
    noise, scales = ctx.generator("noise"), ctx.generator("scales")
    record: dict[str, list] = {"images": [], "labels": [], "targets": []}
    if replayer.method.guidance != "none":
        replayer.grid(classifier if replayer.method.guidance == "new" else None)
    bank = {}

    def source(step: int):
        if step % interval == 0 or not bank:
            guide_by = classifier if replayer.method.guidance == "new" else None
            images, labels, targets = replayer.draw(per, guide_by, classifier, noise, scales)
            classifier.train()  # guidance put it in eval mode
            bank["x"], bank["y"] = images.to(ctx.device), labels.to(ctx.device)
            for k, v in zip(("images", "labels", "targets"), (images, labels, targets)):
                record[k].append(v)
        return bank["x"], bank["y"]

    def save() -> None:
        replayer.save_mechanism(paths.replay_metrics(ctx.task, None), {"round": None})
        save_shard(paths.replay(ctx.task, None), torch.cat(record["images"]), torch.cat(record["labels"]),
                   replayer.manifest(None, {"round": None, "interval": interval, "per_chunk": per}),
                   extra={"targets": torch.cat(record["targets"])})

    return source, save


def run(ctx: Context) -> None:
    p, t, r = ctx.params.classifier, ctx.task, ctx.round
    rounds = ctx.params.classifier_rounds(t)
    if not 0 <= r < rounds:
        raise ParamsError(f"--round {r}: task {t} has {rounds} classifier round(s) for these params")
    method = METHODS[ctx.params.run.method]
    total = p.steps_first if t == 0 else p.steps_later
    lr = p.lr_first if t == 0 else p.lr_later
    per_round = total // rounds
    model = ctx.new_classifier()
    optimizer = make_optimizer(model, lr, p.momentum, p.weight_decay)
    if r > 0:
        model, ckpt = ctx.load_classifier(paths.classifier(t, r - 1))
        optimizer = make_optimizer(model, lr, p.momentum, p.weight_decay)
        optimizer.load_state_dict(ckpt["optimizer"])
    elif t > 0:
        model, _ = ctx.load_classifier(ctx.final_classifier(t - 1))
        optimizer = make_optimizer(model, lr, p.momentum, p.weight_decay)

    seen = range(0, ctx.seen())
    x, y = task_subset(ctx.data.train_x, ctx.data.train_y, seen if method.replay == "real" else ctx.tasks[t])
    source, finish = None, None
    if method.replay == "generated" and t > 0:
        source, finish = (online_source(ctx, model) if ctx.params.guidance.mode == "online"
                          else round_source(ctx))
    bar = progress(per_round, f"classifier@{t}.{r}")

    def step_done(step: int, loss: float) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
        if step % 20 == 0:
            log({"classifier/loss": loss}, step=step)

    losses = train_classifier(model, optimizer, x.to(ctx.device), y.to(ctx.device),
                              steps=range(r * per_round, (r + 1) * per_round), total_steps=total,
                              batch_size=p.batch_size, lr=lr, num_seen=seen.stop, task=t, replay=source,
                              augment=make_augmentation(p.augmentation, ctx.data.channels, ctx.data.image_size),
                              generator=ctx.generator("batches"), callback=step_done)
    bar.close()
    if finish is not None:
        finish()
    save_checkpoint(paths.classifier(t, r), {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                               "task": t, "round": r, "losses": torch.tensor(losses)})


def main(argv: list[str] | None = None) -> int:
    return run_stage("classifier", run, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
