"""Our code against the reference implementation (cywinski/guide), case by case, on the inputs and
outputs `benchmarks/reference_parity.py` recorded in tests/fixtures/reference_parity.pt (rerun it
against a snapshot of the reference to refresh them; its docstring has the command).

Tolerances: float64 schedule arrays atol 1e-12, rtol 0 (measured: ≤ 1.2e-16); float32 tensors out of
the networks and samplers atol 2e-5 + rtol 1e-5 (measured: ≤ 4.5e-6; the two UNets compute attention
differently, a fused kernel here and q, k each scaled by ch^-¼ there); learning rates atol 1e-12;
accuracies and op parameters atol 1e-6; counts and timestep lists exactly. Set GUIDE_PARITY_PRINT=1 (with -s) to
print each case's max |ours − reference|.

A difference found and not yet fixed is recorded as a strict xfail carrying its reason (`KNOWN`,
`known(...)`), so that dict is the executable list of open differences: fixing one turns its xfail
into an XPASS failure, and the mark comes off with the fix. It is empty: every difference the
harness found is fixed (issue 22).
"""
from __future__ import annotations

import functools
import importlib.util
import math
import os
from pathlib import Path

import pytest
import torch

from guide.continual import annealed_lr, evaluate, generate, mixed_batch_sizes
from guide.diffusion import EMA, NoiseSchedule, epsilon_loss, respaced_timesteps
from guide.guidance import ClassGuidance
from guide.samplers import ddim_sample, ddpm_sample

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).parent / "fixtures" / "reference_parity.pt"
F = torch.load(FIXTURE, weights_only=True)

_spec = importlib.util.spec_from_file_location("reference_parity", ROOT / "benchmarks" / "reference_parity.py")
H = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(H)  # the harness's shared helpers (seeded weights, configs); it imports no reference here

SCHED = dict(atol=1e-12, rtol=0.0)
NET = dict(atol=2e-5, rtol=1e-5)

KNOWN: dict[str, str] = {}  # reason key -> what differs, where (none open)


def known(reason: str):
    return pytest.mark.xfail(strict=True, reason=KNOWN[reason])


def assert_close(got: torch.Tensor, want: torch.Tensor, tol: dict) -> None:
    got, want = torch.as_tensor(got), torch.as_tensor(want)
    dtype = torch.float64 if want.dtype == torch.float64 else torch.float32
    got, want = got.to(dtype), want.to(dtype)
    assert got.shape == want.shape, (got.shape, want.shape)
    diff = float((got - want).abs().max()) if got.numel() else 0.0
    if os.environ.get("GUIDE_PARITY_PRINT"):
        print(f"PARITY {os.environ.get('PYTEST_CURRENT_TEST', '?').split(' ')[0]} max|Δ|={diff:.3g}")
    torch.testing.assert_close(got, want, **tol)


def params(section: str, marks=lambda key, case: ()):
    return [pytest.param(key, case, id=key, marks=marks(key, case)) for key, case in F[section].items()]


# --- (a) schedules ------------------------------------------------------------------------------

@pytest.mark.parametrize("key,case", [p for p in params("schedules") if p.values[1]["error"] is None])
def test_named_betas(key, case):
    ours = NoiseSchedule.make(case["kind"], case["T"])
    assert_close(ours.betas, case["named_betas"], SCHED)


@pytest.mark.parametrize("key,case", params("schedules"))
def test_schedule_arrays(key, case):
    """ᾱ, ᾱ_prev, the posterior variance and the fixed-large variance of NoiseSchedule.make; where the
    reference refuses the schedule, ours must refuse it too."""
    if case["error"]:
        with pytest.raises((ValueError, AssertionError)):
            NoiseSchedule.make(case["kind"], case["T"])
        return
    ours = NoiseSchedule.make(case["kind"], case["T"])
    for got, name in ((ours.betas, "betas"), (ours.alphas_cumprod, "alphas_cumprod"),
                      (ours.alphas_cumprod_prev, "alphas_cumprod_prev"),
                      (ours.posterior_variance, "posterior_variance"),
                      (ours.model_variance("fixed_large"), "fixed_large_variance")):
        assert_close(got, case[name], SCHED)


