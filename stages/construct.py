"""Everything the stages build from params, built without data or training, so that params a stage
would refuse hours into a run are refused when they are loaded: `python -m params --check` and the
graph's first stage (check-graph) call `check_constructs`.

What it builds, as the stages build it:
- each task's classes (`guide.data.task_classes`, the class order included);
- the diffusion UNet and the classifier (the run's architecture, also the oracle's) on PyTorch's
  meta device at the data's image size and channels, the classifier with a forward pass: shapes
  only, no memory and no arithmetic, so the ImageNet100-64 UNet is as quick to check as the smoke
  one (the UNet's forward is not run: autocast, which its attention uses, has no meta device);
- the noise schedule and every respaced chain (training, rehearsal, replay);
- every task's classifier batch split (the reference's B//(t+1) real images and t times as many
  replayed) and every data-parallel batch split over `run.devices`.
Plus what only the machine can say: `data.root`, when given, must exist and be of the kind the
dataset's loader reads (a folder; mnist5k also takes the .csv.gz file itself).

A failure is one ParamsError naming the field. Whether the dataset's files are present is not
checked here (they may live on another machine): the stages that load data say so, naming the path.
"""
from __future__ import annotations

from pathlib import Path

import torch

from guide.continual import METHODS, mixed_batch_sizes
from guide.diffusion import NoiseSchedule
from guide.models import build_classifier
from guide.models.unet import UNet
from params import Params, ParamsError

# channels and native image size of each dataset's files (synthetic: data.synthetic's)
CHANNELS = {"mnist5k": 1, "fashion_mnist": 1, "cifar10": 3, "cifar100": 3, "imagenet100_64": 3}
NATIVE_SIZE = {"mnist5k": 28, "fashion_mnist": 28, "cifar10": 32, "cifar100": 32, "imagenet100_64": 64}


def network_shapes(p: Params) -> tuple[int, int, int]:
    """(image size, channels, classes) of the images the stages train on, as `stages.common.Context.data`
    loads them: data.image_size when set, else the dataset's own; synthetic images are generated at
    data.synthetic's size."""
    d = p.data
    size = d.synthetic.image_size if d.dataset == "synthetic" else d.image_size or NATIVE_SIZE[d.dataset]
    ch = d.synthetic.channels if d.dataset == "synthetic" else CHANNELS[d.dataset]
    return size, ch, p.num_classes


def build_unet(p: Params) -> UNet:
    """The run's diffusion UNet, freshly initialised, built from its params alone (no data needed)."""
    size, ch, k = network_shapes(p)
    return UNet(image_size=size, in_channels=ch, out_channels=ch, num_classes=k, **p.diffusion.unet.model_dump())


def check_constructs(p: Params, source: str = "params") -> None:
    """Build what every stage builds from `p` (no data, no training; networks on the meta device).
    ParamsError "SOURCE: FIELD: why" at the first thing that cannot be built."""
    def refuse(field: str, why: str) -> None:
        raise ParamsError(f"{source}: {field}: {why}")

    d = p.data
    if d.root is not None:
        root = Path(d.root)
        if not root.exists():
            refuse("data.root", f"{d.root} does not exist")
        if root.is_file() and not (d.dataset == "mnist5k" and root.name.endswith(".csv.gz")):
            refuse("data.root", f"{d.root} is a file; the {d.dataset} loader reads a folder")
    size, channels, _ = network_shapes(p)
    uses_diffusion = METHODS[p.run.method].uses_diffusion
    with torch.device("meta"):
        x = torch.zeros(2, channels, size, size)
        if uses_diffusion:
            u = p.diffusion.unet
            reached = {size // 2 ** level for level in range(len(u.channel_mult))}
            missing = sorted(set(u.attention_resolutions) - reached)
            if missing:
                refuse("diffusion.unet.attention_resolutions",
                       f"{', '.join(map(str, missing))}: not a resolution this UNet reaches at image size {size} "
                       f"(it reaches {', '.join(map(str, sorted(reached, reverse=True)))})")
            try:  # the constructor checks the sizes, heads and widths against each other
                build_unet(p)
            except ValueError as err:
                refuse("diffusion.unet", f"no UNet for {channels}x{size}x{size} images with these settings: "
                       f"{' '.join(str(err).split())}")
        try:
            logits = build_classifier(p.classifier.arch, p.num_classes, channels, size, p.classifier.width)(x)
        except (ValueError, RuntimeError) as err:
            refuse("classifier.arch", f"no {p.classifier.arch} for {channels}x{size}x{size} images: "
                   f"{' '.join(str(err).split())}")
        assert logits.shape == (2, p.num_classes), logits.shape
    if uses_diffusion:
        schedule = NoiseSchedule.make(p.diffusion.schedule, p.diffusion.num_timesteps)
        if not bool(torch.isfinite(schedule.betas).all()) or not 0 < float(schedule.betas.min()) <= float(schedule.betas.max()) <= 1:
            refuse("diffusion.num_timesteps", f"the {p.diffusion.schedule} schedule over {p.diffusion.num_timesteps} "
                   f"steps has a β outside (0, 1]")
        if float(schedule.alphas_cumprod[-1]) <= 0:  # the linear schedule at T = 20: β_T = 1
            refuse("diffusion.num_timesteps", f"the {p.diffusion.schedule} schedule over {p.diffusion.num_timesteps} "
                   f"steps ends at ᾱ_T = 0 (a β of 1), so sampling divides by √ᾱ_T and every sample is NaN "
                   f"(the reference's too); choose another number of steps")
        for spec in (p.diffusion.train_respacing, p.rehearsal.respacing, p.replay.respacing):
            schedule.respace(spec)  # the schema has checked the timesteps; this builds the chain's β
    # every task's classifier batch: B//(t+1) real images and t times as many replayed (the reference's
    # split); below t+1 images there would be none of either
    B = p.classifier.batch_size
    if p.generated_replay and B < d.num_tasks:
        refuse("classifier.batch_size", f"{B}: the last task's batch would hold B//{d.num_tasks} = 0 real images "
               f"(and so no replay); at least data.num_tasks = {d.num_tasks} needed")
    for t in range(d.num_tasks):
        real, replayed = mixed_batch_sizes(B, t, p.generated_replay)
        assert real > 0 and real + replayed <= B, (t, real, replayed)
    n = p.run.devices
    for field, batch in (("classifier.batch_size", B), ("diffusion.batch_size", p.diffusion.batch_size)):
        if batch % n:
            refuse(field, f"a global batch of {batch} does not split evenly over run.devices = {n} processes")
