"""Guided replay of a task's old classes, in one place: which classifier steers it, how its scales
are drawn, how it is laid out over the classifier's steps, and what is measured about it.

The replay and classifier stages only load the models named here and write what comes back;
nothing here knows about files or stages.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from guide.continual import Method, generate, mixed_batch_sizes, spread_labels
from guide.diffusion import NoiseSchedule
from guide.distributed import World
from guide.guidance import draw_scales, make_guidance
from guide.mechanism import ReplayProbe


def guiding_classifier(method: Method, mode: str) -> str:
    """Which classifier steers task t's replay:

    - "current": GUIDE — in `online` mode the classifier being trained, as it stands when the chunk
      is drawn; in `rounds` mode the one the round starts from (classifier(t−1) in round 0, round
      r−1's after);
    - "previous": DDGR — classifier(t−1), which knows only the old classes;
    - "none": unguided replay (gr).

    The "current" classifier also measures every method's replay (guide.mechanism)."""
    return {"new": "current", "old": "previous", "none": "none"}[method.guidance]


def replay_guidance(method: Method, *, classifier: nn.Module | None, prev_classifier: nn.Module | None,
                    scale_min: float, scale_max: float, num_seen: int, num_old: int,
                    current: range, generator: torch.Generator) -> Callable[[Tensor], object] | None:
    """The per-batch guidance factory of a method's replay (None for unguided replay). Scales are
    drawn per sample from U[scale_min, scale_max] with `generator`, kept apart from the sampling
    noise so guided and unguided replay from the same seed share their noise."""
    if method.guidance == "none":
        return None
    guide_by = classifier if method.guidance == "new" else prev_classifier
    seen = num_seen if method.guidance == "new" else num_old
    if guide_by is not None:
        guide_by.eval()

    def factory(labels: Tensor):
        scales = draw_scales(len(labels), scale_min, scale_max, generator)
        return make_guidance(method.guidance, guide_by, scales, seen, current)

    return factory


@dataclass(frozen=True)
class ReplayLayout:
    """How task t's replay is spread over its classifier steps: the task's `steps` are cut into
    `rounds` rounds; within a round, step s uses chunk ⌊(s − the round's first step) / interval⌋ of
    `per_chunk` images — one classifier batch's worth of replay, regenerated every `interval`
    steps as the reference does. `online` mode is the one-round case, drawn as the steps come."""

    steps: int
    rounds: int
    interval: int
    per_chunk: int

    @classmethod
    def of(cls, task: int, *, steps: int, rounds: int, interval: int, batch_size: int) -> "ReplayLayout":
        return cls(steps, rounds, interval, mixed_batch_sizes(batch_size, task, replay=True)[1])

    @property
    def steps_per_round(self) -> int:
        return self.steps // self.rounds

    @property
    def chunks(self) -> int:
        """Chunks per round."""
        return math.ceil(self.steps_per_round / self.interval)

    def first_step(self, round: int) -> int:
        return round * self.steps_per_round

    def chunk(self, step: int, round: int = 0) -> int:
        return (step - self.first_step(round)) // self.interval


class GuidedReplay:
    """Draws replay of the old classes from diffusion(t−1), guided as `method` says, each chunk
    also unguided from the same noise, and measures both with `probe`."""

    def __init__(self, method: Method, unet: nn.Module, schedule: NoiseSchedule, *, old: range, current: range,
                 num_seen: int, bounds: tuple[float, float], sampler: str, eta: float, clip: bool,
                 batch_size: int, probe: ReplayProbe, previous: nn.Module | None = None, world: World = World()):
        self.method, self.unet, self.schedule, self.probe, self.previous = method, unet, schedule, probe, previous
        self.world = world  # draws split their batches over the ranks (every rank gets every image)
        self.old, self.current, self.num_seen, self.bounds = old, current, num_seen, bounds
        self.sampling = dict(sampler=sampler, eta=eta, clip=clip)
        self.batch_size = batch_size

    @property
    def guided(self) -> bool:
        return self.method.guidance != "none"

    def guidance(self, classifier: nn.Module | None, scales: torch.Generator):
        lo, hi = self.bounds
        return replay_guidance(self.method, classifier=classifier, prev_classifier=self.previous, scale_min=lo,
                               scale_max=hi, num_seen=self.num_seen, num_old=self.old.stop, current=self.current,
                               generator=scales)

    def draw(self, n: int, current: nn.Module, noise: torch.Generator, scales: torch.Generator,
             callback=None, keep=None) -> tuple[Tensor, Tensor, Tensor]:
        """n replay images with labels uniform over the old classes; `current` is the current
        classifier (it steers GUIDE's replay and measures every method's). Returns (images, labels,
        targets) on the CPU. `keep(part, streams)`: where finished batches are kept for a resumed
        run (stages.resume.Resume.batches), or None."""
        device = next(self.unet.parameters()).device
        labels = torch.randint(self.old.start, self.old.stop, (n,), generator=noise)
        twin = torch.Generator().set_state(noise.get_state())
        images, targets = generate(self.unet, self.schedule, labels.to(device), batch_size=self.batch_size,
                                   generator=noise, guidance_for=self.guidance(current, scales), callback=callback,
                                   world=self.world, batches=keep and keep("drawn", [noise, scales]), **self.sampling)
        plain = images
        if bool((targets >= 0).any()):  # guided: draw the unguided twin from the same noise
            plain, _ = generate(self.unet, self.schedule, labels.to(device), batch_size=self.batch_size,
                                generator=twin, world=self.world, batches=keep and keep("twin", [twin]),
                                **self.sampling)
        self.probe.add(images, plain, labels.to(device), current)
        return images.cpu(), labels, targets.cpu()

    def grid(self, n: int, current: nn.Module, seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """n old-class images spread over the old classes, unguided and guided from the same noise:
        (labels, unguided, guided, targets)."""
        device = next(self.unet.parameters()).device
        labels = spread_labels(n, self.old)
        runs = []
        for guided in (False, True):
            factory = self.guidance(current, torch.Generator().manual_seed(seed + 1)) if guided else None
            runs.append(generate(self.unet, self.schedule, labels.to(device), batch_size=len(labels),
                                 generator=torch.Generator().manual_seed(seed), guidance_for=factory,
                                 **self.sampling))
        (plain, _), (steered, targets) = runs
        return labels, plain, steered, targets

    def scale_label(self) -> str:
        lo, hi = self.bounds
        return f"{lo}" if lo == hi else f"U[{lo}, {hi}]"

    def mechanism(self, task: int, **extra) -> dict:
        """What was measured over everything drawn, with the settings that drew it."""
        lo, hi = self.bounds
        return {"task": task, "method": self.method.name, "scale_min": lo, "scale_max": hi, **extra,
                **self.probe.result()}
