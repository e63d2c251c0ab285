"""Continual learning: diffusion with self-rehearsal, classifier training on mixed batches, sampling
and evaluation. Methods are data — which replay a classifier sees and what guides it; how guided
replay is drawn and laid out over the classifier's steps is guide.replay's.

These functions are the whole algorithm; the pipeline's stages only load inputs, call them and write
outputs. Nothing here knows about files, DVC, Prefect or wandb.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from guide.augment import DIFFUSION_HFLIP
from guide.diffusion import EMA, NoiseSchedule, epsilon_loss
from guide.distributed import World
from guide.samplers import Callback, sample, skip


@dataclass(frozen=True)
class Method:
    """What a continual-learning method replays to its classifier and how that replay is guided."""

    name: str
    replay: str  # "generated": samples of old classes from diffusion(t−1); "real": old real data; "none"
    guidance: str  # "new" (GUIDE), "old" (DDGR-style) or "none"

    @property
    def uses_diffusion(self) -> bool:
        return self.replay == "generated"


METHODS = {
    "guide": Method("guide", "generated", "new"),  # replay steered toward the current task's classes
    "gr": Method("gr", "generated", "none"),  # the same replay, unguided ("DGR diffusion")
    "ddgr": Method("ddgr", "generated", "old"),  # steered toward the conditioned old class
    "finetune": Method("finetune", "none", "none"),  # no replay: the lower bound
    "joint": Method("joint", "real", "none"),  # all real data so far: the upper bound
}


def spread_labels(n: int, classes: Sequence[int]) -> Tensor:
    """n labels spread evenly over `classes` (cycling in order, so counts differ by at most one)."""
    classes = torch.as_tensor(list(classes), dtype=torch.long)
    return classes[torch.arange(n) % len(classes)]


def fork_seed(generator: torch.Generator) -> int:
    """A fresh seed drawn from a generator, for libraries that only use the global RNG."""
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator))


class EpochBatches:
    """Index batches of a shuffled dataset, epoch after epoch, the last incomplete batch of each
    epoch dropped: what the reference's DataLoader(shuffle=True, drop_last=True) yields, drawn from
    `generator`. A dataset smaller than one batch gives batches of all of it."""

    def __init__(self, n: int, batch: int, generator: torch.Generator):
        self.n, self.batch, self.generator = n, min(batch, n), generator
        self.order, self.pos = torch.empty(0, dtype=torch.long), 0

    def next(self) -> Tensor:
        if self.pos + self.batch > len(self.order):
            self.order, self.pos = torch.randperm(self.n, generator=self.generator), 0
        idx = self.order[self.pos : self.pos + self.batch]
        self.pos += self.batch
        return idx


# --- diffusion ---------------------------------------------------------------------------------
def train_diffusion(model: nn.Module, ema: EMA, schedule: NoiseSchedule, x: Tensor, y: Tensor, *,
                    steps: int, batch_size: int, lr: float, weight_decay: float = 0.0,
                    hflip: bool = True, generator: torch.Generator, world: World = World(),
                    callback: Callable[[int, float], None] | None = None,
                    on_terms: Callable[[int, Tensor, Tensor], None] | None = None,
                    resume_from: dict | None = None, save_every: int = 0,
                    save: Callable[[dict], None] | None = None) -> list[float]:
    """Train the ε-network on (x, y) — real task data and rehearsal together, shuffled, in epochs —
    with AdamW and an EMA of the weights. Returns the per-step losses (of the global batch).
    `on_terms(step, t, losses)`: each step's timesteps and per-sample losses (this rank's share).

    `save(state)` every `save_every` steps (not after the last): the loop's own state — step,
    optimiser, random streams, data order, losses — for `resume_from`, which continues from it
    (the caller restores the weights and the EMA). Resumed, the result is bit-identical.

    Data parallel over `world`'s ranks: each draws the same global batch (same `generator`) and
    computes the loss on its share; DistributedDataParallel averages the gradients."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    model.train()
    net = world.wrap(model)
    batch = min(batch_size, len(x))
    part = world.part(batch)
    losses = []
    batches = EpochBatches(len(x), batch, generator)
    start = 0
    if resume_from is not None:
        start, losses = resume_from["step"], list(resume_from["losses"])
        opt.load_state_dict(resume_from["optimizer"])
        restore_streams(resume_from, generator, batches, world)
    for step in range(start, steps):
        idx = batches.next()
        xb, yb = x[idx], y[idx]
        if hflip:  # the reference's RandomHorizontalFlip() under --train_aug: p = 0.5 per image
            xb = DIFFUSION_HFLIP(xb, generator)
        terms: list | None = [] if on_terms is not None else None
        loss = epsilon_loss(net, schedule, xb, yb, generator, part, terms)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.update(model)
        losses.append(world.mean(loss.detach()).item())
        if callback is not None:
            callback(step + 1, losses[-1])
        if terms:
            on_terms(step + 1, *terms[0])
        if save is not None and save_every and (step + 1) % save_every == 0 and step + 1 < steps:
            save({"step": step + 1, "losses": list(losses), "optimizer": opt.state_dict(),
                  **stream_state(generator, batches, world)})
    return losses


