"""What a run will compute, and how long it will take on this machine, before it starts.

    python -m pipeline.plan [--params params.yaml] [--all] [--no-measure]

For every stage of the graph that `dvc repro` would run (`--all`: every stage), the work it does —
diffusion training steps, denoising steps of sampled batches (guided ones with their backward pass
and the unguided twin the replay probe draws from the same noise), classifier and oracle steps — and
its projected wall time. The projection multiplies that work by per-step times measured here on the
run's own networks and batch sizes (a few seconds), plus a per-stage start-up time (a Python process
with torch, the data, and DVC's own bookkeeping).

`python -m pipeline.repro` (what `make demo` runs) uses the same plan to show the time left for the
whole run: it re-scales the remaining stages by how the finished ones compared with their
projection, and hands the figure to the running stage's progress bar (GUIDE_RUN_PROGRESS).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from params import Params, load_params
from stages.common import clock

ROOT = Path(__file__).resolve().parents[1]
CHANNELS = {"mnist": 1, "mnist5k": 1, "fashion_mnist": 1, "cifar10": 3, "cifar100": 3, "imagenet100_64": 3}


@dataclass
class Work:
    """What one stage computes, in the units the calibration times."""

    diffusion_steps: int = 0  # UNet training steps at diffusion.batch_size
    # sampled batches: (images in the batch, denoising steps, guided) — one entry per distinct shape
    sampling: list[tuple[int, int, bool]] = field(default_factory=list)
    batches: list[int] = field(default_factory=list)  # how many batches of each `sampling` entry
    classifier_steps: int = 0
    oracle_steps: int = 0

    def sample(self, images: int, steps: int, guided: bool, batch_size: int) -> None:
        """`images` drawn in batches of `batch_size` (the last one possibly smaller)."""
        full, rest = divmod(images, batch_size)
        for size, count in ((batch_size, full), (rest, 1 if rest else 0)):
            if count:
                self.sampling.append((size, steps, guided))
                self.batches.append(count)

    def describe(self) -> str:
        parts = []
        if self.diffusion_steps:
            parts.append(f"{self.diffusion_steps} diffusion steps")
        if self.sampling:
            images = {True: 0, False: 0}
            for (size, steps, guided), count in zip(self.sampling, self.batches):
                images[guided] += size * count
            steps = max(s for _, s, _ in self.sampling)
            for guided in (True, False):
                if images[guided]:
                    parts.append(f"{images[guided]} {'guided' if guided else 'unguided'} images × {steps} steps")
        if self.classifier_steps:
            parts.append(f"{self.classifier_steps} classifier steps")
        if self.oracle_steps:
            parts.append(f"{self.oracle_steps} oracle steps")
        return ", ".join(parts) or "bookkeeping"


def respaced_steps(p: Params, respacing: str) -> int:
    from guide.diffusion import NoiseSchedule

    return NoiseSchedule.make(p.diffusion.schedule, p.diffusion.num_timesteps).respace(respacing).num_steps


def stage_work(stage, p: Params) -> Work:
    """The work of one stage of `pipeline.graph.build_graph(p)`."""
    from guide.continual import METHODS
    from guide.replay import ReplayLayout
    from stages.rehearsal import rehearsal_count

    w = Work()
    given = dict(a.split() for a in stage.args)
    task, round = int(given.get("--task", 0)), int(given.get("--round", 0))
    method = METHODS[p.run.method]
    if stage.kind == "diffusion":
        w.diffusion_steps = p.diffusion.steps_first if task == 0 else p.diffusion.steps_later
    elif stage.kind == "rehearsal":
        r = p.rehearsal
        w.sample(rehearsal_count(r.per_task, task, r.batch_size), respaced_steps(p, r.respacing), False, r.batch_size)
    elif stage.kind == "oracle":
        w.oracle_steps = p.oracle.steps
    elif stage.kind in ("classifier", "replay"):
        c = p.classifier
        total = c.steps_first if task == 0 else c.steps_later
        rounds = p.classifier_rounds(task)
        if stage.kind == "classifier":
            w.classifier_steps = total // rounds
        online = p.guidance.mode == "online"
        if task > 0 and method.uses_diffusion and (online == (stage.kind == "classifier")):
            layout = ReplayLayout.of(task, steps=total, rounds=rounds, interval=c.interval, batch_size=c.batch_size)
            steps, guided = respaced_steps(p, p.replay.respacing), method.guidance != "none"
            for _ in range(layout.chunks):
                w.sample(layout.per_chunk, steps, guided, p.replay.batch_size)
                if guided:  # the replay probe's unguided twin, from the same noise
                    w.sample(layout.per_chunk, steps, False, p.replay.batch_size)
            if guided and round == 0:  # the replay grid, both ways
                n = p.evaluate.grid_images
                w.sample(n, steps, True, p.replay.batch_size)
                w.sample(n, steps, False, p.replay.batch_size)
    return w


# --- calibration -------------------------------------------------------------------------------
def median_time(fn, repeats: int, warmup: int = 1) -> float:
    """Median seconds of `fn()` over `repeats` calls after `warmup` calls (benchmarks/ times with it too)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def calibrate(p: Params, shapes: set[tuple[int, int, bool]], repeats: int = 3) -> dict:
    """Seconds per unit of work, measured on this machine with the run's own networks."""
    import torch

    from guide.diffusion import EMA, NoiseSchedule, epsilon_loss
    from guide.guidance import ClassGuidance
    from guide.models import UNet, build_classifier
    from guide.samplers import predict

    d = p.data
    size = d.synthetic.image_size if d.dataset == "synthetic" else d.image_size
    ch = d.synthetic.channels if d.dataset == "synthetic" else CHANNELS.get(d.dataset, 3)
    k = p.num_classes
    gen = torch.Generator().manual_seed(0)
    unet = UNet(image_size=size, in_channels=ch, out_channels=ch, num_classes=k, **p.diffusion.unet.model_dump())
    schedule = NoiseSchedule.make(p.diffusion.schedule, p.diffusion.num_timesteps)
    out: dict = {}

    b = p.diffusion.batch_size
    x, y = torch.randn(b, ch, size, size), torch.randint(0, k, (b,))
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    ema = EMA(unet, p.diffusion.ema_decay)

    def train():  # as the stage's loop does it: the step, the EMA, the per-sample terms of its curve
        loss = epsilon_loss(unet, schedule, x, y, gen, terms=[])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.update(unet)
        loss.item()
    unet.train()
    out["diffusion_step"] = median_time(train, repeats)

    unet.eval().requires_grad_(False)
    cls = build_classifier(p.classifier.arch, k, ch, size).eval().requires_grad_(False)
    out["sample_step"] = {}
    for n, _, guided in sorted(shapes):
        xs, ys = torch.randn(n, ch, size, size), torch.randint(0, max(1, k - 1), (n,))
        t = torch.full((n,), schedule.num_steps // 2, dtype=torch.long)
        g = ClassGuidance(cls, "new", torch.full((n,), 0.1), num_seen=k, current=range(k - 1, k)) if guided else None
        out["sample_step"][f"{n},{int(guided)}"] = median_time(lambda: predict(unet, schedule, xs, t, ys, g), repeats)

    def cls_step(model, batch, opt_):
        xb, yb = torch.randn(batch, ch, size, size), torch.randint(0, k, (batch,))

        def step():
            loss = torch.nn.functional.cross_entropy(model(xb), yb)
            opt_.zero_grad(set_to_none=True)
            loss.backward()
            opt_.step()
        return step
    for name, batch in (("classifier_step", p.classifier.batch_size), ("oracle_step", p.oracle.batch_size)):
        model = build_classifier(p.classifier.arch if name == "classifier_step" else "small_cnn", k, ch, size).train()
        out[name] = median_time(cls_step(model, batch, torch.optim.SGD(model.parameters(), lr=0.01)), repeats * 2)
    out["stage_start"] = stage_start_seconds()
    return out


def process_age() -> float | None:
    """Seconds since this process started (Linux), None elsewhere."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        return float(Path("/proc/uptime").read_text().split()[0]) - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


STARTED_IN = process_age()  # this module is imported after torch and the stage code: a stage's start-up


def stage_start_seconds() -> float:
    """A stage process's fixed cost: Python with torch and the stage code imported (measured: how long
    this process took to import them, or a fresh process when that is unknown), plus one second for
    DVC's per-stage bookkeeping and the data."""
    if STARTED_IN is not None and "stages.common" in sys.modules:
        return STARTED_IN + 1.0
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import stages.common, guide.continual"], cwd=ROOT, check=True,
                   capture_output=True)
    return time.perf_counter() - t0 + 1.0


