"""Sample one guided replay shard for round r of task t ≥ 1 from diffusion(t−1)'s EMA weights,
guided by the classifier as it stands after round r−1 (round 0: classifier(t−1)). Round 0 also
draws the replay grid: unguided and guided samples from the same noise. Every chunk is also drawn
unguided from the same noise, and both are measured (guide.mechanism) into the shard's metrics file.

    python -m stages.replay --task 1 --round 0
"""
from __future__ import annotations

import math
import sys

import torch

from guide.continual import METHODS, generate, mixed_batch_sizes, replay_guidance, spread_labels
from guide.io import atomic_write_json, save_shard, sha256_file
from guide.mechanism import ReplayProbe
from stages import paths, plots
from stages.common import Context, ParamsError, log_image, run_stage, sampling_bar


def shard_layout(ctx: Context) -> tuple[int, int]:
    """(chunks, images per chunk) of one round's shard: the round's classifier steps use chunk
    ⌊step / interval⌋, one classifier batch's worth of replay, as the reference regenerates it."""
    cp = ctx.params.classifier
    steps = cp.steps_later // ctx.params.classifier_rounds(ctx.task)
    per_step = mixed_batch_sizes(cp.batch_size, ctx.task, replay=True)[1]
    return math.ceil(steps / cp.interval), per_step


class Replayer:
    """Draws guided replay of task t's old classes from diffusion(t−1)."""

    def __init__(self, ctx: Context):
        t = ctx.task
        self.ctx, self.method = ctx, METHODS[ctx.params.run.method]
        self.unet = ctx.load_unet(paths.diffusion(t - 1))
        self.schedule = ctx.schedule().respace(ctx.params.replay.respacing)
        self.prev_classifier = (ctx.load_classifier(ctx.final_classifier(t - 1))[0]
                                if self.method.guidance == "old" else None)
        self.old = range(0, ctx.seen(t - 1))
        self.probe = ReplayProbe(ctx.load_classifier(paths.ORACLE)[0], ctx.seen(), ctx.tasks[t])

    def guidance(self, classifier, generator: torch.Generator):
        lo, hi = self.ctx.params.guidance.bounds
        return replay_guidance(self.method, classifier=classifier, prev_classifier=self.prev_classifier,
                               scale_min=lo, scale_max=hi, num_seen=self.ctx.seen(),
                               num_old=self.old.stop, current=self.ctx.tasks[self.ctx.task],
                               generator=generator)

    def draw(self, n: int, classifier, current, generator: torch.Generator, scales: torch.Generator,
             callback=None):
        """n replay images with labels uniform over the old classes, guided by `classifier` (GUIDE)
        or the previous classifier (DDGR); returns (images, labels, targets). The same n images are
        drawn unguided from the same noise too, and both are measured with the `current` classifier."""
        labels = torch.randint(self.old.start, self.old.stop, (n,), generator=generator)
        p = self.ctx.params.replay
        twin = torch.Generator().set_state(generator.get_state())
        images, targets = generate(self.unet, self.schedule, labels.to(self.ctx.device), batch_size=p.batch_size,
                                   sampler=p.sampler, eta=p.eta, clip=self.ctx.params.guidance.clip_x0,
                                   generator=generator, guidance_for=self.guidance(classifier, scales),
                                   callback=callback)
        plain = images
        if bool((targets >= 0).any()):  # guided: draw the unguided twin from the same noise
            plain, _ = generate(self.unet, self.schedule, labels.to(self.ctx.device), batch_size=p.batch_size,
                                sampler=p.sampler, eta=p.eta, clip=self.ctx.params.guidance.clip_x0,
                                generator=twin)
        self.probe.add(images, plain, labels.to(self.ctx.device), current)
        return images.cpu(), labels, targets.cpu()

    def save_mechanism(self, path: str, extra: dict) -> None:
        lo, hi = self.ctx.params.guidance.bounds
        atomic_write_json(path, {"task": self.ctx.task, "method": self.method.name, "scale_min": lo,
                                 "scale_max": hi, **extra, **self.probe.result()})

    def grid(self, classifier) -> None:
        """Unguided and guided replay from the same noise and old-class labels, side by side."""
        ctx = self.ctx
        labels = spread_labels(ctx.params.evaluate.grid_images, self.old)
        p = ctx.params.replay
        seed = ctx.generator("grid").initial_seed()
        runs = []
        for guided in (False, True):
            factory = self.guidance(classifier, torch.Generator().manual_seed(seed + 1)) if guided else None
            runs.append(generate(self.unet, self.schedule, labels.to(ctx.device), batch_size=len(labels),
                                 sampler=p.sampler, eta=p.eta, clip=ctx.params.guidance.clip_x0,
                                 generator=torch.Generator().manual_seed(seed), guidance_for=factory))
        (plain, _), (steered, targets) = runs
        lo, hi = ctx.params.guidance.bounds
        scale = f"{lo}" if lo == hi else f"U[{lo}, {hi}]"
        plots.replay_grid(paths.replay_grid(ctx.task), plain, steered, labels, targets, ctx.data.class_names,
                          f"task {ctx.task}: {self.method.name} replay, scale {scale}, target '{self.method.guidance}'")
        log_image("replay/grid", paths.replay_grid(ctx.task))

    def manifest(self, classifier_path: str | None, extra: dict) -> dict:
        ctx = self.ctx
        sources = [paths.diffusion(ctx.task - 1)] + [p for p in (classifier_path,) if p]
        if self.prev_classifier is not None:
            sources.append(ctx.final_classifier(ctx.task - 1))
        lo, hi = ctx.params.guidance.bounds
        return {"kind": "replay", "task": ctx.task, "method": self.method.name,
                "guidance": {"target": self.method.guidance, "scale_min": lo, "scale_max": hi,
                             "mode": ctx.params.guidance.mode},
                "sampler": ctx.params.replay.sampler, "respacing": ctx.params.replay.respacing,
                "eta": ctx.params.replay.eta, "sources": {s: sha256_file(s) for s in sources}, **extra}


def run(ctx: Context) -> None:
    t, r = ctx.task, ctx.round
    if t == 0 or not 0 <= r < ctx.params.classifier_rounds(t) or ctx.params.guidance.mode != "rounds":
        raise ParamsError(f"--task {t} --round {r}: no replay stage there for these params")
    replayer = Replayer(ctx)
    guide_path = (ctx.final_classifier(t - 1) if r == 0 else paths.classifier(t, r - 1))
    current = ctx.load_classifier(guide_path)[0]  # guides GUIDE's replay; measures every method's
    classifier = current if replayer.method.guidance == "new" else None
    if r == 0 and replayer.method.guidance != "none":
        replayer.grid(classifier)
    chunks, per_chunk = shard_layout(ctx)
    bar, tick = sampling_bar(chunks * per_chunk, ctx.params.replay.batch_size, replayer.schedule.num_steps,
                             f"replay@{t}.{r}")
    images, labels, targets = replayer.draw(chunks * per_chunk, classifier, current, ctx.generator("noise"),
                                            ctx.generator("scales"), tick)
    bar.close()
    replayer.save_mechanism(paths.replay_metrics(t, r), {"round": r})
    save_shard(paths.replay(t, r), images, labels,
               replayer.manifest(guide_path if classifier is not None else None,
                                 {"round": r, "chunks": chunks, "per_chunk": per_chunk}),
               extra={"targets": targets})


def main(argv: list[str] | None = None) -> int:
    return run_stage("replay", run, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
