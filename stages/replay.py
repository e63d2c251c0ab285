"""Sample one guided replay shard for round r of task t ≥ 1 from diffusion(t−1)'s EMA weights,
guided by the classifier as it stands after round r−1 (round 0: classifier(t−1)). Round 0 also
draws the replay grid: unguided and guided samples from the same noise. Every chunk is also drawn
unguided from the same noise, and both are measured (guide.mechanism) into the shard's metrics file.
What steers the replay, its scales and its layout are guide.replay's; this stage reads and writes.

    python -m stages.replay --task 1 --round 0
    torchrun --nproc-per-node 4 -m stages.replay --task 1 --round 0   # batches split over 4 ranks
"""
from __future__ import annotations

import sys

from guide.continual import METHODS
from guide.io import save_shard
from params import Params
from stages import paths, replay_io
from stages.common import Context, ParamsError, run_stage, sampling_bar


def reads(p: Params, task: int, round: int) -> tuple[str, ...]:
    """The params keys (or groups) this stage reads: the graph declares them to DVC. Round 0 of
    guided replay also draws the grid."""
    grid = round == 0 and METHODS[p.run.method].guidance != "none"
    return replay_io.READS + (replay_io.GRID_READS if grid else ())


def run(ctx: Context) -> None:
    t, r = ctx.task, ctx.round
    if t == 0 or not 0 <= r < ctx.params.classifier_rounds(t) or ctx.params.guidance.mode != "rounds":
        raise ParamsError(f"--task {t} --round {r}: no replay stage there for these params")
    replay = replay_io.open_replay(ctx)
    start_from = ctx.final_classifier(t - 1) if r == 0 else paths.classifier(t, r - 1)
    current = ctx.load_classifier(start_from)[0]  # steers GUIDE's replay; measures every method's
    if r == 0 and replay.guided:
        replay_io.draw_grid(ctx, replay, current)
    layout = replay_io.layout(ctx)
    n = layout.chunks * layout.per_chunk
    bar, tick = sampling_bar(n, ctx.params.replay.batch_size, replay.schedule.num_steps, f"replay@{t}.{r}",
                             ctx.world)
    resume = ctx.resume()  # finished batches kept for a rerun after a kill (stages/resume.py)
    images, labels, targets = replay.draw(n, current, ctx.generator("noise"), ctx.generator("scales"), tick,
                                          keep=lambda part, streams: resume.batches(part, streams, ctx.world.size))
    bar.close()
    if not ctx.world.main:  # every rank holds the gathered shard; rank 0 writes it
        return
    replay_io.write_mechanism(ctx, replay, r)
    steered_by = start_from if replay.method.guidance == "new" else None
    save_shard(paths.replay(t, r), images, labels,
               replay_io.manifest(ctx, replay, steered_by,
                                  {"round": r, "chunks": layout.chunks, "per_chunk": layout.per_chunk}),
               extra={"targets": targets})
    resume.finish()


def main(argv: list[str] | None = None) -> int:
    return run_stage("replay", run, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
