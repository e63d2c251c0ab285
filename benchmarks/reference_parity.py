"""Parity harness: run the reference implementation's own functions (cywinski/guide) on fixed inputs
and write what they return as a golden fixture, which `tests/test_reference_parity.py` holds this
project's code to. The fixture holds numbers and small tensors only: inputs, seeds and the
reference's outputs. Nothing of the reference is vendored; rerun this wherever a snapshot is at hand:

    git clone https://github.com/cywinski/guide /somewhere/guide
        # or, from a bare mirror: git -C MIRROR archive HEAD | tar -x -C /somewhere/guide
    pip install --target /somewhere/deps blobfile kornia==0.7.1   # the reference's dist_util and dataloaders import them
    PYTHONPATH=/somewhere/deps WANDB_MODE=disabled OMP_NUM_THREADS=1 \\
        python benchmarks/reference_parity.py --ref /somewhere/guide [--out tests/fixtures/reference_parity.pt]
    python -m pytest -q tests/test_reference_parity.py

Run it from the repository root (this project's `guide` is imported first, then the reference's
`guide` is swapped in as bench_reference.py does). It takes about half a minute on one CPU thread.
A work tree exported with `git archive` has no .git: pass --ref-commit to record which commit it is.

Cases: β/ᾱ of "linear" and "cosine" at T = 5, 9, 10, 50, 1000; respaced timesteps ("ddimN", section
strings, integers) and respaced schedules; q_sample; the ε-MSE training loss at fixed t and ε; single
DDIM and DDPM steps, unguided, GUIDE-guided ("new") and DDGR-guided ("old"); whole guided 5-step
chains with per-sample scales; ResNet-18 logits (eval and train mode) and the validation accuracy;
the replay/real split per classifier step (B = 64, 100, 128, 256; every task of 5 and 10); the
classifier's learning rate per step; the classifier and diffusion augmentations (every op's
parameters and output statistics); the ImageNet-100 preprocessing; results_to_log's average accuracy
and forgetting; update_ema; the state-dict mappings over the full-size CIFAR-10 and ImageNet100-64
UNets and ResNet-18.

Networks: the reference UNet and ResNet-18 get the same weights as ours. The weights are drawn from
a seed into OUR state dict (`seeded_state`) and renamed onto the reference's keys
(`unet_key_to_reference`, `resnet_key_to_reference`), so the fixture stores a seed and a fingerprint
instead of megabytes of weights; the test redraws them. Every "step" of a sampler in the fixture is
the reference's own `ddim_sample` / `p_sample`; every guidance gradient is the reference's own
`cond_fn` (captured from `TrainLoop._sample_examples`); the replay/real split and the classifier's
learning rates are read off the reference's own `TrainLoop.run_loop`, driven with stub models.

Random networks make guided sampling chaotic: ResNet-18's ReLUs make its input gradient jump when x̂₀
moves by float noise. So every step and chain case is checked before it is kept (`sensitivity`: its
result may move only as far as float noise carries it when its input moves by 1e-6 or the UNet's
output by as much as ours and the reference's differ), the chain runs on a 9-step schedule whose ᾱ
stays ≥ 0.19, and whole chains are guided by a small smooth classifier (`SmoothClassifier`, the same
module on both sides) while single guided steps use ResNet-18.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import re
import sys
from collections import OrderedDict
from pathlib import Path
from types import SimpleNamespace

if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")  # the reference's loops draw progress bars (read at tqdm's import)

import numpy as np
import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "tests" / "fixtures" / "reference_parity.pt"
FORMAT = 1

# --------------------------------------------------------------------------------------------------
# shared with tests/test_reference_parity.py (importable without the reference)
# --------------------------------------------------------------------------------------------------

# Small UNets in the reference's own argument names (create_model). "cifar10" has the CIFAR-10
# settings' features (scale-shift norm, legacy attention order, heads by count, concat_time_1hot);
# "imagenet100" the ImageNet100-64 command's (resblock_updown, new attention order, heads by channel
# count); "add_time_learned" the other conditioning kind without scale-shift norm.
UNET_CONFIGS = {
    "cifar10": dict(image_size=16, in_channels=3, num_channels=32, num_res_blocks=1, channel_mult="1,2",
                    attention_resolutions="8", num_heads=4, num_head_channels=-1, num_heads_upsample=-1,
                    use_scale_shift_norm=True, resblock_updown=False, use_new_attention_order=False,
                    dropout=0.0, embedding_kind="concat_time_1hot", num_classes=10),
    "imagenet100": dict(image_size=16, in_channels=3, num_channels=32, num_res_blocks=1, channel_mult="1,2,2",
                        attention_resolutions="16,8,4", num_heads=4, num_head_channels=16, num_heads_upsample=-1,
                        use_scale_shift_norm=True, resblock_updown=True, use_new_attention_order=True,
                        dropout=0.0, embedding_kind="concat_time_1hot", num_classes=10),
    "add_time_learned": dict(image_size=16, in_channels=3, num_channels=32, num_res_blocks=1, channel_mult="1,2",
                             attention_resolutions="16", num_heads=2, num_head_channels=-1, num_heads_upsample=-1,
                             use_scale_shift_norm=False, resblock_updown=False, use_new_attention_order=False,
                             dropout=0.0, embedding_kind="add_time_learned", num_classes=10),
}
# The full-size settings, only to check that the state-dict mapping covers them (built on the meta device).
FULL_UNET_CONFIGS = {
    "cifar10_full": dict(image_size=32, in_channels=3, num_channels=128, num_res_blocks=3, channel_mult="1,2,2,2",
                         attention_resolutions="16,8", num_heads=4, num_head_channels=-1, num_heads_upsample=-1,
                         use_scale_shift_norm=True, resblock_updown=False, use_new_attention_order=False,
                         dropout=0.1, embedding_kind="concat_time_1hot", num_classes=10),
    "imagenet100_64_full": dict(image_size=64, in_channels=3, num_channels=192, num_res_blocks=3,
                                channel_mult="1,2,3,4", attention_resolutions="32,16,8", num_heads=4,
                                num_head_channels=64, num_heads_upsample=-1, use_scale_shift_norm=True,
                                resblock_updown=True, use_new_attention_order=True, dropout=0.1,
                                embedding_kind="concat_time_1hot", num_classes=100),
}


def our_unet(cfg: dict):
    """This project's UNet for a config written in the reference's argument names."""
    from guide.models import UNet

    return UNet(image_size=cfg["image_size"], in_channels=cfg["in_channels"], model_channels=cfg["num_channels"],
                out_channels=cfg["in_channels"], num_res_blocks=cfg["num_res_blocks"],
                attention_resolutions=tuple(int(r) for r in cfg["attention_resolutions"].split(",")),
                dropout=cfg["dropout"], channel_mult=tuple(int(c) for c in cfg["channel_mult"].split(",")),
                num_classes=cfg["num_classes"], class_cond=cfg["embedding_kind"], num_heads=cfg["num_heads"],
                num_head_channels=cfg["num_head_channels"], num_heads_upsample=cfg["num_heads_upsample"],
                use_scale_shift_norm=cfg["use_scale_shift_norm"], resblock_updown=cfg["resblock_updown"],
                use_new_attention_order=cfg["use_new_attention_order"])


def seeded_state(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Weights for every floating tensor of `model`'s state dict, drawn in state-dict order from one
    seeded generator: weight matrices/kernels N(0, 1/fan_in), norm scales 1 + N(0, 0.01), biases
    N(0, 0.01), BN running means N(0, 0.01), running variances U[0.5, 1.5]. The zero-initialised
    output layers get weights too, so every output depends on every layer."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, v in model.state_dict().items():
        if not v.is_floating_point():
            out[name] = v.clone()
            continue
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "running_mean":
            w = 0.1 * torch.randn(v.shape, generator=g)
        elif leaf == "running_var":
            w = 0.5 + torch.rand(v.shape, generator=g)
        elif v.dim() >= 2:
            w = torch.randn(v.shape, generator=g) / math.sqrt(v[0].numel())
        elif leaf == "weight":
            w = 1 + 0.1 * torch.randn(v.shape, generator=g)
        else:
            w = 0.1 * torch.randn(v.shape, generator=g)
        out[name] = w.to(v.dtype)
    return out


def fingerprint(state: dict[str, torch.Tensor]) -> dict:
    """A few numbers that change if the seeded weights ever come out differently (torch's RNG)."""
    floats = [v for v in state.values() if v.is_floating_point()]
    return {"tensors": len(state), "sum_abs": float(sum(v.double().abs().sum() for v in floats)),
            "head": floats[0].flatten()[:4].tolist()}


_UNET_RENAMES = ((".in_norm.", ".in_layers.0."), (".in_conv.", ".in_layers.2."), (".emb_proj.1.", ".emb_layers.1."),
                 (".out_norm.", ".out_layers.0."), (".out_conv.", ".out_layers.3."), (".skip.", ".skip_connection."))


def unet_key_to_reference(key: str) -> str:
    """Our UNet's state-dict key -> the reference UNetModel's. Only the residual block's layers are
    named differently (ours: in_norm/in_conv/emb_proj/out_norm/out_conv/skip; the reference:
    in_layers.0/.2, emb_layers.1, out_layers.0/.3, skip_connection); every other key is the same."""
    for ours, theirs in _UNET_RENAMES:
        key = key.replace(ours, theirs)
    return key


def resnet_key_to_reference(key: str) -> str:
    """Our PreActResNet18's key -> the reference ResNet(depth=18)'s: stem -> initial.block,
    stages.i.j -> group{i+1}.blocks.block{j}, shortcut -> downsample, head -> final.block
    (each pre-activated conv is BN -> ReLU -> conv in both, indices 0 and 2)."""
    m = re.fullmatch(r"stem\.(\d+)\.(.+)", key)
    if m:
        return f"initial.block.{m[1]}.{m[2]}"
    m = re.fullmatch(r"stages\.(\d+)\.(\d+)\.(conv1|conv2|shortcut)\.(\d+)\.(.+)", key)
    if m:
        part = "downsample" if m[3] == "shortcut" else m[3]
        return f"group{int(m[1]) + 1}.blocks.block{m[2]}.{part}.block.{m[4]}.{m[5]}"
    m = re.fullmatch(r"head\.(\d+)\.(.+)", key)
    if m:
        return f"final.block.{m[1]}.{m[2]}"
    raise KeyError(f"no reference key for {key!r}")


class SmoothClassifier(nn.Module):
    """A small classifier with smooth activations (softplus), guiding the whole-chain cases.
    ResNet-18's ReLUs make its input gradient jump when its input moves by float noise, and a chain
    guided by it turns the two implementations' rounding (about 3e-6 in ε) into differences of 1e-3
    and more; single guided steps use ResNet-18 itself. Both sides run this same module."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 16):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, stride=2, padding=1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x, t=None):  # t: the reference's cond_fn passes the timestep
        h = nn.functional.softplus(self.conv2(nn.functional.softplus(self.conv1(x))))
        return self.fc(h.mean((2, 3)))


# --------------------------------------------------------------------------------------------------
# the reference
# --------------------------------------------------------------------------------------------------

def load_reference(path: Path) -> SimpleNamespace:
    """The reference's modules, imported from `path` with this project's `guide` kept out of the way
    (our modules were imported before and keep working)."""
    if not (path / "guide" / "gaussian_diffusion.py").is_file():
        raise SystemExit(f"--ref {path}: no guide/gaussian_diffusion.py there (a cywinski/guide checkout?)")
    os.environ.setdefault("WANDB_MODE", "disabled")
    sys.path[:] = [str(path)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT]
    for name in [m for m in sys.modules if m == "guide" or m.startswith("guide.")]:
        del sys.modules[name]
    import importlib

    mods = {n: importlib.import_module(f"guide.{n}") for n in (
        "gaussian_diffusion", "respace", "script_util", "script_args", "train_util", "validation", "resnet", "nn",
        "logger")}
    if Path(mods["gaussian_diffusion"].__file__).resolve().parent != (path / "guide").resolve():
        raise SystemExit(f"imported {mods['gaussian_diffusion'].__file__}, not the reference under {path}")
    mods["base"] = importlib.import_module("dataloaders.base")
    mods["gr_guidance"] = importlib.import_module("cl_methods.generative_replay_disjoint_classifier_guidance")
    return SimpleNamespace(**mods)


def ref_diffusion(ref, steps: int, schedule: str, respacing="") -> object:
    return ref.script_util.create_gaussian_diffusion(steps=steps, noise_schedule=schedule,
                                                     timestep_respacing=respacing)


def ref_unet(ref, cfg: dict) -> nn.Module:
    with contextlib.redirect_stdout(io.StringIO()):  # create_model prints
        return ref.script_util.create_model(
            cfg["image_size"], cfg["in_channels"], cfg["num_channels"], cfg["num_res_blocks"], model_name="UNetModel",
            model_switching_timestep=30, embedding_kind=cfg["embedding_kind"], channel_mult=cfg["channel_mult"],
            learn_sigma=False, use_checkpoint=False, attention_resolutions=cfg["attention_resolutions"],
            num_heads=cfg["num_heads"], num_head_channels=cfg["num_head_channels"],
            num_heads_upsample=cfg["num_heads_upsample"], use_scale_shift_norm=cfg["use_scale_shift_norm"],
            dropout=cfg["dropout"], resblock_updown=cfg["resblock_updown"], use_fp16=False,
            use_new_attention_order=cfg["use_new_attention_order"], num_classes=cfg["num_classes"])


def ref_resnet18(ref, num_classes: int, in_channels: int = 3) -> nn.Module:
    """The classifier as scripts/image_train.py builds it (classifier_defaults, depth 18, not noised)."""
    opts = SimpleNamespace(**ref.script_args.classifier_defaults())
    opts.model_num_classes, opts.in_channels, opts.depth, opts.noised = num_classes, in_channels, 18, False
    return ref.resnet.ResNet(opts)


def load_mapped(ref_model: nn.Module, ours_state: dict, rename) -> dict:
    """Load our state dict into the reference model under `rename`; fails unless the mapping is
    one-to-one over both key sets with equal shapes."""
    mapped = {rename(k): v for k, v in ours_state.items()}
    theirs = ref_model.state_dict()
    assert len(mapped) == len(ours_state), "two of our keys map to one reference key"
    missing, extra = set(theirs) - set(mapped), set(mapped) - set(theirs)
    assert not missing and not extra, (sorted(missing)[:5], sorted(extra)[:5])
    bad = [k for k in theirs if theirs[k].shape != mapped[k].shape]
    assert not bad, bad[:5]
    ref_model.load_state_dict(mapped, strict=True)
    return {"keys": len(mapped), "params_ours": sum(v.numel() for k, v in ours_state.items() if "running" not in k
                                                    and "num_batches" not in k)}


@contextlib.contextmanager
def patched(obj, **attrs):
    old = {k: getattr(obj, k) for k in attrs}
    for k, v in attrs.items():
        setattr(obj, k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            setattr(obj, k, v)


def _np(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.float64))


# --------------------------------------------------------------------------------------------------
# cases
# --------------------------------------------------------------------------------------------------

SCHEDULE_TS = (5, 9, 10, 50, 1000)


def case_schedules(ref) -> dict:
    """(a) get_named_beta_schedule + GaussianDiffusion's derived arrays."""
    gd = ref.gaussian_diffusion
    out = {}
    for kind in ("linear", "cosine"):
        for T in SCHEDULE_TS:
            case = {"kind": kind, "T": T, "named_betas": _np(gd.get_named_beta_schedule(kind, T)), "error": None}
            try:
                d = ref_diffusion(ref, T, kind)
            except AssertionError:  # GaussianDiffusion asserts 0 < β ≤ 1 (the linear end is 20/T for 10 ≤ T < 50)
                case["error"] = "AssertionError"
            else:
                case |= {"betas": _np(d.betas), "alphas_cumprod": _np(d.alphas_cumprod),
                         "alphas_cumprod_prev": _np(d.alphas_cumprod_prev),
                         "posterior_variance": _np(d.posterior_variance),
                         "fixed_large_variance": _np(np.append(d.posterior_variance[1], d.betas[1:]))}
            out[f"{kind}-{T}"] = case
    return out


RESPACINGS = [  # (T, the reference's section_counts, ours' spec)
    (1000, "ddim10", "ddim10"), (1000, "ddim50", "ddim50"), (1000, "ddim100", "ddim100"), (1000, "ddim250", "ddim250"),
    (1000, "10,5", "10,5"), (1000, "250", "250"), (1000, [250], 250), (1000, [10, 5], "10,5"), (1000, [1000], 1000),
    (1000, [1000], ""), (1000, "3,7,11", "3,7,11"), (50, "ddim10", "ddim10"), (50, "ddim5", "ddim5"),
    (50, "7,3", "7,3"),
    (100, "33", "33"), (9, "ddim3", "ddim3"), (10, "ddim7", "ddim7"), (10, "20", "20"), (10, "4,4,4", "4,4,4"),
]


def case_respacing(ref) -> dict:
    """(b) space_timesteps: the kept timesteps, or the exception it raises."""
    out = {}
    for T, theirs, ours in RESPACINGS:
        try:
            steps = sorted(ref.respace.space_timesteps(T, theirs))
            result = {"steps": steps, "error": None}
        except ValueError as e:
            result = {"steps": None, "error": type(e).__name__}
        out[f"{T}-{theirs!r}->{ours!r}"] = {"T": T, "ref_spec": str(theirs), "ours_spec": ours, **result}
    return out


RESPACED = [(1000, "linear", "ddim50"), (1000, "linear", "ddim100"), (1000, "linear", "250"), (50, "linear", "ddim5"),
            (1000, "cosine", "ddim50"), (50, "cosine", "7,3")]


def case_respaced_schedules(ref) -> dict:
    """(b) SpacedDiffusion's betas, ᾱ and timestep_map, with the base betas given (so the linear
    start does not show here)."""
    out = {}
    for T, kind, spec in RESPACED:
        d = ref_diffusion(ref, T, kind, spec)
        out[f"{kind}-{T}-{spec}"] = {"base_betas": _np(ref.gaussian_diffusion.get_named_beta_schedule(kind, T)),
                                     "spec": spec, "betas": _np(d.betas), "alphas_cumprod": _np(d.alphas_cumprod),
                                     "timestep_map": torch.tensor(d.timestep_map)}
    return out


def case_q_sample(ref) -> dict:
    """(c) q_sample on fixed x0, noise, t."""
    g = torch.Generator().manual_seed(11)
    out = {}
    for T, kind, spec in [(1000, "linear", ""), (1000, "cosine", ""), (9, "linear", ""), (1000, "linear", "ddim50")]:
        d = ref_diffusion(ref, T, kind, spec)
        n = d.num_timesteps
        x0 = draw((4, 3, 8, 8), g, clamp=True)
        noise = draw((4, 3, 8, 8), g)
        t = torch.tensor([0, n // 3, (2 * n) // 3, n - 1])
        out[f"{kind}-{T}-{spec or 'full'}"] = {
            "T": T, "kind": kind, "spec": spec,
            "base_betas": _np(ref.gaussian_diffusion.get_named_beta_schedule(kind, T)),
            "x0": x0.half(), "noise": noise.half(), "t": t, "x_t": d.q_sample(x0, t, noise=noise)}
    return out


# The chain of every network case: the reference's 9-step linear schedule (its below-10-steps branch:
# β from 0.111 to 0.222), respaced to the 5 steps 0, 2, 4, 6, 8. Its ᾱ stays ≥ 0.19, so a step
# amplifies float noise at most ~2.3× (with 1000 steps a random UNet's x̂₀ = x_t/√ᾱ amplifies it ~300×
# per step, and the two implementations' float noise alone decides the result).
SAMPLER_T, SAMPLER_SPEC = 9, "5"
# A case is kept only if the reference's own result moves by at most this much when its input moves
# by 1e-6 or its UNet's output by as much as ours and the reference's differ (see `sensitivity`); the
# next seed otherwise. Float noise passed on linearly stays below these; a ReLU kink does not.
CONDITIONING = {"step": 1e-5, "chain": 3e-5}
GUIDE_TASK = dict(classes_per_task=2, task_id=2)  # current task: classes 4, 5; old: 0-3; seen: 0-5
# per-sample guidance scale ranges: single steps (guided by ResNet-18) at the reference commands' scales;
# whole chains (guided by SmoothClassifier) larger, so that the last step's guided x̂₀ leaves [-1, 1]
STEP_SCALES, CHAIN_SCALES = (0.2, 1.0), (1.0, 8.0)


class _Recorder:
    """Stands in for the reference's model: calls it and keeps the first input it was given."""

    def __init__(self, model):
        self.model, self.first = model, None

    def __call__(self, x, t, **kw):
        if self.first is None:
            self.first = x.detach().clone()
        return self.model(x, t, **kw)


class _SamplerCapture:
    """Stands in for the diffusion handed to TrainLoop._sample_examples: keeps the keyword arguments
    of the sample loop it is asked for (cond_fn, model_kwargs); runs the real loop unless `dry`."""

    def __init__(self, diffusion, dry: bool):
        self.diffusion, self.dry, self.kwargs = diffusion, dry, None

    def _loop(self, name, model, shape, **kw):
        self.kwargs = kw
        if self.dry:
            return torch.zeros(shape)
        return getattr(self.diffusion, name)(model, shape, **kw)

    def ddim_sample_loop(self, model, shape, **kw):
        return self._loop("ddim_sample_loop", model, shape, **kw)

    def p_sample_loop(self, model, shape, **kw):
        return self._loop("p_sample_loop", model, shape, **kw)


def reference_sampling(ref, model, classifier, prev_classifier, *, target: str, n: int, seed: int, use_ddim: bool,
                       diffusion, dry: bool, image_size: int, n_classes: int, scales: tuple[float, float]) -> dict:
    """Run the reference's TrainLoop._sample_examples (on a stub `self`) as its classifier phase does
    for task GUIDE_TASK: the replay of the old classes, guided "new" (GUIDE: guid_to_new_classes) or
    "old" (DDGR: use_old_grad), scales U[scales]. Returns the images, labels, scales, start noise and
    the cond_fn it built."""
    cpt, task = GUIDE_TASK["classes_per_task"], GUIDE_TASK["task_id"]
    max_class = (task + 1) * cpt - 1
    lo, hi = scales
    me = SimpleNamespace(
        max_class=max_class, disjoint_classifier=classifier, prev_disjoint_classifier=prev_classifier,
        train_noised_classifier=False, trim_logits=True, classes_per_task=cpt, guid_to_new_classes=True,
        params=SimpleNamespace(negate_old_grad=False, clip_denoised=True),
        classifier_scale_min_new=lo, classifier_scale_max_new=hi, classifier_scale_min_old=lo,
        classifier_scale_max_old=hi, use_ddim=use_ddim, prev_ddp_model=_Recorder(model), in_channels=3,
        image_size=image_size, n_classes=n_classes)
    capture = _SamplerCapture(diffusion, dry)
    torch.manual_seed(seed)
    np.random.seed(seed)
    images, labels, _ = ref.train_util.TrainLoop._sample_examples(
        me, n, n, task * cpt, capture, use_old_grad=target == "old", use_new_grad=target == "new")
    cond_fn = capture.kwargs["cond_fn"]
    cells = dict(zip(cond_fn.__code__.co_freevars, cond_fn.__closure__))  # some cells stay empty
    scales = cells["classfier_scale_vec_new" if target == "new" else "classfier_scale_vec_old"].cell_contents
    return {"images": images.detach(), "labels": labels.argmax(1), "scales": scales.detach().clone(),
            "noise": me.prev_ddp_model.first, "cond_fn": cond_fn, "y": capture.kwargs["model_kwargs"]["y"]}


def draw(shape, g: torch.Generator, clamp: bool = False) -> torch.Tensor:
    """N(0, 1) values rounded to float16 (so the fixture stores them as float16, exactly), as float32."""
    x = torch.randn(shape, generator=g)
    return (x.clamp(-1, 1) if clamp else x).half().float()


# which single steps and chains each UNet config gets: (sampler, target, k)
STEPS = {"cifar10": [(s, tg, k) for k in (3, 0) for s in ("ddim", "ddpm") for tg in ("none", "new", "old")
                     if not (s == "ddpm" and k == 0)],
         "imagenet100": [(s, tg, k) for k in (3, 0) for s in ("ddim", "ddpm") for tg in ("none", "new", "old")
                         if not (s == "ddpm" and k == 0)],
         "add_time_learned": [("ddim", "none", 3), ("ddim", "new", 3)]}
CHAINS = {"cifar10": [("ddim", "new"), ("ddim", "old"), ("ddpm", "new")], "imagenet100": [("ddim", "new")],
          "add_time_learned": []}


class _Jitter:
    """The reference's UNet with N(0, scale²) added to its output: scale is how far the two
    implementations' ε differ on the forward case (`rounding`, 2e-6 to 5e-6 here)."""

    def __init__(self, model, seed: int, scale: float):
        self.model, self.g, self.scale = model, torch.Generator().manual_seed(seed), scale

    def __call__(self, x, t, **kw):
        out = self.model(x, t, **kw)
        return out + self.scale * torch.randn(out.shape, generator=self.g)


def sensitivity(run, x: torch.Tensor, model, rounding: float, repeats: int = 3) -> tuple[torch.Tensor, float]:
    """run(x, model), and how far it moves at most when x moves by 1e-6 or the network's output by
    `rounding` (Gaussian, fixed seeds). The guiding ResNet's ReLUs make its input gradient jump when x̂₀
    moves by float noise, so some inputs are chaotic; those are not used."""
    base = run(x.clone(), model)
    g = torch.Generator().manual_seed(99)
    moved = [run(x + 1e-6 * torch.randn(x.shape, generator=g), model) for _ in range(repeats)]
    moved += [run(x.clone(), _Jitter(model, 100 + i, rounding)) for i in range(repeats)]
    return base, max(float((m - base).abs().max()) for m in moved)


def attempts(hint: int, limit: int = 40):
    """Attempt numbers to try: the one that worked when the fixture was last made, then the rest."""
    return [hint] + [a for a in range(1, limit + 1) if a != hint]


# the attempts that gave well-conditioned inputs when the fixture was made (tried first, so a rerun
# is quick; any other attempt that passes the check is as good)
STEP_HINTS = {"step-cifar10-ddim-new-t3": 3, "step-cifar10-ddpm-new-t3": 3, "step-imagenet100-ddim-new-t3": 11,
              "step-imagenet100-ddim-old-t3": 7, "step-imagenet100-ddpm-new-t3": 11, "step-imagenet100-ddpm-old-t3": 7,
              "step-add_time_learned-ddim-new-t3": 2}
CHAIN_HINTS: dict[str, int] = {}


def well_conditioned(key: str, draw_input, run, model, rounding: float):
    """The first input whose result is stable (`sensitivity` ≤ CONDITIONING["step"]): (input,
    run(input), sensitivity, attempt). draw_input(attempt) draws the input of an attempt."""
    # an unguided step moves by about 1.6 × the UNets' rounding however tame its input (linear in ε), and
    # that rounding is CPU-dependent (2e-6 to 5e-6 on Zen 4, 6.4e-6 on an Intel Xeon with AMX): allow
    # twice it, up to 1.5e-5 — still below the test's float32 atol (2e-5), so a kept case is reproducible
    allowed = min(max(CONDITIONING["step"], 2 * rounding), 1.5e-5)
    seen = []
    for attempt in attempts(STEP_HINTS.get(key, 1)):
        x = draw_input(attempt)
        out, sens = sensitivity(run, x, model, rounding)
        if sens <= allowed:
            return x, out, sens, attempt
        seen.append(sens)
    raise RuntimeError(f"{key}: no well-conditioned input in 40 draws (sensitivity {min(seen):.3g} at best, "
                       f"allowed {allowed:.3g}; the UNets' rounding here {rounding:.3g})")


def case_networks(ref, our_resnet18) -> tuple[dict, dict]:
    """(d)-(f) for every UNET_CONFIGS entry, (g) logits: the networks, their outputs, training losses,
    single sampler steps and whole guided chains. Inputs are stored as float16 (drawn so), outputs
    as the reference's float32."""
    nets, cases = {}, {}
    clf_seed, prev_seed = 101, 102
    n_classes = 10
    ours_clf, ours_prev = our_resnet18(n_classes), our_resnet18(n_classes)
    clf_state, prev_state = seeded_state(ours_clf, clf_seed), seeded_state(ours_prev, prev_seed)
    clf, prev = ref_resnet18(ref, n_classes), ref_resnet18(ref, n_classes)
    nets["resnet18"] = {"seed": clf_seed, "fingerprint": fingerprint(clf_state), "num_classes": n_classes,
                        **load_mapped(clf, clf_state, resnet_key_to_reference)}
    nets["resnet18_prev"] = {"seed": prev_seed, "fingerprint": fingerprint(prev_state), "num_classes": n_classes,
                             **load_mapped(prev, prev_state, resnet_key_to_reference)}
    clf.eval(), prev.eval()
    smooth = {}
    for label, seed in (("smooth", 103), ("smooth_prev", 104)):
        net = SmoothClassifier(n_classes)
        state = seeded_state(net, seed)
        net.load_state_dict(state)
        smooth[label] = net.eval()
        nets[label] = {"seed": seed, "fingerprint": fingerprint(state), "num_classes": n_classes, "keys": len(state)}

    base_betas = _np(ref.gaussian_diffusion.get_named_beta_schedule("linear", SAMPLER_T))
    full = ref_diffusion(ref, SAMPLER_T, "linear")
    spaced = ref_diffusion(ref, SAMPLER_T, "linear", SAMPLER_SPEC)
    num_old = GUIDE_TASK["task_id"] * GUIDE_TASK["classes_per_task"]
    g = torch.Generator().manual_seed(7)
    for ci, (name, cfg) in enumerate(UNET_CONFIGS.items()):
        seed = 200 + ci
        ours = our_unet(cfg)
        state = seeded_state(ours, seed)
        model = ref_unet(ref, cfg)
        nets[f"unet-{name}"] = {"seed": seed, "config": cfg, "fingerprint": fingerprint(state),
                                **load_mapped(model, state, unet_key_to_reference)}
        model.eval()
        s = cfg["image_size"]
        x = draw((4, 3, s, s), g)
        y = torch.tensor([0, 3, 5, 9])
        t = torch.tensor([0, 7, 25, 49])
        with torch.no_grad():
            out = model(x, t, y=y)
            ours.load_state_dict(state)
            rounding = max(float((ours.eval()(x, t, y) - out).abs().max()), 1e-6)
        nets[f"unet-{name}"]["rounding"] = rounding
        cases[f"forward-{name}"] = {"net": f"unet-{name}", "x": x.half(), "t": t, "y": y, "out": out}

        # (d) training loss: t and noise as our epsilon_loss draws them from a generator seeded `seed`
        x0 = draw((4, 3, s, s), g, clamp=True)
        for label, diff in (("full", full), (SAMPLER_SPEC, spaced)):
            lseed = 300 + ci
            lg = torch.Generator().manual_seed(lseed)
            tt = torch.randint(0, diff.num_timesteps, (4,), generator=lg)
            noise = torch.randn(x0.shape, generator=lg)
            model.train()
            with torch.no_grad():
                terms, _ = diff.training_losses(model, x0, tt, task_id=0, model_kwargs={"y": y}, noise=noise)
            model.eval()
            cases[f"loss-{name}-{label}"] = {"net": f"unet-{name}", "base_betas": base_betas, "spec": label,
                                             "x0": x0.half(), "y": y, "seed": lseed, "t": tt,
                                             "noise_sum": float(noise.double().sum()),
                                             "per_sample": terms["loss"], "loss": terms["loss"].mean()}

        # (e)/(f) single steps on the 5-step chain, at index 3 (a middle step) and 0 (the last):
        # the reference's own ddim_sample / p_sample, with the cond_fn its replay builds
        n = 4
        labels = torch.tensor([0, 1, 2, 3])
        cond = {tg: reference_sampling(ref, model, clf, prev, target=tg, n=n, seed=400, use_ddim=True,
                                       diffusion=spaced, dry=True, image_size=s, n_classes=n_classes,
                                       scales=STEP_SCALES)
                for tg in ("new", "old")}
        for sampler, target, k in STEPS[name]:
            step_seed = 500 + k
            fn = cond[target]["cond_fn"] if target != "none" else None
            tk = torch.full((n,), k)
            step = spaced.ddim_sample if sampler == "ddim" else spaced.p_sample

            def run(x, net):
                xin = x.clone().requires_grad_(fn is not None)
                torch.manual_seed(step_seed)  # p_sample's noise: th.randn_like
                with torch.set_grad_enabled(fn is not None):
                    return step(net, xin, tk, clip_denoised=True, cond_fn=fn, model_kwargs={"y": labels})[
                        "sample"].detach()

            key = f"step-{name}-{sampler}-{target}-t{k}"
            x, out, sens, tries = well_conditioned(
                key, lambda a: draw((n, 3, s, s), torch.Generator().manual_seed(1000 * (ci + 1) + 100 * k + a)), run,
                model, rounding)
            cases[key] = {
                "net": f"unet-{name}", "base_betas": base_betas, "spec": SAMPLER_SPEC, "sampler": sampler,
                "target": target, "classifiers": ["resnet18", "resnet18_prev"], "k": k, "x": x.half(), "y": labels,
                "noise_seed": step_seed,
                "scales": cond[target]["scales"] if target != "none" else torch.zeros(n), "sample": out,
                "conditioning": sens, "tries": tries}

        # (f) whole guided chains, exactly as the reference's classifier phase draws replay
        for sampler, target in CHAINS[name]:
            key = f"chain-{name}-{sampler}-{target}"
            for tries in attempts(CHAIN_HINTS.get(key, 1)):
                seed = 600 + 100 * ci + tries
                r = reference_sampling(ref, model, smooth["smooth"], smooth["smooth_prev"], target=target, n=n,
                                       seed=seed, use_ddim=sampler == "ddim", diffusion=spaced, dry=False, image_size=s,
                                       n_classes=n_classes, scales=CHAIN_SCALES)
                check = torch.Generator().manual_seed(seed)
                assert torch.equal(torch.randint(0, num_old, (n,), generator=check), r["labels"]), \
                    "labels differ from a seeded draw"
                assert torch.equal(torch.randn((n, 3, s, s), generator=check), r["noise"]), "noise draw differs"
                loop = spaced.ddim_sample_loop if sampler == "ddim" else spaced.p_sample_loop

                def rerun(noise, net):
                    torch.manual_seed(seed)  # the draws before the chain, then p_sample's per-step noise
                    torch.randint(0, num_old, (n,)), torch.randn((n, 3, s, s))
                    return loop(net, (n, 3, s, s), noise=noise, clip_denoised=True, model_kwargs={"y": r["y"]},
                                cond_fn=r["cond_fn"], device=torch.device("cpu"), compute_grads=True).detach()

                again, sens = sensitivity(rerun, r["noise"], model, rounding, repeats=2)
                assert torch.equal(again, r["images"]), "the chain is not a function of its noise"
                if sens <= CONDITIONING["chain"]:
                    break
            else:
                raise RuntimeError(f"no well-conditioned chain for {name} {sampler} {target} in 40 seeds")
            cases[key] = {
                "net": f"unet-{name}", "base_betas": base_betas, "spec": SAMPLER_SPEC, "sampler": sampler,
                "target": target, "classifiers": ["smooth", "smooth_prev"], "seed": seed, "labels": r["labels"],
                "noise_sum": float(r["noise"].double().sum()),
                "scales": r["scales"], "images": r["images"], "conditioning": sens, "tries": tries,
                "outside_unit": float((r["images"].abs() - 1).clamp(min=0).max())}

    # (g) classifier logits, eval and train mode
    xc = draw((8, 3, 32, 32), g)
    with torch.no_grad():
        cases["logits-eval"] = {"net": "resnet18", "mode": "eval", "x": xc.half(), "logits": clf(xc)}
        clf_train = ref_resnet18(ref, n_classes)
        clf_train.load_state_dict(clf.state_dict())
        clf_train.train()
        cases["logits-train"] = {"net": "resnet18", "mode": "train", "x": xc.half(), "logits": clf_train(xc)}
    return nets, cases


def case_accuracy(ref, clf) -> dict:
    """(g) calculate_accuracy_with_classifier, one loader per task, as scripts/image_train.py validates."""
    g = torch.Generator().manual_seed(13)
    x = draw((48, 3, 16, 16), g)
    with torch.no_grad():
        logits = clf.eval()(x)
    out = {}
    for label, tasks in (("2-of-5-tasks", [[0, 1], [2, 3]]),
                         ("5-of-5-tasks", [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]])):
        seen = 1 + max(max(c) for c in tasks)
        # labels: half the images get the class a seen-classes argmax picks, half a random seen class
        pick = logits[:, :seen].argmax(1)
        rand = torch.randint(0, seen, (48,), generator=g)
        y = torch.where(torch.arange(48) % 2 == 0, pick, rand)
        accs = []
        for classes in tasks:
            mask = torch.isin(y, torch.tensor(classes))
            xs, ys = x[mask], torch.eye(10)[y[mask]]
            half = len(xs) // 2
            loader = [(xs[:half], {"y": ys[:half]}), (xs[half:], {"y": ys[half:]})]
            with contextlib.redirect_stdout(io.StringIO()):
                r = ref.validation.calculate_accuracy_with_classifier(clf, 0, loader, torch.device("cpu"),
                                                                      max_class=seen - 1)
            accs.append(float(r["accuracy"]["test"]))
        out[label] = {"x": x.half(), "y": y, "tasks": tasks, "num_seen": seen, "accuracy": accs,
                      "argmax_all_outside_seen": int((logits.argmax(1) >= seen).sum())}
    return out


class _OneHotSet(torch.utils.data.Dataset):
    def __init__(self, n, n_classes):
        self.n, self.n_classes = n, n_classes

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return torch.zeros(1, 2, 2), {"y": torch.eye(self.n_classes)[i % self.n_classes]}


class _StubClassifier(nn.Module):
    def __init__(self, n_classes):
        super().__init__()
        self.fc = nn.Linear(4, n_classes)

    def forward(self, x, t=None):
        return self.fc(x.flatten(1))


def reference_classifier_loop(ref, *, task_id: int, batch_size: int, num_steps: int, data_len: int,
                              n_classes: int, classes_per_task: int, init_lr: float = 0.1, lr: float = 0.05) -> dict:
    """Drive the reference's TrainLoop.run_loop (classifier phase) for `num_steps` steps with a stub
    classifier and a stub replay generator; its real batches come from the reference's own
    GenerativeReplayDisjointClassifierGuidance.get_data_for_task. Returns, per step, the real images
    taken, the replay images asked for and the learning rate the optimiser stepped with.
    num_batches_per_epoch is set as TrainLoop.__init__ sets it: len(data) // batch_size."""
    tu = ref.train_util
    data = _OneHotSet(data_len, n_classes)
    yielder, _, _ = ref.gr_guidance.GenerativeReplayDisjointClassifierGuidance(
        SimpleNamespace(batch_size=batch_size)).get_data_for_task(data, task_id, None,
                                                                  generator=torch.Generator().manual_seed(0))
    real, asked, lrs = [], [], []

    def real_batches():
        for xb, cond in yielder:
            real.append(len(xb))
            yield xb, cond

    def generate_examples(task, n, **kw):
        asked.append(n)
        labels = torch.randint(0, (task + 1) * classes_per_task, (n,))
        return torch.zeros(n, 1, 2, 2), torch.eye(n_classes)[labels], None

    clf = _StubClassifier(n_classes)
    opt = torch.optim.SGD(clf.parameters(), lr=init_lr if task_id == 0 else lr, momentum=0.9)
    trainer = SimpleNamespace(zero_grad=opt.zero_grad, backward=lambda loss: loss.backward(),
                              optimize=lambda o: (lrs.append(o.param_groups[0]["lr"]), o.step()))
    loop = tu.TrainLoop.__new__(tu.TrainLoop)
    loop.__dict__.update(
        step=0, num_steps=num_steps, task_id=task_id, classifier_first_task_dir=None, disjoint_classifier=clf,
        disjoint_classifier_optimizer=opt, mp_trainer_classifier=trainer, num_batches_per_epoch=data_len // batch_size,
        params=SimpleNamespace(classifier_lr=lr, classifier_init_lr=init_lr), data_yielder=real_batches(),
        guid_generation_interval=1, use_old_grad=False, use_new_grad=True, log_interval=10**9,
        classes_per_task=classes_per_task, batch_size=batch_size, microbatch=batch_size,
        train_transform_classifier=None, train_noised_classifier=False, max_class=(task_id + 1) * classes_per_task - 1,
        global_steps_before=0, diffusion_pretrained_dir="(skip the diffusion phase)",
        generate_examples=generate_examples)
    noop = lambda *a, **k: None  # noqa: E731
    with patched(tu, wandb=SimpleNamespace(log=noop), save_model=noop), \
            patched(tu.logger, log_generated_examples=noop), contextlib.redirect_stdout(io.StringIO()):
        loop.run_loop()
    return {"real": real, "replay": asked, "lr": lrs}


def case_replay_split(ref) -> dict:
    """(h) real and replay images per classifier step, for every task of 5 and 10 tasks."""
    out = {}
    for B in (64, 100, 128, 256):
        for n_tasks in (5, 10):
            for t in range(n_tasks):
                r = reference_classifier_loop(ref, task_id=t, batch_size=B, num_steps=1, data_len=B,
                                              n_classes=2 * n_tasks, classes_per_task=2)
                out[f"B{B}-T{n_tasks}-t{t}"] = {"B": B, "tasks": n_tasks, "t": t, "real": r["real"][0],
                                                "replay": r["replay"][0] if r["replay"] else 0}
    return out


def case_lr_schedule(ref) -> dict:
    """The classifier's learning rate per step (set_annealed_lr at the reference's epoch boundaries)."""
    out = {}
    for t, lr in ((0, 0.1), (1, 0.05)):
        r = reference_classifier_loop(ref, task_id=t, batch_size=8, num_steps=12, data_len=24, n_classes=10,
                                      classes_per_task=2, init_lr=0.1, lr=0.05)
        out[f"task{t}"] = {"task": t, "base_lr": lr, "steps": 12, "batch_size": 8, "data_len": 24, "lr": r["lr"]}
    return out


def _capture_cifar10_transforms(ref):
    """base.CIFAR10 builds its kornia pipelines, then opens the dataset (downloading it): stop it
    there and read the pipelines off its frame."""
    import torchvision

    class _Stop(Exception):
        pass

    def stop(*a, **k):
        raise _Stop

    with patched(torchvision.datasets, CIFAR10=stop):
        try:
            ref.base.CIFAR10("/nonexistent", train_aug=True, classifier_augmentation=True)
        except _Stop as e:
            tb = e.__traceback__
            while tb is not None and tb.tb_frame.f_code.co_name != "CIFAR10":
                tb = tb.tb_next
            frame = tb.tb_frame.f_locals
            return frame["train_transform_clf"], frame["train_transform_diff"]
    raise RuntimeError("reference CIFAR10() did not open its dataset")


# How each colour-jitter implementation changes pixels (from kornia 0.7.1's ColorJiggle.apply_transform
# and torchvision's functional adjust_*): the parameters alone do not say it.
JITTER_SEMANTICS = {  # keyed apart from the numeric ranges ("brightness": [lo, hi]) they describe
    "kornia.ColorJiggle": {"brightness_op": "add factor-1", "contrast_op": "multiply pixels by factor",
                           "saturation_op": "scale HSV saturation", "order": "one permutation per batch"},
    "kornia.ColorJitter": {"brightness_op": "multiply by factor", "contrast_op": "blend with grey mean",
                           "saturation_op": "blend with greyscale", "order": "one permutation per batch"},
    "torchvision.ColorJitter": {"brightness_op": "multiply by factor", "contrast_op": "blend with grey mean",
                                "saturation_op": "blend with greyscale", "order": "one permutation per image"},
}


def kornia_op_facts(op) -> dict:
    name = type(op).__name__
    gen = getattr(op, "_param_generator", None)
    if name == "RandomCrop":
        return {"op": "crop", "p": float(op.p), "size": list(op.flags["size"]), "padding": int(op.flags["padding"]),
                "fill": float(op.flags["fill"]), "padding_mode": op.flags["padding_mode"]}
    if name == "RandomRotation":
        d = gen.sampler_dict["degrees"]
        return {"op": "rotation", "p": float(op.p), "degrees": [float(d.low), float(d.high)],
                "interpolation": op.flags["resample"].name.lower(), "fill": 0.0}
    if name == "RandomHorizontalFlip":
        return {"op": "hflip", "p": float(op.p)}
    if name in ("ColorJiggle", "ColorJitter"):
        return {"op": "color_jitter", "p": float(op.p), "brightness": [1 - gen.brightness, 1 + gen.brightness],
                "contrast": [1 - gen.contrast, 1 + gen.contrast],
                "saturation": [1 - gen.saturation, 1 + gen.saturation],
                "hue": [-gen.hue, gen.hue], **JITTER_SEMANTICS[f"kornia.{name}"]}
    if name == "RandomErasing":
        return {"op": "erasing", "p": float(op.p), "scale": [float(v) for v in gen.scale],
                "ratio": [float(v) for v in gen.ratio], "value": float(gen.value),
                "ratio_draw": "U[r0, 1] or U[1, r1], each half the time"}
    if name in ("Normalize", "Denormalize"):
        return {"op": name.lower(), "mean": op.flags["mean"].tolist(), "std": op.flags["std"].tolist()}
    raise ValueError(f"unknown kornia op {name}")


AUG_STATS_N = 1024


def aug_statistics(x: torch.Tensor, y: torch.Tensor) -> dict:
    """Statistics of an augmented batch y of x (both in [-1, 1]), each aimed at one op, with its
    standard error: the share of images whose four corner pixels are all black (only a rotation
    blackens all four: padding blackens two at most, erasing cannot reach all four); the mean share
    of black pixels in the central 16×16 (only erasing reaches it); and the spread over images of
    the central region's mean change (the colour jitter's brightness/contrast), over the images
    with nothing erased there."""
    x01, y01 = (x + 1) / 2, (y + 1) / 2
    n, c = len(y01), slice(8, 24)
    corners = torch.stack([y01[:, :, 0, 0], y01[:, :, 0, -1], y01[:, :, -1, 0], y01[:, :, -1, -1]], 1)
    corner = (corners == 0).flatten(1).all(1).float()
    centre = (y01[:, :, c, c] == 0).float().flatten(1).mean(1)
    keep = centre == 0
    shift = (y01[:, :, c, c].flatten(1).mean(1) - x01[:, :, c, c].flatten(1).mean(1))[keep]
    p = float(corner.mean())
    return {"corners_black": [p, math.sqrt(p * (1 - p) / n)],
            "centre_black_fraction": [float(centre.mean()), float(centre.std()) / math.sqrt(n)],
            "centre_shift_std": [float(shift.std()), float(shift.std()) / math.sqrt(2 * (len(shift) - 1))]}


def aug_input(n: int = AUG_STATS_N) -> torch.Tensor:
    """A fixed batch in [-1, 1]: smooth random images kept away from black, so that an exact 0 after
    augmentation comes from padding, rotation or erasing only."""
    g = torch.Generator().manual_seed(21)
    low = torch.rand(n, 3, 4, 4, generator=g)
    img = torch.nn.functional.interpolate(low, size=(32, 32), mode="bilinear", align_corners=False)
    return (0.25 + 0.5 * img) * 2 - 1


def case_augmentation(ref) -> dict:
    """(i) the classifier's and the diffusion model's augmentation in base.CIFAR10: every op's
    parameters, and output statistics over a fixed batch (the reference's randomness: torch seed 0)."""
    clf_aug, diff_aug = _capture_cifar10_transforms(ref)
    ops = [kornia_op_facts(op) for op in clf_aug.children()]
    x = aug_input()
    torch.manual_seed(0)
    with torch.no_grad():
        y = clf_aug(x)
    return {"classifier": {"ops": ops, "stats": aug_statistics(x, y), "n": AUG_STATS_N},
            "diffusion": {"ops": [kornia_op_facts(op) for op in diff_aug.children()]}}


def case_imagenet_preprocessing(ref) -> dict:
    """ImageNet100: the per-image transform base.ImageNet100 hands ImageFolder, on one fixed image."""
    import torchvision
    from PIL import Image

    class _Stop(Exception):
        pass

    seen = {}

    def stop(*a, transform=None, **k):
        seen["transform"] = transform
        raise _Stop

    with patched(torchvision.datasets, ImageFolder=stop), contextlib.redirect_stdout(io.StringIO()):
        try:
            ref.base.ImageNet100("/nonexistent-root")
        except _Stop:
            pass
    g = torch.Generator().manual_seed(31)
    pixels = torch.randint(0, 256, (90, 110, 3), generator=g, dtype=torch.uint8)
    out = seen["transform"](Image.fromarray(pixels.numpy(), "RGB"))
    out_uint8 = torch.round((out + 1) * 127.5).to(torch.uint8)
    assert torch.equal((out_uint8.float() / 255 - 0.5) / 0.5, out), "ToTensor + Normalize of uint8 pixels"
    return {"image_hwc": pixels, "out_uint8": out_uint8,
            "transforms": [repr(t) for t in seen["transform"].transforms],
            "class_order": "sorted folder names (torchvision ImageFolder)"}


def case_metrics(ref) -> dict:
    """results_to_log: average accuracy and forgetting after every task, from one accuracy matrix."""
    A = torch.tensor([[0.91, 0.62, 0.55, 0.40], [0.0, 0.88, 0.71, 0.52], [0.0, 0.0, 0.93, 0.66],
                      [0.0, 0.0, 0.0, 0.95]], dtype=torch.float64)
    test, train = OrderedDict(), OrderedDict()
    logs = []
    for task in range(4):
        test[task], train[task] = OrderedDict(), OrderedDict()
        for j in range(task + 1):
            test[j][task] = float(A[j, task])
            train[j][task] = float(A[j, task])
        got = {}
        with patched(ref.script_util, wandb_safe_log=lambda d, step=None: got.update(d)):
            ref.script_util.results_to_log(test, train, validation_time=0.0, step=task, task_id=task)
        logs.append({"avg_accuracy": got["test/avg_accuracy"], "avg_forgetting": got["test/avg_forgetting"]})
    return {"A": A, "after_task": logs}


def case_ema(ref) -> dict:
    g = torch.Generator().manual_seed(41)
    a, b = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    target = [a.clone()]
    ref.nn.update_ema(target, [b], rate=0.99)
    return {"ema": a, "live": b, "rate": 0.99, "out": target[0]}


def case_full_size_mapping(ref, our_resnet18) -> dict:
    """The state-dict mappings over the full-size networks (built on the meta device: no weights)."""
    out = {}
    with torch.device("meta"):
        for name, cfg in FULL_UNET_CONFIGS.items():
            theirs, ours = ref_unet(ref, cfg), our_unet(cfg)
            out[name] = _mapping_facts(theirs, ours, unet_key_to_reference) | {"config": cfg}
        for n in (10, 100):
            out[f"resnet18-{n}"] = _mapping_facts(ref_resnet18(ref, n), our_resnet18(n), resnet_key_to_reference) | {
                "num_classes": n}
    return out


def _mapping_facts(theirs: nn.Module, ours: nn.Module, rename) -> dict:
    t, o = theirs.state_dict(), ours.state_dict()
    mapped = {rename(k): v for k, v in o.items()}
    return {"ref_params": sum(p.numel() for p in theirs.parameters()), "ref_keys": len(t),
            "exact": set(mapped) == set(t) and all(mapped[k].shape == t[k].shape for k in t)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ref", type=Path, required=True, help="a checkout (work tree) of cywinski/guide")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--ref-commit", help="the reference commit, when --ref has no .git (a `git archive` export)")
    args = ap.parse_args()
    args.ref, args.out = args.ref.resolve(), args.out.resolve()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))
    from guide.models import resnet18 as our_resnet18  # ours, before the reference's `guide` replaces it

    ref = load_reference(args.ref)
    commit = args.ref_commit
    if commit is None and (args.ref / ".git").exists():
        import subprocess

        commit = subprocess.run(["git", "-C", str(args.ref), "rev-parse", "HEAD"], capture_output=True,
                                text=True).stdout.strip() or None
    nets, network_cases = case_networks(ref, our_resnet18)
    clf = ref_resnet18(ref, 10)
    clf.load_state_dict({resnet_key_to_reference(k): v for k, v in seeded_state(our_resnet18(10), 101).items()})
    fixture = {
        "format": FORMAT,
        "meta": {"reference": "cywinski/guide", "reference_commit": commit, "torch": str(torch.__version__),
                 "numpy": np.__version__, "command": "python benchmarks/reference_parity.py --ref PATH"},
        "schedules": case_schedules(ref),
        "respacing": case_respacing(ref),
        "respaced_schedules": case_respaced_schedules(ref),
        "q_sample": case_q_sample(ref),
        "networks": nets,
        "network_cases": network_cases,
        "accuracy": case_accuracy(ref, clf),
        "replay_split": case_replay_split(ref),
        "lr_schedule": case_lr_schedule(ref),
        "augmentation": case_augmentation(ref),
        "imagenet_preprocessing": case_imagenet_preprocessing(ref),
        "metrics": case_metrics(ref),
        "ema": case_ema(ref),
        "full_size_mapping": case_full_size_mapping(ref, our_resnet18),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    torch.save(fixture, tmp)
    tmp.replace(args.out)
    counts = {k: len(v) for k, v in fixture.items() if isinstance(v, dict) and k not in ("meta",)}
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB): {counts}")


if __name__ == "__main__":
    main()
