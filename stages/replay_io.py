"""Guided replay's inputs and outputs, for the stages that draw it (replay in `rounds` mode, the
classifier in `online` mode): the models guide.replay needs, loaded as params say, and the grid,
shard manifest and mechanism metrics it leaves behind. Which classifier steers, the scales and the
layout are decided in guide.replay, not here."""
from __future__ import annotations

from guide.continual import METHODS
from guide.io import atomic_write_json, sha256_file
from guide.mechanism import ReplayProbe
from guide.replay import GuidedReplay, ReplayLayout, guiding_classifier
from stages import paths, plots
from stages.common import SEED, UNET, Context, log_image

# what drawing replay reads (open_replay, layout, manifest); drawing the grid adds GRID_READS
READS = (SEED, "run.method", "data", *UNET, "replay", "guidance", "classifier.arch", "classifier.width", "classifier.batch_size",
         "classifier.interval", "classifier.steps_later")
GRID_READS = ("evaluate.grid_images",)


def layout(ctx: Context) -> ReplayLayout:
    cp = ctx.params.classifier
    return ReplayLayout.of(ctx.task, steps=cp.steps_later, rounds=ctx.params.classifier_rounds(ctx.task),
                           interval=cp.interval, batch_size=cp.batch_size)


def open_replay(ctx: Context) -> GuidedReplay:
    """Task t's replay from diffusion(t−1)'s EMA weights, measured by the oracle."""
    t, method = ctx.task, METHODS[ctx.params.run.method]
    unet = ctx.load_unet(paths.diffusion(t - 1))
    previous = (ctx.load_classifier(ctx.final_classifier(t - 1))[0]
                if guiding_classifier(method, ctx.params.guidance.mode) == "previous" else None)
    probe = ReplayProbe(ctx.load_classifier(paths.ORACLE)[0], ctx.seen(), ctx.tasks[t])
    p = ctx.params.replay
    return GuidedReplay(method, unet, ctx.schedule().respace(p.respacing), old=range(0, ctx.seen(t - 1)),
                        current=ctx.tasks[t], num_seen=ctx.seen(), bounds=ctx.params.guidance.bounds,
                        sampler=p.sampler, eta=p.eta, clip=ctx.params.guidance.clip_x0, batch_size=p.batch_size,
                        probe=probe, previous=previous, world=ctx.world)


def draw_grid(ctx: Context, replay: GuidedReplay, current) -> None:
    """The replay grid of task t: unguided and guided replay from the same noise, side by side (drawn
    by rank 0 alone: it uses generators of its own)."""
    if not ctx.world.main:
        return
    labels, plain, steered, targets = replay.grid(ctx.params.evaluate.grid_images, current,
                                                  ctx.generator("grid").initial_seed())
    plots.replay_grid(paths.replay_grid(ctx.task), plain, steered, labels, targets, ctx.data.class_names,
                      f"task {ctx.task}: {replay.method.name} replay, scale {replay.scale_label()}, "
                      f"target '{replay.method.guidance}'")
    log_image("replay/grid", paths.replay_grid(ctx.task))


def write_mechanism(ctx: Context, replay: GuidedReplay, round: int | None) -> None:
    atomic_write_json(paths.replay_metrics(ctx.task, round), replay.mechanism(ctx.task, round=round))


def manifest(ctx: Context, replay: GuidedReplay, guided_by: str | None, extra: dict) -> dict:
    """The shard's manifest: how it was drawn, and the hash of every checkpoint it was drawn from."""
    sources = [paths.diffusion(ctx.task - 1)] + [p for p in (guided_by,) if p]
    if replay.previous is not None:
        sources.append(ctx.final_classifier(ctx.task - 1))
    lo, hi = replay.bounds
    return {"kind": "replay", "task": ctx.task, "method": replay.method.name,
            "guidance": {"target": replay.method.guidance, "scale_min": lo, "scale_max": hi,
                         "mode": ctx.params.guidance.mode},
            "sampler": ctx.params.replay.sampler, "respacing": ctx.params.replay.respacing,
            "eta": ctx.params.replay.eta, "sources": {s: sha256_file(s) for s in sources}, **extra}
