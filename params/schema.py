"""Typed params: one pydantic model per params.yaml group; unknown keys are rejected. The defaults
are the default run (`Params()` is the committed params.yaml, preset mnist5k); the choices of every
enumerated setting are the core's own registries.

Structural params decide which stages exist (number of tasks, rounds, the method, the guidance mode,
whether the last diffusion task is trained); changing one needs `python -m pipeline.render`. All
other params are read by the stages at run time.
"""
from __future__ import annotations

import hashlib
import json
from typing import Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator

from guide.augment import AUGMENTATIONS
from guide.continual import METHODS
from guide.data import DATASETS, NUM_CLASSES
from guide.diffusion import SCHEDULES, respaced_timesteps
from guide.models import CLASSIFIER_ARCHS
from guide.models.unet import CLASS_COND_KINDS, PRECISIONS
from guide.samplers import SAMPLERS


_RECORDERS: list = []  # params.record: the recorders in effect (innermost last)


def _scalar_types(annotation) -> set:
    """The plain types a field's annotation admits (through Optional, Literal and Annotated)."""
    args = get_args(annotation)
    if get_origin(annotation) is Literal:
        return {type(a) for a in args}
    if not args or get_origin(annotation) in (tuple, list):
        return {annotation}
    return set().union(*(_scalar_types(a) for a in args))


class Group(BaseModel):
    # no NaN or ±inf where a number belongs (a scale, a rate): pydantic takes both by default
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, v, info):
        """YAML's true/false where a number belongs: pydantic would read them as 1 and 0."""
        types = _scalar_types(cls.model_fields[info.field_name].annotation)
        if isinstance(v, bool) and bool not in types:
            raise ValueError(f"a boolean ({str(v).lower()}) where a number or text belongs")
        if isinstance(v, (list, tuple)) and any(isinstance(e, bool) for e in v) and bool not in types:
            raise ValueError(f"a boolean in {list(v)} where numbers belong")
        return v

    def __getattribute__(self, name: str):
        value = super().__getattribute__(name)
        if _RECORDERS and name[0] != "_" and name in type(self).model_fields and not isinstance(value, Group):
            _RECORDERS[-1].read(self, name)
        return value

    def model_dump(self, *args, **kwargs):
        if _RECORDERS:  # a dump reads every leaf under this group
            _RECORDERS[-1].read_all(self)
        return super().model_dump(*args, **kwargs)


class Run(Group):
    method: str = "guide"  # structural; one of guide.continual.METHODS
    seed: int = 0  # every generator is seeded from this
    device: Literal["cpu", "cuda", "auto"] = "cpu"  # "auto" takes a GPU when there is one
    threads: int = Field(0, ge=0)  # torch CPU threads; 0 keeps torch's default
    # processes (one per GPU) each data-parallel stage runs on, under torchrun; 1: plain python
    devices: PositiveInt = 1
    # training steps between a training stage's resume states (stages/resume.py); 0: none. Changes no
    # output, so no stage declares it
    resume_every: int = Field(500, ge=0)

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        if v not in METHODS:  # the registry is the one list of methods
            raise ValueError(f"{v!r} is not a method; expected one of {', '.join(METHODS)}")
        return v


class Synthetic(Group):
    num_classes: PositiveInt = 4
    image_size: PositiveInt = 16
    channels: Literal[1, 3] = 1
    train_per_class: PositiveInt = 64
    test_per_class: PositiveInt = 16


class Data(Group):
    dataset: Literal[DATASETS] = "mnist5k"
    root: str | None = None  # where the files live (never downloaded); None: each dataset's default (data/ for CIFAR and ImageNet-100)
    image_size: PositiveInt | None = 16  # resize every image to this size (None: native size)
    num_tasks: PositiveInt = 5  # structural
    first_task_classes: PositiveInt | None = None  # a larger first task (None: all tasks equal)
    class_order_seed: int | None = None  # None: classes in natural order
    synthetic: Synthetic = Synthetic()  # used only when dataset is "synthetic"


def _respacing_as_text(v):
    """`-S replay.respacing=250` reaches params.yaml as an integer: a respacing is text."""
    return str(v) if isinstance(v, int) and not isinstance(v, bool) else v


