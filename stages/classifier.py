"""Train classifier(t) for round r: real task-t images mixed with replay of the old classes.

Round 0 starts from classifier(t−1) (task 0: a fresh network); round r > 0 resumes round r−1's
weights and optimizer. In `guidance.mode: online` there is one round and replay is regenerated
inside this stage every `classifier.interval` steps, guided by the classifier as it trains — the
reference's loop — and everything generated is written to a shard as well.

    python -m stages.classifier --task 1 --round 0
    torchrun --nproc-per-node 4 -m stages.classifier --task 1   # data parallel: classifier.batch_size
                                                                # split over 4 ranks, rank 0 writes
"""
from __future__ import annotations

import sys

import torch

from guide.augment import make_augmentation
from guide.continual import METHODS, make_optimizer, train_classifier
from guide.data import task_subset
from guide.io import load_shard, save_checkpoint, save_shard
from params import Params
from stages import paths
from stages.common import SEED, Context, Curve, ParamsError, progress, run_stage


def reads(p: Params, task: int, round: int | None = None) -> tuple[str, ...]:
    """The params keys (or groups) this stage reads: the graph declares them to DVC. In `online`
    mode a classifier of task t ≥ 1 with generated replay draws that replay itself."""
    which = ("steps_first", "lr_first") if task == 0 else ("steps_later", "lr_later", "interval")
    keys = (SEED, "run.method", "data", *(f"classifier.{k}" for k in (*which, "arch", "width", "batch_size", "momentum",
                                                                        "weight_decay", "augmentation")))
    method = METHODS[p.run.method]
    if task > 0 and method.uses_diffusion and p.guidance.mode == "online":
        from stages import replay_io

        grid = replay_io.GRID_READS if method.guidance != "none" else ()
        keys = tuple(dict.fromkeys(keys + replay_io.READS + grid))
    return keys


def round_source(ctx: Context):
    """Replay from this round's shard, chunk by chunk as guide.replay lays it out."""
    from stages import replay_io  # only methods with generated replay load it

    shard = load_shard(paths.replay(ctx.task, ctx.round))
    layout, r = replay_io.layout(ctx), ctx.round
    x, y, per = shard["images"].to(ctx.device), shard["labels"].to(ctx.device), shard["manifest"]["per_chunk"]

    def source(step: int):
        c = layout.chunk(step, r)
        return x[c * per : (c + 1) * per], y[c * per : (c + 1) * per]

    return source, None


def online_source(ctx: Context, classifier: torch.nn.Module):
    """Replay regenerated every `interval` steps, steered by the classifier being trained (the
    reference's loop); everything drawn is kept for the shard."""
    from stages import replay_io

    replay, layout = replay_io.open_replay(ctx), replay_io.layout(ctx)
    noise, scales = ctx.generator("noise"), ctx.generator("scales")
    record: dict[str, list] = {"images": [], "labels": [], "targets": []}
    if replay.guided:
        replay_io.draw_grid(ctx, replay, classifier)
    bank = {}

    def state_dict() -> dict:  # for a resume state: where the replay stands
        return {"noise": noise.get_state(), "scales": scales.get_state(), "bank": dict(bank),
                "record": {k: list(v) for k, v in record.items()}, "probe": replay.probe.state_dict()}

    def load_state_dict(state: dict) -> None:
        noise.set_state(state["noise"])
        scales.set_state(state["scales"])
        bank.clear()
        bank.update(state["bank"])
        record.update({k: list(v) for k, v in state["record"].items()})
        replay.probe.load_state_dict(state["probe"])

    def source(step: int):
        if bank.get("chunk") != layout.chunk(step):
            images, labels, targets = replay.draw(layout.per_chunk, classifier, noise, scales)
            classifier.train()  # guidance and measuring put it in eval mode
            bank.update(chunk=layout.chunk(step), x=images.to(ctx.device), y=labels.to(ctx.device))
            for k, v in zip(("images", "labels", "targets"), (images, labels, targets)):
                record[k].append(v)
        return bank["x"], bank["y"]

    def save() -> None:
        if not ctx.world.main:
            return
        replay_io.write_mechanism(ctx, replay, None)
        save_shard(paths.replay(ctx.task, None), torch.cat(record["images"]), torch.cat(record["labels"]),
                   replay_io.manifest(ctx, replay, None,
                                      {"round": None, "interval": layout.interval, "per_chunk": layout.per_chunk}),
                   extra={"targets": torch.cat(record["targets"])})

    source.state_dict, source.load_state_dict = state_dict, load_state_dict
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
    ctx.split(p.batch_size, "classifier.batch_size")
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
    resume = ctx.resume()
    state = resume.load()
    if state is not None:  # a run of this stage with these inputs stopped part-way: go on from there
        model.load_state_dict(state["model"])
        if hasattr(source, "load_state_dict"):
            source.load_state_dict(state["source"])
    bar = progress(per_round, f"classifier@{t}.{r}")
    curve = Curve(paths.curve("classifier", t, r if rounds > 1 else None), ("loss", "accuracy", "lr"), every=20,
                  last=(r + 1) * per_round, prefix="classifier")
    last = {}
    if state is not None:
        curve.load_state_dict(state["curve"])
        bar.update(state["step"] - r * per_round)

    def step_done(step: int, loss: float) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
        last["loss"] = loss

    def save_state(loop: dict) -> None:
        resume.save({**loop, "model": model.state_dict(), "curve": curve.state_dict(),
                     "source": source.state_dict() if hasattr(source, "state_dict") else None})

    losses = train_classifier(model, optimizer, x.to(ctx.device), y.to(ctx.device),
                              steps=range(r * per_round, (r + 1) * per_round), total_steps=total,
                              batch_size=p.batch_size, lr=lr, num_seen=seen.stop, task=t, replay=source,
                              augment=make_augmentation(p.augmentation, ctx.data.channels, ctx.data.image_size),
                              generator=ctx.generator("batches"), world=ctx.world, callback=step_done,
                              on_batch=lambda step, accuracy, lr: curve.add(step, loss=last["loss"],
                                                                            accuracy=accuracy, lr=lr),
                              resume_from=state, save_every=resume.every, save=save_state,
                              epoch_steps=len(x) // p.batch_size)  # the reference's 'epoch' for its LR steps
    bar.close()
    curve.write()
    if finish is not None:
        finish()
    if not ctx.world.main:  # one writer: the ranks hold the same weights
        return
    save_checkpoint(paths.classifier(t, r), {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                               "task": t, "round": r, "losses": torch.tensor(losses)})
    resume.finish()


def main(argv: list[str] | None = None) -> int:
    return run_stage("classifier", run, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