def seconds(work: Work, rates: dict) -> float:
    s = rates["stage_start"]
    s += work.diffusion_steps * rates["diffusion_step"]
    s += work.classifier_steps * rates["classifier_step"] + work.oracle_steps * rates["oracle_step"]
    for (n, steps, guided), count in zip(work.sampling, work.batches):
        s += count * steps * rates["sample_step"][f"{n},{int(guided)}"]
    return s


@dataclass
class Plan:
    stages: list[tuple[str, Work, float]]  # (name, work, projected seconds) in graph order

    @property
    def total(self) -> float:
        return sum(s for _, _, s in self.stages)

    def table(self) -> str:
        rows = ["| stage | work | projected |", "|---|---|---|"]
        rows += [f"| {name} | {work.describe()} | {clock(s)} |" for name, work, s in self.stages]
        rows.append(f"| **all {len(self.stages)}** | | **{clock(self.total)}** |")
        return "\n".join(rows)

    def estimates(self) -> dict[str, float]:
        return {name: s for name, _, s in self.stages}


def make_plan(p: Params, names: list[str] | None = None, rates: dict | None = None) -> Plan:
    """The plan of the stages `names` (default: every stage), timed with `rates` (default: measured)."""
    from pipeline.graph import build_graph

    graph = [s for s in build_graph(p) if names is None or s.name in names]
    works = [(s.name, stage_work(s, p)) for s in graph]
    if rates is None:
        rates = calibrate(p, {shape for _, w in works for shape in w.sampling})
    return Plan([(name, w, seconds(w, rates)) for name, w in works])


def to_run(root: str = ".") -> list[str]:
    """The stages `dvc repro` would run: those DVC finds changed, and every stage downstream of one."""
    from dvc.repo import Repo

    from pipeline.graph import build_graph

    with Repo(root) as repo:
        changed = {key.rsplit(":", 1)[-1] for key in repo.status()}  # "s", or "PATH/dvc.yaml:s" from elsewhere
    p = load_params(os.path.join(root, "params.yaml"))
    run: list[str] = []
    for st in build_graph(p):
        if st.name in changed or any(u in run for u in st.upstream):
            run.append(st.name)
    return run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.plan", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--all", action="store_true", help="every stage, not only those `dvc repro` would run")
    args = ap.parse_args(argv)
    try:
        p = load_params(args.params)
    except Exception as e:  # ParamsError and a missing file: one line naming it
        print(f"error: {e}", file=sys.stderr)
        return 2
    names = None if args.all or not Path("dvc.lock").exists() else to_run(".")
    if names == []:
        print("every stage is up to date: `dvc repro` has nothing to run")
        return 0
    plan = make_plan(p, names)
    print(plan.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