@pytest.mark.parametrize("key,case", [p for p in params("schedules") if p.values[1]["error"] is None])
def test_schedule_arrays_from_the_reference_betas(key, case):
    """The same arrays derived by NoiseSchedule from the reference's β: what every later case builds on."""
    ours = NoiseSchedule(case["betas"].clone(), torch.arange(case["T"]))
    for got, name in ((ours.alphas_cumprod, "alphas_cumprod"), (ours.alphas_cumprod_prev, "alphas_cumprod_prev"),
                      (ours.posterior_variance, "posterior_variance"),
                      (ours.model_variance("fixed_large"), "fixed_large_variance")):
        assert_close(got, case[name], SCHED)


# --- (b) respacing ------------------------------------------------------------------------------

@pytest.mark.parametrize("key,case", params("respacing"))
def test_respaced_timesteps(key, case):
    if case["error"]:
        with pytest.raises(ValueError):
            respaced_timesteps(case["T"], case["ours_spec"])
    else:
        assert respaced_timesteps(case["T"], case["ours_spec"]) == case["steps"]


@pytest.mark.parametrize("key,case", params("respaced_schedules"))
def test_respaced_schedule(key, case):
    ours = NoiseSchedule(case["base_betas"].clone(), torch.arange(len(case["base_betas"]))).respace(case["spec"])
    assert ours.timestep_map.tolist() == case["timestep_map"].tolist()
    assert_close(ours.betas, case["betas"], SCHED)
    assert_close(ours.alphas_cumprod, case["alphas_cumprod"], SCHED)


# --- (c) q_sample -------------------------------------------------------------------------------

def schedule_of(base_betas: torch.Tensor, spec) -> NoiseSchedule:
    base = NoiseSchedule(base_betas.clone(), torch.arange(len(base_betas)))
    return base.respace(spec) if spec not in ("", "full", None) else base


@pytest.mark.parametrize("key,case", params("q_sample"))
def test_q_sample(key, case):
    ours = schedule_of(case["base_betas"], case["spec"])
    assert_close(ours.q_sample(case["x0"].float(), case["t"], case["noise"].float()), case["x_t"], NET)


@pytest.mark.parametrize("key,case", params("q_sample"))
def test_q_sample_on_our_schedule(key, case):
    ours = NoiseSchedule.make(case["kind"], case["T"])
    ours = ours.respace(case["spec"]) if case["spec"] else ours
    assert_close(ours.q_sample(case["x0"].float(), case["t"], case["noise"].float()), case["x_t"], NET)


# --- networks -----------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def network(name: str) -> torch.nn.Module:
    """Our network `name`, with the weights the reference's copy had (redrawn from the seed)."""
    from guide.models import resnet18

    net = F["networks"][name]
    model = (resnet18(net["num_classes"]) if name.startswith("resnet18") else
             H.SmoothClassifier(net["num_classes"]) if name.startswith("smooth") else H.our_unet(net["config"]))
    state = H.seeded_state(model, net["seed"])
    fp = H.fingerprint(state)
    want = net["fingerprint"]
    assert fp["tensors"] == want["tensors"] and fp["head"] == want["head"] and math.isclose(
        fp["sum_abs"], want["sum_abs"], rel_tol=1e-9), \
        "the seeded weights came out differently (torch's RNG?): rerun benchmarks/reference_parity.py"
    model.load_state_dict(state)
    return model.eval()


def cases(prefix: str, marks=lambda key, case: ()):
    return [pytest.param(k, c, id=k, marks=marks(k, c)) for k, c in F["network_cases"].items() if k.startswith(prefix)]


def test_state_dict_mappings_are_one_to_one():
    """Every network the fixture used was loaded key for key (harness: load_mapped, strict)."""
    for name, net in F["networks"].items():
        model = network(name)
        assert len(model.state_dict()) == net["keys"]


@pytest.mark.parametrize("name,facts", list(F["full_size_mapping"].items()), ids=list(F["full_size_mapping"]))
def test_full_size_networks_have_the_reference_parameters(name, facts):
    from guide.models import resnet18

    with torch.device("meta"):
        model = resnet18(facts["num_classes"]) if name.startswith("resnet18") else H.our_unet(facts["config"])
    assert facts["exact"], "the harness found no one-to-one key mapping at full size"
    assert sum(p.numel() for p in model.parameters()) == facts["ref_params"]
    assert len(model.state_dict()) == facts["ref_keys"]


@pytest.mark.parametrize("key,case", cases("forward-"))
def test_unet_forward(key, case):
    with torch.no_grad():
        out = network(case["net"])(case["x"].float(), case["t"], case["y"])
    assert_close(out, case["out"], NET)


# --- (d) the training loss ----------------------------------------------------------------------