class UNetParams(Group):
    model_channels: PositiveInt = 32
    num_res_blocks: PositiveInt = 1
    channel_mult: tuple[PositiveInt, ...] = Field((1, 2, 2), min_length=1)
    attention_resolutions: tuple[PositiveInt, ...] = ()
    num_heads: PositiveInt = 4
    num_head_channels: int = -1  # > 0 sets heads by channel width instead of num_heads; -1: num_heads
    dropout: float = Field(0.1, ge=0, lt=1)
    class_cond: Literal[CLASS_COND_KINDS] = "concat_time_1hot"
    use_scale_shift_norm: bool = True
    resblock_updown: bool = False
    use_new_attention_order: bool = False
    # "bf16": the UNet's forward pass (diffusion training, rehearsal and replay sampling) under bf16
    # autocast; not the reference's arithmetic, so off unless chosen (README: "bf16")
    precision: Literal[PRECISIONS] = "fp32"


    @field_validator("num_head_channels")
    @classmethod
    def _heads_by_width(cls, v: int) -> int:
        if v == 0 or v < -1:
            raise ValueError(f"{v}: expected channels per head (> 0) or -1 (heads from num_heads)")
        return v


class Diffusion(Group):
    unet: UNetParams = UNetParams()
    schedule: Literal[SCHEDULES] = "linear"
    num_timesteps: PositiveInt = 1000  # T of the forward process
    # training steps, chosen by replay quality (results/diffusion_size): the most the 20-minute
    # default run allows on 2 cores
    steps_first: PositiveInt = 2000  # training steps on task 0
    steps_later: PositiveInt = 1200  # training steps on each later task
    batch_size: PositiveInt = 64
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    ema_decay: float = Field(0.995, ge=0, le=1)
    hflip: bool = False  # horizontal-flip augmentation (the reference's default for CIFAR: true)
    # the chain the network is trained on: "" every step of num_timesteps; "ddimN" or section counts
    # train on that respaced chain (t uniform over its kept steps, β respaced, the network given the
    # original timestep), as the reference's ImageNet command does (--timestep_respacing=ddim250)
    train_respacing: str = ""
    # structural: diffusion(T−1) feeds no classifier; the reference trains it anyway (its presets: true)
    train_last_task: bool = False

    _respacing_text = field_validator("train_respacing", mode="before")(classmethod(
        lambda cls, v: _respacing_as_text(v)))


class Sampling(Group):
    sampler: Literal[SAMPLERS] = "ddim"
    respacing: str = "ddim20"  # "ddimN" (DDIM stride) or section counts like "250" / "10,20"; "" = every step
    eta: float = Field(0.0, ge=0)
    batch_size: PositiveInt = 100  # images per sampling batch

    _respacing_text = field_validator("respacing", mode="before")(classmethod(lambda cls, v: _respacing_as_text(v)))


class Rehearsal(Sampling):
    per_task: int = Field(200, ge=0)  # unguided samples per old task for diffusion self-rehearsal


class Replay(Sampling):
    respacing: str = "ddim10"
    rounds: PositiveInt = 1  # structural: classifier training of task t ≥ 1 is cut into this many rounds


class Guidance(Group):
    scale: float = Field(0.1, ge=0)  # s, or the lower end of U[s, scale_max]
    scale_max: float | None = Field(None, ge=0)  # None: every sample uses `scale`
    # structural: "online" regenerates replay inside the classifier stage, steered by the classifier
    # being trained (the reference's loop); "rounds" samples it in replay stages between rounds
    mode: Literal["rounds", "online"] = "online"
    clip_x0: bool = True  # clip x̂₀ to [−1, 1] before the classifier sees it

    @model_validator(mode="after")
    def _range(self):
        if self.scale_max is not None and self.scale_max < self.scale:
            raise ValueError(f"scale_max: {self.scale_max} is below guidance.scale = {self.scale}")
        return self

    @property
    def bounds(self) -> tuple[float, float]:
        return self.scale, self.scale if self.scale_max is None else self.scale_max


class Classifier(Group):
    arch: Literal[CLASSIFIER_ARCHS] = "small_cnn"
    # channels of the first stage (resnet18: 64, 128, 256, 512 at 64; small_cnn: 32, 64, 128 at 32);
    # None = the architecture's own (resnet18: 64, as the reference). Smaller only for CPU miniatures.
    width: int | None = Field(None, gt=0)
    steps_first: PositiveInt = 400
    steps_later: PositiveInt = 400
    lr_first: float = Field(0.1, gt=0)
    lr_later: float = Field(0.01, gt=0)
    batch_size: PositiveInt = 64
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    interval: PositiveInt = 5  # replay is regenerated every `interval` steps (the reference's setting)
    augmentation: Literal[AUGMENTATIONS] = "digits"


