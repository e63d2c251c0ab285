"""What a run will compute, and how long it will take on this machine, before it starts.

    python -m pipeline.plan [--params params.yaml | --preset NAME] [--all] [--no-measure] [--gpu-tflops X]

For every stage of the graph that `dvc repro` would run (`--all`: every stage), the work it does —
diffusion training steps, denoising steps of sampled batches (guided ones with their backward pass
and the unguided twin the replay probe draws from the same noise), classifier and oracle steps — and
its projected wall time. The projection multiplies that work by per-step times measured here on the
run's own networks and batch sizes (a few seconds), plus a per-stage start-up time (a Python process
with torch, the data, and DVC's own bookkeeping). `--gpu-tflops X` adds each stage's FLOPs and peak
memory estimate and its time at X TFLOP/s sustained; the critical path is the longest chain of
dependent stages, what a run with every independent stage side by side would still take.

`python -m pipeline.repro` (what `make demo` runs) uses the same plan to show the time left for the
whole run: it re-scales the remaining stages by how the finished ones compared with their
projection, and hands the figure to the running stage's progress bar (GUIDE_RUN_PROGRESS).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from params import Params, load_params
from stages.common import clock
from stages.construct import build_unet, network_shapes  # noqa: F401 (build_unet: benchmarks import it from here)

ROOT = Path(__file__).resolve().parents[1]


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
    from guide.models import build_classifier
    from guide.samplers import predict

    size, ch, k = network_shapes(p)
    gen = torch.Generator().manual_seed(0)
    unet = build_unet(p)
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
    cls = build_classifier(p.classifier.arch, k, ch, size, p.classifier.width).eval().requires_grad_(False)
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
        model = build_classifier(*((p.classifier.arch, k, ch, size, p.classifier.width) if name == "classifier_step"
                                   else ("small_cnn", k, ch, size))).train()
        out[name] = median_time(cls_step(model, batch, torch.optim.SGD(model.parameters(), lr=0.01)), repeats * 2)
    out["stage_start"] = stage_start_seconds()
    return out


# --- FLOPs and memory ----------------------------------------------------------------------------
COUNT_BATCH = 2  # the batch the counts are made at (BatchNorm trains on 2 or more); FLOPs and saved
                 # activations grow in proportion to the batch, so they are scaled from it


def _counted(fn, *networks) -> tuple[float, int]:
    """(FLOPs, bytes of the tensors autograd saved for backward, each storage once) of `fn()`; the
    weights and buffers of `networks`, which a layer saves too, are not activations and not counted."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    weights = {t.untyped_storage().data_ptr() for m in networks for t in (*m.parameters(), *m.buffers())}
    storages: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in weights:
            storages[st.data_ptr()] = max(storages.get(st.data_ptr(), 0), st.nbytes())
        return t
    with FlopCounterMode(display=False) as counter, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return float(counter.get_total_flops()), sum(storages.values())


