"""Train diffusion(t): from diffusion(t−1)'s live weights (task 0: fresh) on real task-t images plus
the self-rehearsal samples of the old classes. Writes the live weights and their EMA, which starts
afresh from the live weights at every task (the reference's TrainLoop does the same).

    python -m stages.diffusion --task 1
    torchrun --nproc-per-node 4 -m stages.diffusion --task 1   # data parallel: diffusion.batch_size
                                                               # split over 4 ranks, rank 0 writes
"""
from __future__ import annotations

import sys

import torch

from guide.continual import train_diffusion
from guide.data import task_subset
from guide.diffusion import EMA
from guide.io import load_checkpoint, load_shard, save_checkpoint
from params import Params
from stages import paths
from stages.common import SEED, UNET, Context, Curve, progress, run_stage

QUARTERS = ("loss_q0", "loss_q1", "loss_q2", "loss_q3")  # timesteps in [0, T/4), [T/4, T/2), …


def reads(p: Params, task: int, round: int | None = None) -> tuple[str, ...]:
    """The params keys (or groups) this stage reads: the graph declares them to DVC."""
    steps = "diffusion.steps_first" if task == 0 else "diffusion.steps_later"
    return (SEED, "data", *UNET, steps, "diffusion.batch_size", "diffusion.lr", "diffusion.weight_decay",
            "diffusion.ema_decay", "diffusion.hflip", "diffusion.train_respacing",
            *(("rehearsal.per_task",) if task > 0 else ()))


def run(ctx: Context) -> None:
    p, t = ctx.params.diffusion, ctx.task
    x, y = task_subset(ctx.data.train_x, ctx.data.train_y, ctx.tasks[t])
    model = ctx.new_unet()
    if t > 0:  # training goes on from the previous task's live weights
        model.load_state_dict(load_checkpoint(paths.diffusion(t - 1), map_location=ctx.device)["model"])
        if ctx.params.rehearsal.per_task:
            shard = load_shard(paths.rehearsal(t))
            x, y = torch.cat([x, shard["images"]]), torch.cat([y, shard["labels"]])
    ema = EMA(model, p.ema_decay)  # every task's EMA starts from the live weights, as the reference's does
    steps = p.steps_first if t == 0 else p.steps_later
    ctx.split(min(p.batch_size, len(x)), "diffusion.batch_size")
    resume = ctx.resume()
    state = resume.load()
    if state is not None:  # a run of this stage with these inputs stopped part-way: go on from there
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
    bar = progress(steps, f"diffusion@{t}")
    schedule = ctx.schedule()
    if p.train_respacing:  # the reference's ImageNet run trains on its ddim250 chain
        schedule = schedule.respace(p.train_respacing)
    # the loss every 50 steps, overall and by quarter of the timesteps (as the reference logs it)
    curve = Curve(paths.curve("diffusion", t), ("loss", *QUARTERS), every=50, last=steps, prefix="diffusion")
    last = {}
    if state is not None:
        curve.load_state_dict(state["curve"])
        bar.update(state["step"])

    def step_done(step: int, loss: float) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        last["loss"] = loss

    def by_timestep(step: int, ts: torch.Tensor, each: torch.Tensor) -> None:
        quarter = ts * 4 // schedule.num_steps
        curve.add(step, loss=last["loss"], **{q: (float(each[quarter == i].sum()), int((quarter == i).sum()))
                                              for i, q in enumerate(QUARTERS)})

    losses = train_diffusion(model, ema, schedule, x.to(ctx.device), y.to(ctx.device), steps=steps,
                             batch_size=p.batch_size, lr=p.lr, weight_decay=p.weight_decay, hflip=p.hflip,
                             generator=ctx.generator("train"), world=ctx.world, callback=step_done,
                             on_terms=by_timestep, resume_from=state, save_every=resume.every,
                             save=lambda loop: resume.save({**loop, "model": model.state_dict(),
                                                            "ema": ema.state_dict(), "curve": curve.state_dict()}))
    bar.close()
    curve.write()
    if ctx.world.main:  # one writer: the ranks hold the same weights
        save_checkpoint(paths.diffusion(t), {"model": model.state_dict(), "ema": ema.state_dict(), "task": t,
                                               "losses": torch.tensor(losses)})
    resume.finish()


def main(argv: list[str] | None = None) -> int:
    return run_stage("diffusion", run, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