class Oracle(Group):
    """The classifier that judges replay (stages.oracle): the run's architecture, trained on every real
    training image at once. It guides nothing."""

    steps: PositiveInt = 1000  # SGD steps, learning rate decayed linearly to zero
    lr: float = Field(0.05, gt=0)
    batch_size: PositiveInt = 128


class Evaluate(Group):
    batch_size: PositiveInt = 500
    grid_images: PositiveInt = 8  # old-class images per replay grid (guided vs unguided, same noise)


class Tracking(Group):
    wandb: Literal["disabled", "offline", "online"] = "disabled"  # never online unless asked
    project: str = "guide"
    group: str | None = None  # wandb group; None: the DVC experiment name or "default"


class Params(Group):
    run: Run = Run()
    data: Data = Data()
    diffusion: Diffusion = Diffusion()
    rehearsal: Rehearsal = Rehearsal()
    replay: Replay = Replay()
    guidance: Guidance = Guidance()
    classifier: Classifier = Classifier()
    oracle: Oracle = Oracle()
    evaluate: Evaluate = Evaluate()
    tracking: Tracking = Tracking()

    @model_validator(mode="after")
    def _consistent(self):
        n = self.num_classes
        d = self.data
        first = d.first_task_classes
        if first is None:
            if n % d.num_tasks:
                raise ValueError(f"data.num_tasks: {n} classes cannot be split into {d.num_tasks} equal tasks")
        else:
            if d.num_tasks < 2 or first >= n or (n - first) % (d.num_tasks - 1):
                raise ValueError(f"data.first_task_classes: {first} first-task classes leave {n - first} "
                                 f"that cannot be split into {d.num_tasks - 1} equal tasks")
        T = self.diffusion.num_timesteps
        if self.diffusion.schedule == "linear" and 10 <= T < 20:
            raise ValueError(f"diffusion.num_timesteps: {T}: the linear schedule's last β would be {20 / T:.3g} > 1 "
                             f"(it needs fewer than 10 or at least 20 steps, as the reference's does)")
        for field, spec in (("diffusion.train_respacing", self.diffusion.train_respacing),
                            ("rehearsal.respacing", self.rehearsal.respacing),
                            ("replay.respacing", self.replay.respacing)):
            try:
                steps = respaced_timesteps(T, spec)
            except ValueError as err:  # a section too small, no stride that fits, or not a number
                why = str(err).split(": ", 1)[-1] if str(err).startswith("respacing") else (
                    "expected 'ddimN', section counts like '250' or '10,20', or '' for every step")
                raise ValueError(f"{field}: {spec!r}: {why} (diffusion.num_timesteps={T})") from None
            if not steps:
                raise ValueError(f"{field}: {spec!r} gives no steps (diffusion.num_timesteps={T})")
        if self.classifier.steps_later % self.replay.rounds:
            raise ValueError(f"replay.rounds: classifier.steps_later={self.classifier.steps_later} is not "
                             f"divisible by {self.replay.rounds} rounds")
        return self

    @property
    def num_classes(self) -> int:
        return NUM_CLASSES.get(self.data.dataset, self.data.synthetic.num_classes)

    @property
    def generated_replay(self) -> bool:
        """Whether the method replays samples of a diffusion model (guide, gr, ddgr)."""
        return METHODS[self.run.method].uses_diffusion

    def classifier_rounds(self, task: int) -> int:
        """Rounds of task t's classifier training: R for guided-replay tasks in rounds mode, else 1."""
        return self.replay.rounds if task > 0 and self.generated_replay and self.guidance.mode == "rounds" else 1

    def structure(self) -> dict:
        """The params that decide which stages exist."""
        return {
            "num_tasks": self.data.num_tasks,
            "method": self.run.method,
            "rounds": self.replay.rounds,
            "guidance_mode": self.guidance.mode,
            "train_last_task": self.diffusion.train_last_task,
            # the data-parallel stages' command (torchrun); absent at 1 so one-process keys stay as they were
            **({"devices": self.run.devices} if self.run.devices > 1 else {}),
        }

    def structure_key(self) -> str:
        return hashlib.sha256(json.dumps(self.structure(), sort_keys=True).encode()).hexdigest()[:12]


STRUCTURAL_KEYS = ("data.num_tasks", "run.method", "replay.rounds", "guidance.mode", "diffusion.train_last_task",
                   "run.devices")
# the stage kinds that run data parallel (training: split batches; sampling: split images);
# run.devices > 1 launches them with torchrun
DATA_PARALLEL = ("diffusion", "rehearsal", "replay", "classifier")