def stream_state(generator: torch.Generator, batches: EpochBatches, world: World = World()) -> dict:
    """Every random stream a training loop draws from, and where its data order stands. The global
    streams (torch's, CUDA's: dropout, augmentation) differ per rank: with several ranks every rank's
    are gathered (a collective: every rank calls this at the same step), so rank 0's state holds all."""
    state = {"generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
             "batches": (batches.order.clone(), batches.pos)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    if world.size > 1:
        mine = {"torch_rng": state["torch_rng"], **({"cuda_rng": state["cuda_rng"]} if "cuda_rng" in state else {})}
        state["ranks"] = world.gather({world.rank: mine})
    return state


def restore_streams(state: dict, generator: torch.Generator, batches: EpochBatches, world: World = World()) -> None:
    """Back to `state` (stream_state's); each rank takes its own global streams. ValueError when the
    state was written by another number of ranks."""
    ranks = state.get("ranks", {0: state})
    if sorted(ranks) != list(range(world.size)):
        raise ValueError(f"a resume state of {len(ranks)} rank(s) cannot resume {world.size}")
    generator.set_state(state["generator"])
    torch.set_rng_state(ranks[world.rank]["torch_rng"])
    batches.order, batches.pos = state["batches"]
    if "cuda_rng" in ranks[world.rank] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(ranks[world.rank]["cuda_rng"])


def generate(model: nn.Module, schedule: NoiseSchedule, labels: Tensor, *, batch_size: int,
             sampler: str = "ddim", eta: float = 0.0, clip: bool = True, generator: torch.Generator,
             guidance_for: Callable[[Tensor], object] | None = None,
             callback: Callback | None = None, world: World = World(), batches=None) -> tuple[Tensor, Tensor]:
    """Sample one image per label from the class-conditional model, in batches.

    `guidance_for(labels_of_batch)` builds the guidance of one batch (or returns None). `clip`: clip
    x̂₀ to [−1, 1] at every step (before the guiding classifier sees it), as the reference does.
    The images are what the sampler's last step returns, not clamped: like the reference's, a
    guided last step can leave [−1, 1] slightly (its x̂₀ is recomputed from the guided ε, unclipped).
    Returns the images and, per image, the class the guidance aimed at (−1 when unguided).

    Over several ranks, batch i is sampled by rank i mod N; the others only advance the generators
    past it, and the images are gathered, so every rank returns what one process would.

    `batches` (stages.resume.Batches, one process): each finished batch is kept as it ends, and the
    batches kept by an interrupted run with the same inputs are taken instead of drawn again (their
    random streams restored), so the result is the uninterrupted run's.
    """
    model.eval()
    done: dict[int, tuple[Tensor, Tensor]] = {}
    if batches is not None:
        done = {i: (x.to(labels.device), t.to(labels.device)) for i, (x, t) in batches.restore().items()}
        for _ in range(len(done) * schedule.num_steps if callback is not None else 0):
            callback(0, 0)  # the sampler calls it once a step: count the restored batches' steps as done
    shape = (model.in_channels, model.image_size, model.image_size)
    for i, start in enumerate(range(0, len(labels), batch_size)):
        if i in done:
            continue
        yb = labels[start : start + batch_size]
        noise = torch.randn((len(yb), *shape), generator=generator)
        guidance = guidance_for(yb) if guidance_for is not None else None
        if not world.owns(i):
            skip(schedule, noise.shape, generator, sampler=sampler, eta=eta)
            continue
        images = sample(model, schedule, noise, yb, sampler=sampler, eta=eta, guidance=guidance, clip=clip,
                        generator=generator, callback=callback)
        last = getattr(guidance, "last_target", None)
        done[i] = images, (last if last is not None else torch.full_like(yb, -1))
        if batches is not None:
            batches.save(i, (done[i][0].cpu(), done[i][1].cpu()))
    if world.size > 1:
        device = labels.device
        done = {i: (x.to(device), t.to(device))
                for i, (x, t) in world.gather({i: (x.cpu(), t.cpu()) for i, (x, t) in done.items()}).items()}
    return torch.cat([done[i][0] for i in sorted(done)]), torch.cat([done[i][1] for i in sorted(done)])


# --- classifier --------------------------------------------------------------------------------
def mixed_batch_sizes(batch_size: int, task: int, replay: bool) -> tuple[int, int]:
    """(real, replay) images per step, as the reference mixes them: B//(t+1) real task-t images
    and (B//(t+1))·t replay images (a step can hold fewer than B images when t+1 does not divide B)."""
    if not replay or task == 0:
        return batch_size, 0
    real = max(1, batch_size // (task + 1))
    return real, real * task


def linear_lr(lr: float, step: int, total_steps: int) -> float:
    """The learning rate decayed linearly to zero over the task, set at every (0-based) step."""
    return lr * max(0.0, 1.0 - step / max(1, total_steps))


def annealed_lr(lr: float, step: int, total_steps: int, epoch_steps: int) -> float:
    """The reference's classifier learning rate before 0-based step `step`: counting steps from 1,
    it is set to lr·(1 − s/S) at every step s that starts a new 'epoch' of `epoch_steps` steps
    (len(task data) // B) and held in between, so the first epoch runs at lr and the last step
    at lr·(1 − S/S) = 0 when S is a whole number of epochs."""
    epoch = (step + 1) // max(1, epoch_steps)
    return lr if epoch == 0 else lr * (1.0 - epoch * max(1, epoch_steps) / max(1, total_steps))


ReplaySource = Callable[[int], tuple[Tensor, Tensor]]  # global step -> bank of replay (x, y)


def train_classifier(classifier: nn.Module, optimizer: torch.optim.Optimizer, real_x: Tensor,
                     real_y: Tensor, *, steps: range, total_steps: int, batch_size: int, lr: float,
                     num_seen: int, task: int, replay: ReplaySource | None = None,
                     augment: Callable[[Tensor], Tensor] | None = None, generator: torch.Generator,
                     world: World = World(), epoch_steps: int | None = None,
                     callback: Callable[[int, float], None] | None = None,
                     on_batch: Callable[[int, float, float], None] | None = None,
                     resume_from: dict | None = None, save_every: int = 0,
                     save: Callable[[dict], None] | None = None) -> list[float]:
    """Train over the global steps `steps` of a task of `total_steps` (so a task can be cut into
    rounds). Each step mixes real task images (shuffled, in epochs) with replay drawn from
    `replay(step)`; the loss is cross-entropy over the logits of the `num_seen` classes seen so far.
    The learning rate follows `annealed_lr` with `epoch_steps` (the reference's), or, when None,
    `linear_lr` (decayed every step). Returns the per-step losses (of the global batch).
    `on_batch(step, accuracy, lr)`: each step's accuracy on its (augmented) training batch and its
    learning rate. `save`, `save_every`, `resume_from`: as in `train_diffusion` (global steps; the
    caller restores the weights and the replay source).

    Data parallel over `world`'s ranks: each draws the same global batch and trains on its share
    (augmented with its own randomness); BN uses the global batch's statistics, DDP averages the
    gradients."""
    n_real, n_replay = mixed_batch_sizes(batch_size, task, replay is not None)
    part = world.part(n_real + n_replay)
    classifier.train()
    net = world.wrap(classifier)
    losses = []
    batches = EpochBatches(len(real_x), n_real, generator)
    if resume_from is not None:
        steps, losses = range(resume_from["step"], steps.stop), list(resume_from["losses"])
        optimizer.load_state_dict(resume_from["optimizer"])
        restore_streams(resume_from, generator, batches, world)
    for step in steps:
        for group in optimizer.param_groups:
            group["lr"] = (linear_lr(lr, step, total_steps) if epoch_steps is None
                           else annealed_lr(lr, step, total_steps, epoch_steps))
        idx = batches.next()
        xb, yb = real_x[idx], real_y[idx]
        if n_replay:
            bank_x, bank_y = replay(step)
            ridx = _draw(len(bank_x), n_replay, generator)
            xb, yb = torch.cat([xb, bank_x[ridx]]), torch.cat([yb, bank_y[ridx]])
        xb, yb = xb[part], yb[part]
        if augment is not None:
            xb = augment(xb)
        logits = net(xb)[:, :num_seen]
        loss = F.cross_entropy(logits, yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(world.mean(loss.detach()).item())
        if callback is not None:
            callback(step + 1, losses[-1])
        if on_batch is not None:
            hits = world.mean((logits.detach().argmax(1) == yb).float().mean()).item()
            on_batch(step + 1, hits, optimizer.param_groups[0]["lr"])
        if save is not None and save_every and (step + 1) % save_every == 0 and step + 1 < steps.stop:
            save({"step": step + 1, "losses": list(losses), "optimizer": optimizer.state_dict(),
                  **stream_state(generator, batches, world)})
    return losses


def _draw(n: int, k: int, generator: torch.Generator) -> Tensor:
    """k indices from range(n): a permutation when k ≤ n (a bank of one batch is used whole)."""
    if k <= n:
        return torch.randperm(n, generator=generator)[:k]
    return torch.randint(0, n, (k,), generator=generator)


def make_optimizer(classifier: nn.Module, lr: float, momentum: float = 0.9,
                   weight_decay: float = 5e-4) -> torch.optim.SGD:
    return torch.optim.SGD(classifier.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)


@torch.no_grad()
def evaluate(classifier: nn.Module, x: Tensor, y: Tensor, tasks: Sequence[Sequence[int]],
             batch_size: int = 500) -> list[float]:
    """Accuracy on each task's test images, the prediction being the argmax over all the
    classifier's logits, classes not seen yet included (the reference's validation does the same)."""
    classifier.eval()
    preds = torch.cat([classifier(x[i : i + batch_size]).argmax(1)
                       for i in range(0, len(x), batch_size)])
    out = []
    for classes in tasks:
        mask = torch.isin(y, torch.as_tensor(list(classes)))
        out.append(float((preds[mask] == y[mask]).float().mean()))
    return out