def unit_costs(p: Params, shapes: set[tuple[int, int, bool]]) -> dict:
    """FLOPs and activation bytes per sample of each unit of work (torch's FlopCounterMode and the
    tensors autograd saves, counted on the run's own networks running the stages' own functions at
    COUNT_BATCH samples), and the bytes of each network's weights. A guided denoising step counts
    the backward pass through the UNet and the classifier that its gradient takes."""
    import torch

    from guide.diffusion import NoiseSchedule, epsilon_loss
    from guide.guidance import ClassGuidance
    from guide.models import build_classifier
    from guide.samplers import predict

    size, ch, k = network_shapes(p)
    n = COUNT_BATCH
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    unet = build_unet(p)
    schedule = NoiseSchedule.make(p.diffusion.schedule, p.diffusion.num_timesteps)
    cls = build_classifier(p.classifier.arch, k, ch, size, p.classifier.width)
    oracle = build_classifier("small_cnn", k, ch, size)
    x, y = torch.randn(n, ch, size, size), torch.randint(0, k, (n,))
    out: dict = {"weights": {name: 4 * sum(q.numel() for q in m.parameters())
                             for name, m in (("unet", unet), ("classifier", cls), ("oracle", oracle))}}

    def per_sample(fn):
        flops, saved = _counted(fn, unet, cls, oracle)
        return flops / n, saved / n
    unet.train()
    out["diffusion_step"] = per_sample(lambda: epsilon_loss(unet, schedule, x, y, gen).backward())
    unet.eval().requires_grad_(False)
    cls.eval().requires_grad_(False)
    t = torch.full((n,), schedule.num_steps // 2, dtype=torch.long)
    out["sample_step"] = {}
    guidance = ClassGuidance(cls, "new", torch.full((n,), 0.1), num_seen=k, current=range(k - 1, k))

    def guided_step():  # predict()'s guided path, its autograd.grad as .backward() (FlopCounterMode's
        xg = x.detach().requires_grad_(True)  # module hooks refuse autograd.grad on a leaf)
        x0 = schedule.predict_x0(xg, t, unet(xg, schedule.model_timesteps(t), y)[:, :ch]).clamp(-1, 1)
        guidance(x0, y).sum().backward()
    for guided in sorted({g for _, _, g in shapes}):
        out["sample_step"][int(guided)] = per_sample(guided_step if guided else lambda: predict(unet, schedule, x, t, y))
    for name, model in (("classifier_step", cls), ("oracle_step", oracle)):
        model.train().requires_grad_(True)
        out[name] = per_sample(lambda: torch.nn.functional.cross_entropy(model(x), y).backward())
    return out


def stage_cost(work: Work, p: Params, costs: dict) -> tuple[float, int]:
    """(FLOPs, peak memory estimate in bytes) of one stage: the work × FLOPs per sample, and the
    largest of its activities' memory — a training step's weights, gradients and optimiser state
    (AdamW: 2 moments; the diffusion model's EMA: one copy more; SGD with momentum: 1) plus the
    activations autograd saves for its batch; a sampled batch's networks plus, guided, the activations
    its backward pass keeps. Transient buffers of a forward pass and the allocator's slack are not
    counted."""
    w = costs["weights"]
    flops, memory = 0.0, 0
    if work.diffusion_steps:
        f, a = costs["diffusion_step"]
        b = p.diffusion.batch_size
        flops += work.diffusion_steps * b * f
        memory = max(memory, 5 * w["unet"] + int(b * a))
    for (n, steps, guided), count in zip(work.sampling, work.batches):
        f, a = costs["sample_step"][int(guided)]
        flops += count * steps * n * f
        memory = max(memory, w["unet"] + w["classifier"] + int(n * a))
    for attr, key, net, batch in (("classifier_steps", "classifier_step", "classifier", p.classifier.batch_size),
                                  ("oracle_steps", "oracle_step", "oracle", p.oracle.batch_size)):
        steps = getattr(work, attr)
        if steps:
            f, a = costs[key]
            flops += steps * batch * f
            memory = max(memory, 3 * w[net] + int(batch * a))
    return flops, memory


def critical_path(upstream: dict[str, tuple[str, ...]], seconds_of: dict[str, float]) -> tuple[float, list[str]]:
    """The longest chain of stages through the graph's dependencies (`upstream`: each stage's, in
    topological order), by `seconds_of`: (its seconds, its stages). What a run with unlimited workers
    would still take."""
    best: dict[str, tuple[float, list[str]]] = {}
    for name, ups in upstream.items():
        before = max((best[u] for u in ups if u in best), key=lambda b: b[0], default=(0.0, []))
        best[name] = (before[0] + seconds_of.get(name, 0.0), before[1] + [name])
    return max(reversed(list(best.values())), key=lambda b: b[0], default=(0.0, []))  # ties: the chain ending later


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


def human(x: float, unit: str) -> str:
    """1.2e12 FLOP → "1.20 TFLOP"; bytes → "512 MB"."""
    for scale, prefix in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if x >= scale:
            return f"{x / scale:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}"


def gpu_hours(flops: float, tflops: float) -> str:
    h = flops / (tflops * 1e12) / 3600
    return f"{h:.3g} h" if h >= 0.1 else clock(h * 3600)


@dataclass
class Plan:
    stages: list[tuple[str, Work, float | None]]  # (name, work, projected seconds here or None) in graph order
    costs: dict[str, tuple[float, int]] = field(default_factory=dict)  # name → (FLOPs, peak memory bytes)
    upstream: dict[str, tuple[str, ...]] = field(default_factory=dict)  # in graph order
    gpu_tflops: float | None = None  # the GPU's sustained FLOP/s, in TFLOP/s

    @property
    def total(self) -> float:
        return sum(s or 0.0 for _, _, s in self.stages)

    @property
    def measured(self) -> bool:
        return all(s is not None for _, _, s in self.stages)

    def table(self) -> str:
        heads = ["stage", "work"]
        if self.costs:
            heads += ["FLOPs", "memory (est.)"]
        if self.measured:
            heads.append("projected here")
        if self.costs and self.gpu_tflops:
            heads.append(f"at {self.gpu_tflops:g} TFLOP/s")
        rows = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
        for name, work, s in self.stages:
            cells = [name, work.describe()]
            if self.costs:
                flops, memory = self.costs[name]
                cells += [human(flops, "FLOP") if flops else "", human(memory, "B") if memory else ""]
            if self.measured:
                cells.append(clock(s))
            if self.costs and self.gpu_tflops:
                cells.append(gpu_hours(self.costs[name][0], self.gpu_tflops) if self.costs[name][0] else "")
            rows.append("| " + " | ".join(cells) + " |")
        total = [f"**all {len(self.stages)}**", ""]
        flops_of = {n: c[0] for n, c in self.costs.items()}
        if self.costs:
            total += [f"**{human(sum(flops_of.values()), 'FLOP')}**",
                      f"**{human(max(c[1] for c in self.costs.values()), 'B')}** (largest)"]
        if self.measured:
            total.append(f"**{clock(self.total)}**")
        if self.costs and self.gpu_tflops:
            total.append(f"**{gpu_hours(sum(flops_of.values()), self.gpu_tflops)}**")
        rows.append("| " + " | ".join(total) + " |")
        lines = ["\n".join(rows)]
        if self.measured:
            s, path = critical_path(self.upstream, self.estimates())
            lines.append(f"critical path here: {clock(s)} ({' → '.join(path)}): the run's time with every "
                         "independent stage side by side")
        if self.costs and self.gpu_tflops:
            f, path = critical_path(self.upstream, flops_of)
            lines.append(f"critical path by FLOPs: {human(f, 'FLOP')}, {gpu_hours(f, self.gpu_tflops)} at "
                         f"{self.gpu_tflops:g} TFLOP/s sustained ({' → '.join(path)})")
        if self.costs:
            lines.append("FLOPs counted by torch's FlopCounterMode on the run's networks; memory: weights, gradients, "
                         "optimiser state and the activations autograd keeps (no transient buffers, no allocator "
                         "slack). A GPU time is FLOPs ÷ the sustained rate you give, not a measurement.")
        return "\n\n".join(lines)

    def estimates(self) -> dict[str, float]:
        return {name: s for name, _, s in self.stages if s is not None}


def make_plan(p: Params, names: list[str] | None = None, rates: dict | None = None, measure: bool = True,
              costs: bool = False, gpu_tflops: float | None = None) -> Plan:
    """The plan of the stages `names` (default: every stage): timed with `rates` (default: measured
    here; none with `measure` false), with FLOPs and memory when `costs`."""
    from pipeline.graph import build_graph

    graph = [s for s in build_graph(p) if names is None or s.name in names]
    works = [(s.name, stage_work(s, p)) for s in graph]
    shapes = {shape for _, w in works for shape in w.sampling}
    if rates is None and measure:
        rates = calibrate(p, shapes)
    units = unit_costs(p, shapes) if costs else None
    return Plan([(name, w, seconds(w, rates) if rates else None) for name, w in works],
                {name: stage_cost(w, p, units) for name, w in works} if units else {},
                {s.name: s.upstream for s in graph}, gpu_tflops)


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
    ap.add_argument("--preset", help="plan a preset's run instead of --params (e.g. cifar10_5); implies --all")
    ap.add_argument("--all", action="store_true", help="every stage, not only those `dvc repro` would run")
    ap.add_argument("--no-measure", action="store_true",
                    help="no timing on this machine (the paper presets' networks take minutes per step on a CPU)")
    ap.add_argument("--gpu-tflops", type=float, metavar="X",
                    help="also FLOPs and memory per stage, and the time at X TFLOP/s sustained (peak × the "
                         "utilisation you expect)")
    args = ap.parse_args(argv)
    if args.gpu_tflops is not None and args.gpu_tflops <= 0:
        ap.error(f"--gpu-tflops {args.gpu_tflops:g}: give a rate above 0")
    try:
        from params import preset

        p = preset(args.preset) if args.preset else load_params(args.params)
    except Exception as e:  # ParamsError, an unknown preset and a missing file: one line naming it
        print(f"error: {e}", file=sys.stderr)
        return 2
    whole = args.all or args.preset or not Path("dvc.lock").exists()
    names = None if whole else to_run(".")
    if names == []:
        print("every stage is up to date: `dvc repro` has nothing to run")
        return 0
    plan = make_plan(p, names, measure=not args.no_measure, costs=args.gpu_tflops is not None or args.no_measure,
                     gpu_tflops=args.gpu_tflops)
    print(plan.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
