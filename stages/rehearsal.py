"""Sample the self-rehearsal set of task t ≥ 1: unguided images of the old classes from diffusion(t−1)'s
live weights (not its EMA), as the reference samples them: `rehearsal.per_task` per old task, drawn in
whole batches of `rehearsal.batch_size` (so the total is rounded up to a whole batch), each image's
label uniform over the old classes.

    python -m stages.rehearsal --task 1
    torchrun --nproc-per-node 4 -m stages.rehearsal --task 1   # batches split over 4 ranks, rank 0 writes
"""
from __future__ import annotations

import sys

import torch

from guide.continual import generate
from guide.io import save_shard, sha256_file
from params import Params
from stages import paths
from stages.common import SEED, UNET, Context, ParamsError, run_stage, sampling_bar


def reads(p: Params, task: int, round: int | None = None) -> tuple[str, ...]:
    """The params keys (or groups) this stage reads: the graph declares them to DVC."""
    return (SEED, "data", *UNET, "rehearsal")


def rehearsal_count(per_task: int, task: int, batch_size: int) -> int:
    """How many images the rehearsal of task t samples: per_task·t, rounded up to whole batches (the
    reference's sampling loop runs until it has at least that many, a batch at a time)."""
    want = per_task * task
    return -(-want // batch_size) * batch_size if want else 0


def run(ctx: Context) -> None:
    p, t = ctx.params.rehearsal, ctx.task
    if t == 0:
        raise ParamsError("--task 0: task 0 has no old classes to rehearse")
    total = rehearsal_count(p.per_task, t, p.batch_size)
    labels = torch.randint(0, ctx.seen(t - 1), (total,), generator=ctx.generator("labels"))
    schedule = ctx.schedule().respace(p.respacing)
    model = ctx.load_unet(paths.diffusion(t - 1), weights="model")
    bar, tick = sampling_bar(len(labels), p.batch_size, schedule.num_steps, f"rehearsal@{t}", ctx.world)
    noise, resume = ctx.generator("noise"), ctx.resume()  # finished batches kept for a rerun after a kill
    images, _ = generate(model, schedule, labels.to(ctx.device), batch_size=p.batch_size, sampler=p.sampler,
                         eta=p.eta, generator=noise, callback=tick, world=ctx.world,
                         batches=resume.batches("drawn", [noise], ctx.world.size))
    bar.close()
    if not ctx.world.main:  # every rank holds the gathered images; rank 0 writes them
        return
    save_shard(paths.rehearsal(t), images.cpu(), labels, {
        "kind": "rehearsal", "task": t, "sampler": p.sampler, "respacing": p.respacing, "eta": p.eta,
        "guidance": None, "sources": {paths.diffusion(t - 1): sha256_file(paths.diffusion(t - 1))},
    })
    resume.finish()


def main(argv: list[str] | None = None) -> int:
    return run_stage("rehearsal", run, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