@pytest.mark.parametrize("key,case", cases("loss-"))
def test_training_loss(key, case):
    """epsilon_loss draws t, then ε, from its generator: the reference got the same t and ε."""
    schedule = schedule_of(case["base_betas"], case["spec"])
    g = torch.Generator().manual_seed(case["seed"])
    assert torch.equal(torch.randint(0, schedule.num_steps, (len(case["t"]),), generator=g), case["t"])
    assert math.isclose(float(torch.randn(case["x0"].shape, generator=g).double().sum()), case["noise_sum"],
                        rel_tol=1e-9)
    model = network(case["net"]).train()
    try:
        with torch.no_grad():
            loss = epsilon_loss(model, schedule, case["x0"].float(), case["y"],
                                torch.Generator().manual_seed(case["seed"]))
    finally:
        model.eval()
    assert_close(loss, case["loss"], NET)


# --- (e), (f) sampler steps, guided and not -----------------------------------------------------

GUIDE_TASK = H.GUIDE_TASK
NUM_OLD = GUIDE_TASK["task_id"] * GUIDE_TASK["classes_per_task"]
CURRENT = range(NUM_OLD, NUM_OLD + GUIDE_TASK["classes_per_task"])


def guidance(case):
    """The guidance our replay builds for GUIDE_TASK (guide/replay.py replay_guidance): "new" by the
    current classifier over the seen classes toward the current task, "old" by the previous one over
    the old classes toward y; the case names the two classifiers."""
    current, previous = case["classifiers"]
    if case["target"] == "none":
        return None
    if case["target"] == "new":
        return ClassGuidance(network(current), "new", case["scales"], NUM_OLD + len(CURRENT), CURRENT)
    return ClassGuidance(network(previous), "old", case["scales"], NUM_OLD)


class _Next(Exception):
    pass


class _OneStep:
    """Stands in for the network: on its second call — the next step — it keeps the input (the
    first step's result) and stops the sampler."""

    def __init__(self, net):
        self.net, self.calls, self.next_x = net, 0, None

    def __call__(self, x, t, y):
        self.calls += 1
        if self.calls == 2:
            self.next_x = x.detach().clone()
            raise _Next
        return self.net(x, t, y)


def one_step(sampler: str, net, schedule: NoiseSchedule, k: int, x, y, guide, seed: int) -> torch.Tensor:
    """Our sampler's step at index k from x: the schedule cut after index k (ᾱ of the kept indices
    unchanged), run until the network is called for index k − 1."""
    cut = NoiseSchedule(schedule.betas[: k + 1], schedule.timestep_map[: k + 1])
    probe = _OneStep(net)
    fn = ddim_sample if sampler == "ddim" else ddpm_sample
    try:
        return fn(probe, cut, x, y, guidance=guide, clip=True, generator=torch.Generator().manual_seed(seed))
    except _Next:
        return probe.next_x


@pytest.mark.parametrize("key,case", cases("step-"))
def test_sampler_step(key, case):
    schedule = schedule_of(case["base_betas"], case["spec"])
    got = one_step(case["sampler"], network(case["net"]), schedule, case["k"], case["x"].float(), case["y"],
                   guidance(case), case["noise_seed"])
    assert_close(got, case["sample"], NET)


def chain_inputs(case):
    """The labels and start noise the reference drew from torch's seeded generator, drawn alike."""
    g = torch.Generator().manual_seed(case["seed"])
    labels = torch.randint(0, NUM_OLD, (len(case["labels"]),), generator=g)
    assert torch.equal(labels, case["labels"])
    return labels, g


@pytest.mark.parametrize("key,case", cases("chain-"))
def test_guided_chain(key, case):
    """A whole guided chain (5 DDIM or DDPM steps, per-sample scales U[1, 8]) with our sampler, guided
    by the harness's smooth classifier (a ResNet's ReLUs make a whole chain depend on rounding)."""
    net = network(case["net"])
    labels, g = chain_inputs(case)
    noise = torch.randn((len(labels), net.in_channels, net.image_size, net.image_size), generator=g)
    assert math.isclose(float(noise.double().sum()), case["noise_sum"], rel_tol=1e-9)
    fn = ddim_sample if case["sampler"] == "ddim" else ddpm_sample
    got = fn(net, schedule_of(case["base_betas"], case["spec"]), noise, labels,
             guidance=guidance(case), clip=True, generator=g)
    assert_close(got, case["images"], NET)


