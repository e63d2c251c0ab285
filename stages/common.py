"""What every stage shares: argument parsing, params loading with exit code 2 on bad input, seeding,
the dataset of the run, model construction and checkpoint loading, progress bars and tracking."""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from guide.data import DatasetNotFoundError, ImageDataset, load_dataset, relabel, task_classes
from guide.diffusion import NoiseSchedule
from guide.distributed import World
from guide.io import CorruptArtifactError, atomic_write_text, load_checkpoint
from guide.models import UNet, build_classifier
from params import Params, ParamsError, load_params
from params.schema import DATA_PARALLEL
from params.record import recording
from stages import paths
from stages.tracking import log, log_image, log_table, tracking  # noqa: F401  (the stages' tracking calls)


SEED = "run.seed"  # every stage's generators and global seed derive from it
UNET = ("diffusion.unet", "diffusion.schedule", "diffusion.num_timesteps")  # Context.new_unet, .schedule
_MAIN = True  # False on the ranks > 0 of a data-parallel stage: no progress bars there


def device_type(params: Params) -> str:
    """The device kind `run.device` asks for ("auto": CUDA when present)."""
    want = params.run.device
    if want == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return want


@dataclass
class Context:
    """One stage invocation: its params, which task and round it is for, and derived facts."""

    kind: str
    params: Params
    task: int
    round: int
    world: World = World()  # the data-parallel ranks (one process without a launcher)

    @functools.cached_property
    def device(self) -> torch.device:
        want = device_type(self.params)
        if want == "cuda" and self.world.size > 1:
            return torch.device("cuda", self.world.local_rank)
        return torch.device(want)

    def generator(self, purpose: str = "") -> torch.Generator:
        """A CPU generator seeded from (run.seed, stage kind, task, round, purpose)."""
        key = f"{self.params.run.seed}/{self.kind}/{self.task}/{self.round}/{purpose}"
        return torch.Generator().manual_seed(zlib.crc32(key.encode()))

    @functools.cached_property
    def tasks(self) -> list[range]:
        """Each task's classes, as contiguous label ranges after relabelling to the class order."""
        out, start = [], 0
        for classes in self.class_order_by_task:
            out.append(range(start, start + len(classes)))
            start += len(classes)
        return out

    @functools.cached_property
    def class_order_by_task(self) -> list[list[int]]:
        d = self.params.data
        return task_classes(self.params.num_classes, d.num_tasks, d.first_task_classes, d.class_order_seed)

    @functools.cached_property
    def data(self) -> ImageDataset:
        d = self.params.data
        if d.dataset == "synthetic":  # generated at data.synthetic.image_size
            ds = load_dataset("synthetic", **d.synthetic.model_dump())
        else:
            ds = load_dataset(d.dataset, d.root, d.image_size)
        return relabel(ds, [c for classes in self.class_order_by_task for c in classes])

    def split(self, batch: int, field: str) -> None:
        """Refuse a global batch (params key `field`) that the data-parallel ranks cannot share evenly."""
        if batch % self.world.size:
            raise ParamsError(f"{field}: a global batch of {batch} does not split evenly over "
                              f"{self.world.size} data-parallel processes")

    def seen(self, task: int | None = None) -> int:
        """Number of classes seen up to and including task t."""
        return self.tasks[self.task if task is None else task].stop

    def final_classifier(self, task: int) -> str:
        """The checkpoint of classifier(t) after its last round."""
        return paths.classifier(task, self.params.classifier_rounds(task) - 1)

    # --- models ------------------------------------------------------------------------------
    def new_unet(self) -> UNet:
        u = self.params.diffusion.unet
        return UNet(image_size=self.data.image_size, in_channels=self.data.channels,
                    out_channels=self.data.channels, num_classes=self.data.num_classes,
                    **u.model_dump()).to(self.device)

    def schedule(self) -> NoiseSchedule:
        return NoiseSchedule.make(self.params.diffusion.schedule, self.params.diffusion.num_timesteps)

    def load_unet(self, path: str, weights: str = "ema") -> UNet:
        """A trained UNet from a diffusion checkpoint (EMA weights by default), in eval mode."""
        model = self.new_unet()
        model.load_state_dict(load_checkpoint(path, map_location=self.device)[weights])
        return model.eval().requires_grad_(False)

    def new_classifier(self) -> torch.nn.Module:
        return build_classifier(self.params.classifier.arch, self.data.num_classes, self.data.channels,
                                self.data.image_size, self.params.classifier.width).to(self.device)

    def resume(self):
        """This stage's resume state (stages/resume.py), every `run.resume_every` steps."""
        from stages.resume import Resume

        return Resume(self.kind, self.task, self.round, self.params, self.params.run.resume_every, self.world.main)

    def load_classifier(self, path: str) -> tuple[torch.nn.Module, dict]:
        ckpt = load_checkpoint(path, map_location=self.device)
        model = self.new_classifier()
        model.load_state_dict(ckpt["model"])
        return model, ckpt


RUN_PROGRESS = "GUIDE_RUN_PROGRESS"  # a JSON file `python -m pipeline.repro` keeps for the running stage


