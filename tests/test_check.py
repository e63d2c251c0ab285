"""`python -m params --check` (and the graph's check-graph stage) refuse at load what a stage would
refuse hours later: each case below passed the check before stages/construct.py, and a property-based
test mutates valid params files at random — what the check accepts, every stage builds; what it
rejects is one line naming the field (a line for each wrong field)."""
from __future__ import annotations

import math
import re

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from guide.continual import mixed_batch_sizes
from params import PRESETS, dump_params, load_params, preset
from params.__main__ import main as params_main
from params.schema import Params
from pipeline.graph import build_graph
from stages.common import Context

# every dotted field of the schema: a rejection must name one of them
def _fields(model, prefix="") -> set[str]:
    out = set()
    for name, info in model.model_fields.items():
        out.add(prefix + name)
        if isinstance(info.annotation, type) and hasattr(info.annotation, "model_fields"):
            out |= _fields(info.annotation, f"{prefix}{name}.")
    return out


FIELDS = _fields(Params)
NAMED = re.compile(r"\b([a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)+)\b")


def check(tmp_path, capsys, raw: dict) -> tuple[int, str, str]:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    capsys.readouterr()
    code = params_main(["--check", str(path)])
    out = capsys.readouterr()
    return code, out.out, out.err


def with_value(raw: dict, dotted: str, value) -> dict:
    raw = yaml.safe_load(yaml.safe_dump(raw))
    *groups, leaf = dotted.split(".")
    node = raw
    for g in groups:
        node = node[g]
    node[leaf] = value
    return raw


def smoke() -> dict:
    return yaml.safe_load(dump_params(preset("smoke")))


@pytest.mark.parametrize("key,value,named", [
    ("guidance.scale", math.inf, "guidance.scale"),  # non-finite numbers
    ("guidance.scale_max", -math.inf, "guidance.scale_max"),
    ("diffusion.lr", math.nan, "diffusion.lr"),
    ("guidance.scale", True, "guidance.scale"),  # YAML booleans where numbers belong
    ("classifier.steps_first", True, "classifier.steps_first"),
    ("diffusion.unet.channel_mult", [True, 2], "diffusion.unet.channel_mult"),
    ("data.root", "README.md", "data.root"),  # a file where the loader reads a folder
    ("data.root", "no/such/folder", "data.root"),
    ("diffusion.unet.num_head_channels", 5, "diffusion.unet"),  # widths the attention heads do not divide
    ("diffusion.unet.attention_resolutions", [3], "diffusion.unet.attention_resolutions"),  # never reached
    ("data.synthetic.image_size", 7, "diffusion.unet"),  # not divisible by 2 ** (levels - 1)
    ("data.synthetic.num_classes", 80, "diffusion.unet"),  # wider than the 1-hot time embedding
    ("classifier.batch_size", 1, "classifier.batch_size"),  # B//(t+1) = 0: no real images, no replay
    ("run.devices", 3, "classifier.batch_size"),  # a global batch 3 processes cannot share
    ("diffusion.num_timesteps", 20, "diffusion.num_timesteps"),  # linear at T = 20: β_T = 1, ᾱ_T = 0, NaN samples
])
def test_check_refuses_what_a_stage_would_refuse_later(tmp_path, capsys, key, value, named):
    raw = with_value(smoke(), key, value)
    if key == "diffusion.unet.num_head_channels":
        raw["diffusion"]["unet"]["attention_resolutions"] = [8]
    if key == "data.synthetic.num_classes":
        raw["data"]["num_tasks"] = 2
    code, out, err = check(tmp_path, capsys, raw)
    assert code == 2 and not out, (out, err)
    assert len(err.strip().splitlines()) == 1 and f": {named}:" in err, err


def test_every_preset_passes_the_check(tmp_path, capsys):
    for name in PRESETS:
        code, out, err = check(tmp_path, capsys, yaml.safe_load(dump_params(preset(name))))
        assert code == 0 and out.strip().endswith(": valid"), (name, err)


# --- the property: mutate the smoke preset's leaves at random -----------------------------------
LEAVES = sorted(k for k in FIELDS if "." in k and not any(
    k.startswith(g) for g in ("data.dataset", "data.root", "data.synthetic", "tracking.", "run.device")))
LEAVES = [k for k in LEAVES if not any(o.startswith(k + ".") for o in FIELDS)]  # leaves, not groups
VALUES = st.one_of(
    st.integers(-2, 40), st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 32, 64, 100, 1000]),
    st.floats(-1, 2), st.sampled_from([math.nan, math.inf, -math.inf, 0.0, 1e-9]), st.booleans(), st.none(),
    st.sampled_from(["", "ddim5", "ddim3", "ddim100", "5", "10,20", "x", "guide", "gr", "finetune", "online",
                     "rounds", "cosine", "ddpm", "resnet18", "add_time_learned", "bf16", "digits", "none"]),
    st.lists(st.sampled_from([0, 1, 2, 3, 4, 8, 16, True]), max_size=4),
)


def builds_in_every_stage(p: Params) -> None:
    """What each stage of `p`'s graph builds, built as the stages build it (stages.common.Context),
    with real tensors: the data (synthetic), the networks with a forward pass, the schedules and
    every batch split."""
    stages = build_graph(p)
    assert stages
    ctx = Context("check", p, 0, 0)
    x, y = ctx.data.train_x[:2], ctx.data.train_y[:2]
    logits = ctx.new_classifier()(x)
    assert logits.shape == (2, p.num_classes)
    if p.generated_replay:
        unet = ctx.new_unet().eval()
        with torch.no_grad():
            assert unet(x, torch.tensor([0, p.diffusion.num_timesteps - 1]), y).shape == x.shape
        schedule = ctx.schedule()
        for spec in (p.diffusion.train_respacing, p.rehearsal.respacing, p.replay.respacing):
            assert schedule.respace(spec).num_steps >= 1
    for t in range(p.data.num_tasks):
        real, replayed = mixed_batch_sizes(p.classifier.batch_size, t, p.generated_replay)
        assert real >= 1 and real + replayed <= p.classifier.batch_size
        assert len(Context("classifier", p, t, 0).tasks[t]) >= 1
    for batch in (p.classifier.batch_size, p.diffusion.batch_size):
        assert batch % p.run.devices == 0


@settings(max_examples=100, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(LEAVES), VALUES), min_size=1, max_size=3))
def test_what_the_check_accepts_builds_in_every_stage_and_what_it_rejects_is_one_line(tmp_path, capsys, changes):
    raw = smoke()
    for key, value in changes:
        raw = with_value(raw, key, value)
    code, out, err = check(tmp_path, capsys, raw)
    if code == 0:
        builds_in_every_stage(load_params(tmp_path / "params.yaml"))
    else:
        assert code == 2 and not out
        lines = err.strip().splitlines()  # one line per wrong field
        assert len(lines) == 1 or len(lines) <= len({k for k, _ in changes}), err
        for line in lines:
            assert FIELDS & set(NAMED.findall(line)), f"names no field: {line}"