@pytest.mark.parametrize("key,case", cases("chain-"))
def test_guided_replay_as_generated(key, case):
    """The same chain through guide.continual.generate, which replay and rehearsal call."""
    assert case["outside_unit"] > 10 * NET["atol"], "the reference's replay stays in [-1, 1] here: no test"
    net = network(case["net"])
    labels, g = chain_inputs(case)
    images, _ = generate(net, schedule_of(case["base_betas"], case["spec"]), labels, batch_size=len(labels),
                         sampler=case["sampler"], clip=True, generator=g,
                         guidance_for=lambda yb: guidance(case))
    assert_close(images, case["images"], NET)


# --- (g) the classifier -------------------------------------------------------------------------

@pytest.mark.parametrize("key,case", cases("logits-"))
def test_classifier_logits(key, case):
    from guide.models import resnet18

    net = network(case["net"])
    if case["mode"] == "train":  # batch statistics; on a copy, so the cached eval network keeps its running stats
        copy = resnet18(F["networks"][case["net"]]["num_classes"])
        copy.load_state_dict(net.state_dict())
        net = copy.train()
    with torch.no_grad():
        assert_close(net(case["x"].float()), case["logits"], NET)


@pytest.mark.parametrize("key,case", params("accuracy"))
def test_accuracy(key, case):
    assert case["argmax_all_outside_seen"] > 0 or case["num_seen"] == 10
    got = evaluate(network("resnet18"), case["x"].float(), case["y"], case["tasks"])
    assert_close(torch.tensor(got), torch.tensor(case["accuracy"]), dict(atol=1e-6, rtol=0))


# --- (h) replay / real split --------------------------------------------------------------------

@pytest.mark.parametrize("key,case", params("replay_split"))
def test_replay_split(key, case):
    assert mixed_batch_sizes(case["B"], case["t"], replay=True) == (case["real"], case["replay"])


@pytest.mark.parametrize("key,case", params("lr_schedule"))
def test_classifier_learning_rate_per_step(key, case):
    """What guide.continual.train_classifier sets before each of a task's steps (stages.classifier
    passes epoch_steps = len(task data) // B)."""
    epoch = case["data_len"] // case["batch_size"]
    got = [annealed_lr(case["base_lr"], s, case["steps"], epoch) for s in range(case["steps"])]
    assert_close(torch.tensor(got, dtype=torch.float64), torch.tensor(case["lr"], dtype=torch.float64), SCHED)


# --- (i) augmentation ---------------------------------------------------------------------------

def _op_facts(op) -> dict:
    """One guide.augment op's parameters, in the harness's terms (its kornia_op_facts)."""
    from guide import augment as A

    if isinstance(op, A.Crop):
        return {"op": "crop", "p": op.p, "size": [op.size, op.size], "padding": op.padding, "fill": op.fill,
                "padding_mode": op.padding_mode}
    if isinstance(op, A.Rotation):
        return {"op": "rotation", "p": op.p, "degrees": [-op.degrees, op.degrees], "interpolation": op.interpolation,
                "fill": op.fill}
    if isinstance(op, A.HFlip):
        return {"op": "hflip", "p": op.p}
    if isinstance(op, A.ColorJiggle):
        # as the harness records it: the semantics' keys replace the brightness/contrast/saturation ranges
        return {"op": "color_jitter", "p": op.p, "brightness": [1 - op.brightness, 1 + op.brightness],
                "contrast": [1 - op.contrast, 1 + op.contrast], "saturation": [1 - op.saturation, 1 + op.saturation],
                "hue": [-op.hue, op.hue], **H.JITTER_SEMANTICS["kornia.ColorJiggle"]}
    if isinstance(op, A.Erasing):
        r0, r1 = op.ratio
        return {"op": "erasing", "p": op.p, "scale": list(op.scale), "ratio": [r0, r1], "value": op.value,
                "ratio_draw": "U[r0, 1] or U[1, r1], each half the time" if r0 < 1 < r1 else "U[r0, r1]"}
    raise AssertionError(f"unexpected op {op!r}")


def our_augmentation_ops() -> dict[str, dict]:
    """The parameters of guide.augment's "reference" pipeline, in the harness's terms. The pixel
    semantics each name stands for (kornia's) are tested in tests/test_augment.py."""
    from guide.augment import augmentation_ops

    return {f["op"]: f for f in map(_op_facts, augmentation_ops("reference", 3, 32))}