def run_progress() -> dict | None:
    """What `pipeline.repro` projects for the rest of the run when this stage started: `after` (seconds
    of the stages after this one), `current_left` (this stage's own projection) and `current_since`
    (when it started, epoch seconds). None outside `pipeline.repro` or when the file is unreadable."""
    path = os.environ.get(RUN_PROGRESS)
    if not path:
        return None
    try:
        state = json.loads(Path(path).read_text())
        return {k: float(state[k]) for k in ("after", "current_left", "current_since")}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def clock(seconds: float) -> str:
    s = max(0, round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def progress(total: int, desc: str):
    """A tqdm bar on stderr (DVC and Prefect both show it in the stage log). Under `pipeline.repro` it
    also shows the whole run's time left: this bar's own time left plus the projection of the stages
    still to come."""
    from tqdm import tqdm

    run = run_progress()

    class Bar(tqdm):
        @property
        def format_dict(self):
            d = super().format_dict
            if run is None:
                return d
            rate = d.get("rate") or (d["n"] / d["elapsed"] if d["n"] and d["elapsed"] else None)
            left = (d["total"] - d["n"]) / rate if rate and d["total"] else \
                max(0.0, run["current_left"] - (time.time() - run["current_since"]))
            note = f"run ≈{clock(left + run['after'])} left"
            d["postfix"] = f"{d['postfix']}, {note}" if d.get("postfix") else note
            return d

    return Bar(total=total, desc=desc, file=sys.stderr, mininterval=2.0, dynamic_ncols=True, disable=not _MAIN)


class Curve:
    """A training curve for `dvc plots`: a CSV row every `every` steps and at step `last`, each column
    the mean of what was added since the row before (a value, or a (sum, count) pair for means over
    samples), an empty cell when nothing was. The rows also go to wandb when tracking is on. The
    file's bytes depend only on the values (no timestamps), so a rerun with the same inputs writes
    the same file."""

    def __init__(self, path: str, columns: tuple[str, ...], every: int, last: int, prefix: str):
        self.path, self.columns, self.every, self.last, self.prefix = path, columns, every, last, prefix
        self.rows: list[str] = []
        self._reset()

    def _reset(self) -> None:
        self.sums = dict.fromkeys(self.columns, 0.0)
        self.counts = dict.fromkeys(self.columns, 0)

    def add(self, step: int, **values) -> None:
        for k, v in values.items():
            total, count = v if isinstance(v, tuple) else (v, 1)
            self.sums[k] += float(total)
            self.counts[k] += int(count)
        if step % self.every == 0 or step == self.last:
            means = {k: self.sums[k] / self.counts[k] for k in self.columns if self.counts[k]}
            self.rows.append(",".join([str(step)] + [f"{means[k]:.6g}" if k in means else "" for k in self.columns]))
            log({f"{self.prefix}/{k}": v for k, v in means.items()}, step=step)
            self._reset()

    def state_dict(self) -> dict:
        return {"rows": list(self.rows), "sums": dict(self.sums), "counts": dict(self.counts)}

    def load_state_dict(self, state: dict) -> None:
        self.rows, self.sums, self.counts = list(state["rows"]), dict(state["sums"]), dict(state["counts"])

    def write(self) -> None:
        if _MAIN:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path, "\n".join([",".join(("step", *self.columns)), *self.rows]) + "\n")


def sampling_bar(n_images: int, batch_size: int, steps: int, desc: str, world: World = World()):
    """A bar over every denoising step of every batch this rank samples, and the sampler callback
    that advances it."""
    bar = progress(len(range(world.rank, -(-n_images // batch_size), world.size)) * steps, desc)
    return bar, lambda done, total: bar.update(1)


def parser(kind: str, doc: str | None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=f"python -m stages.{kind}", description=doc,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", type=int, default=0, help="continual task t")
    ap.add_argument("--round", type=int, default=0, help="classifier round r within task t")
    ap.add_argument("--params", default="params.yaml", help="the params file")
    return ap


def run_stage(kind: str, body: Callable[[Context], None], argv: list[str] | None = None,
              doc: str | None = None) -> int:
    """Parse, validate, seed and run one stage. Bad input exits 2 with one message naming it."""
    global _MAIN
    args = parser(kind, doc).parse_args(argv)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and kind not in DATA_PARALLEL:
        print(f"stages.{kind}: launched on {launched} processes (WORLD_SIZE), but this stage runs on one; "
              f"data-parallel stages: {', '.join(DATA_PARALLEL)}", file=sys.stderr)
        return 2
    world = World()
    try:
        params = load_params(args.params)
        record_to = os.environ.get("GUIDE_RECORD_PARAMS")  # the contract test: which keys does the stage read
        with recording(params) if record_to else contextlib.nullcontext(set()) as keys:
            if not 0 <= args.task < params.data.num_tasks:
                raise ParamsError(f"--task {args.task}: outside 0..{params.data.num_tasks - 1} (data.num_tasks)")
            world = World.from_environment(device_type(params))
            _MAIN = world.main
            ctx = Context(kind, params, args.task, args.round, world)
            if params.run.threads:
                torch.set_num_threads(params.run.threads)
            # rank 0 keeps the one-process seed; each other rank derives its own (dropout, augmentation)
            rank = f"/rank{world.rank}" if world.rank else ""
            torch.manual_seed(zlib.crc32(f"{params.run.seed}/{kind}/{args.task}/{args.round}{rank}".encode()))
            with tracking(ctx) if world.main else contextlib.nullcontext():
                body(ctx)
        if record_to and world.main:
            atomic_write_text(Path(record_to), json.dumps(sorted(keys), indent=1) + "\n")
    except (ParamsError, DatasetNotFoundError, CorruptArtifactError) as err:
        print(f"stages.{kind}: {err}", file=sys.stderr)
        return 2
    finally:
        world.close()
    return 0