REF_OPS = {op["op"]: op for op in F["augmentation"]["classifier"]["ops"]}


def test_augmentation_order():
    assert list(our_augmentation_ops()) == [k for k in REF_OPS if k not in ("denormalize", "normalize")]
    assert REF_OPS["denormalize"] | REF_OPS["normalize"] == {"op": "normalize", "mean": [0.5] * 3, "std": [0.5] * 3}


def _assert_facts(ours: dict, theirs: dict) -> None:
    assert set(ours) == set(theirs)
    for k, v in theirs.items():
        if isinstance(v, list):
            assert_close(torch.tensor(ours[k], dtype=torch.float64), torch.tensor(v, dtype=torch.float64),
                         dict(atol=1e-6, rtol=0))
        else:
            assert ours[k] == v, (k, ours[k], v)


@pytest.mark.parametrize("op", ["crop", "rotation", "hflip", "color_jitter", "erasing"])
def test_augmentation_parameters(op):
    _assert_facts(our_augmentation_ops()[op], REF_OPS[op])


def test_diffusion_augmentation():
    """The reference's diffusion-training transform (--train_aug: RandomHorizontalFlip(), p = 0.5 per
    image) against the flip guide.continual.train_diffusion applies (tests/test_augment.py checks
    that train_diffusion uses it and what it does)."""
    from guide.augment import DIFFUSION_HFLIP

    theirs = F["augmentation"]["diffusion"]["ops"]
    assert len(theirs) == 1
    _assert_facts(_op_facts(DIFFUSION_HFLIP), theirs[0])


@functools.lru_cache(maxsize=1)
def our_augmentation_statistics() -> dict:
    from guide.augment import make_augmentation

    x = H.aug_input(F["augmentation"]["classifier"]["n"])
    torch.manual_seed(0)
    return H.aug_statistics(x, make_augmentation("reference", 3, 32)(x))


@pytest.mark.parametrize("stat", ["corners_black", "centre_black_fraction", "centre_shift_std"])
def test_augmentation_output_statistics(stat):
    """Statistics of the harness's fixed batch augmented (torch seed 0), each aimed at one op (see
    the harness's aug_statistics): equal within 4 standard errors. (guide.augment draws in kornia's
    order, so on the harness's torch the two come out equal.)"""
    ours = our_augmentation_statistics()[stat]
    theirs = F["augmentation"]["classifier"]["stats"][stat]
    assert abs(ours[0] - theirs[0]) <= 4 * math.hypot(ours[1], theirs[1]), (ours, theirs)


# --- ImageNet-100 -------------------------------------------------------------------------------

def test_imagenet_preprocessing(tmp_path):
    from PIL import Image

    from guide.data import _load_image, _to_unit_range

    case = F["imagenet_preprocessing"]
    path = tmp_path / "image.png"
    Image.fromarray(case["image_hwc"].numpy(), "RGB").save(path)
    ours = _to_unit_range(_load_image(path, 64)[None])[0]
    theirs = (case["out_uint8"].float() / 255 - 0.5) / 0.5
    assert_close(ours, theirs, dict(atol=1e-6, rtol=0))


def test_imagenet_class_order():
    from guide.data import imagenet100_classes

    assert F["imagenet_preprocessing"]["class_order"].startswith("sorted")
    assert imagenet100_classes() == sorted(imagenet100_classes())


# --- metrics and EMA ----------------------------------------------------------------------------

def test_metrics():
    from guide.metrics import average_incremental_accuracy, final_average_accuracy, forgetting

    case = F["metrics"]
    A, logs = case["A"].numpy(), case["after_task"]
    for task, log in enumerate(logs):
        sub = A[: task + 1, : task + 1]
        assert math.isclose(final_average_accuracy(sub), log["avg_accuracy"], abs_tol=1e-12)
        assert math.isclose(forgetting(sub), log["avg_forgetting"], abs_tol=1e-12)
    assert math.isclose(average_incremental_accuracy(A), sum(x["avg_accuracy"] for x in logs) / len(logs),
                        abs_tol=1e-12)


def test_ema_update():
    case = F["ema"]
    live, shadow = torch.nn.Linear(3, 5, bias=False), torch.nn.Linear(3, 5, bias=False)
    with torch.no_grad():
        shadow.weight.copy_(case["ema"])
        live.weight.copy_(case["live"])
    ema = EMA(shadow, case["rate"])
    ema.update(live)
    assert_close(ema.state_dict()["weight"], case["out"], NET)
