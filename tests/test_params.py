"""Typed params: defaults, presets, and one clear error naming the field for bad input."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from params import PRESETS, ParamsError, dump_params, load_params, params_from_dict, preset
from params.schema import Params

ROOT = Path(__file__).resolve().parents[1]


def _err(raw) -> str:
    with pytest.raises(ParamsError) as e:
        params_from_dict(raw, "params.yaml")
    return str(e.value)


def test_bad_params_name_the_field():
    assert "params.yaml: guidance.scale:" in _err({"guidance": {"scale": -0.5}})
    assert "guidance.sclae: unknown key" in _err({"guidance": {"sclae": 1.0}})
    assert "classifier.steps_first:" in _err({"classifier": {"steps_first": "many"}})
    msg = _err({"data": {"num_tasks": 3}})  # 10 MNIST classes into 3 tasks
    assert "data.num_tasks" in msg and "10 classes" in msg
    assert "replay.rounds" in _err({"replay": {"rounds": 3}, "classifier": {"steps_later": 500}})
    assert "scale_max" in _err({"guidance": {"scale": 1.0, "scale_max": 0.5}})
    assert "diffusion.unet.precision:" in _err({"diffusion": {"unet": {"precision": "fp16"}}})
    # the reference's linear schedule has no valid β for 10 ≤ T < 20 (β_T = 20/T > 1)
    msg = _err({"diffusion": {"num_timesteps": 15}, "rehearsal": {"respacing": ""}, "replay": {"respacing": ""}})
    assert "diffusion.num_timesteps: 15" in msg and "> 1" in msg
    assert params_from_dict({"diffusion": {"num_timesteps": 15, "schedule": "cosine"}, "rehearsal": {"respacing": ""},
                             "replay": {"respacing": ""}}).diffusion.num_timesteps == 15


def test_every_preset_is_valid_and_round_trips():
    for name in PRESETS:
        p = preset(name)
        assert params_from_dict(yaml.safe_load(dump_params(p))) == p


def test_reference_presets_follow_the_reference_table():
    c = preset("cifar10_5")
    assert (c.data.num_tasks, c.diffusion.steps_first, c.diffusion.steps_later, c.rehearsal.per_task) == (5, 100_000, 50_000, 10_000)
    assert (c.replay.respacing, c.guidance.scale, c.classifier.lr_first, c.classifier.lr_later) == ("ddim50", 0.5, 0.1, 0.01)
    assert (c.classifier.steps_first, c.classifier.steps_later, c.classifier.interval) == (5000, 2000, 5)
    assert c.guidance.mode == "online" and c.rehearsal.sampler == "ddpm" and c.rehearsal.respacing == ""
    i = preset("imagenet100_64_5")
    assert (i.diffusion.batch_size, i.diffusion.lr, i.diffusion.unet.model_channels) == (100, 1e-4, 192)
    assert i.diffusion.unet.attention_resolutions == (32, 16, 8) and i.classifier.augmentation == "none"
    assert (i.classifier.batch_size, i.diffusion.train_respacing, i.diffusion.unet.num_head_channels) == (100, "ddim250", 64)
    assert preset("cifar100_10").guidance.scale == 1.0


def test_committed_params_yaml_is_the_default_run_with_every_key():
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    p = load_params(ROOT / "params.yaml")
    assert (p.data.dataset, p.data.num_tasks, p.run.method) == ("mnist5k", 5, "guide")
    assert raw == Params.model_validate(raw).model_dump(mode="json")  # no key left to a default
    assert p.tracking.wandb == "disabled"
    assert p == preset("demo")  # the default run is the demo preset, every key written out
    assert Params() == preset("mnist5k")  # and the schema's defaults are the evidence's preset


def test_every_choice_in_the_schema_is_the_cores_registry():
    from typing import get_args

    from guide.augment import AUGMENTATIONS
    from guide.data import DATASETS, NUM_CLASSES
    from guide.diffusion import SCHEDULES
    from guide.models import CIFAR10_REFERENCE_UNET, CLASSIFIER_ARCHS
    from guide.models.unet import CLASS_COND_KINDS, PRECISIONS
    from guide.samplers import SAMPLERS
    from params import schema

    choices = {(schema.Data, "dataset"): DATASETS, (schema.Diffusion, "schedule"): SCHEDULES,
               (schema.UNetParams, "class_cond"): CLASS_COND_KINDS, (schema.UNetParams, "precision"): PRECISIONS,
               (schema.Sampling, "sampler"): SAMPLERS,
               (schema.Classifier, "arch"): CLASSIFIER_ARCHS, (schema.Classifier, "augmentation"): AUGMENTATIONS}
    for (group, field), registry in choices.items():
        assert get_args(group.model_fields[field].annotation) == tuple(registry), (group.__name__, field)
    assert set(NUM_CLASSES) == set(DATASETS) - {"synthetic"}
    # the reference presets build the reference UNet as guide.models defines it
    unet = preset("cifar10_5").diffusion.unet.model_dump()
    assert unet == {k: v for k, v in CIFAR10_REFERENCE_UNET.items() if k in unet}


def test_cli_check_exits_2_naming_the_field(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("guidance:\n  scale: -1\n")
    r = subprocess.run([sys.executable, "-m", "params", "--check", str(bad)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "guidance.scale" in r.stderr


def test_render_with_bad_params_exits_2_and_writes_nothing(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("data:\n  num_tasks: 3\n")
    out = tmp_path / "dvc.yaml"
    r = subprocess.run([sys.executable, "-m", "pipeline.render", "--params", str(bad), "--output", str(out)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "data.num_tasks" in r.stderr
    assert list(tmp_path.iterdir()) == [bad]


def test_stage_with_bad_params_exits_2_and_writes_nothing(tmp_path):
    (tmp_path / "params.yaml").write_text("run:\n  seed: zero\n")
    r = subprocess.run([sys.executable, "-m", "stages.evaluate", "--task", "0"], capture_output=True, text=True,
                       cwd=tmp_path, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin",
                                                  "OMP_NUM_THREADS": os.environ["OMP_NUM_THREADS"]})
    assert r.returncode == 2 and "run.seed" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


@pytest.mark.parametrize("spec", ["0", "-1", "ddim0", "ddim99999", "ddimabc", "2000"])
def test_a_respacing_that_cannot_sample_is_rejected_at_load(spec):
    msg = _err({"replay": {"respacing": spec}})
    assert msg.startswith(f"params.yaml: replay.respacing: {spec!r}") and "\n" not in msg
    assert "{" not in msg  # the offending value only, not the whole params dict
    assert _err({"rehearsal": {"respacing": spec}}).startswith("params.yaml: rehearsal.respacing:")


def test_an_integer_respacing_is_accepted_as_dvc_passes_it():
    p = params_from_dict({"replay": {"respacing": 250}, "rehearsal": {"respacing": 50}})
    assert (p.replay.respacing, p.rehearsal.respacing) == ("250", "50")


def test_a_cross_field_error_shows_the_values_not_the_whole_params():
    msg = _err({"data": {"num_tasks": 3}, "run": {"seed": 4}})
    assert msg == "params.yaml: data.num_tasks: 10 classes cannot be split into 3 equal tasks"


@pytest.mark.parametrize("text, expected", [
    ("", "empty"), ("run:\n  seed: 1\n  method: gr\n  seed: 2\n", "key 'seed' is given twice, on line 2 and line 4")])
def test_empty_or_duplicate_keys_exit_2_and_write_nothing(tmp_path, text, expected):
    bad = tmp_path / "params.yaml"
    bad.write_text(text)
    for cmd in (["-m", "params", "--check", str(bad)], ["-m", "pipeline.render", "--params", str(bad),
                                                         "--output", str(tmp_path / "dvc.yaml")]):
        r = subprocess.run([sys.executable, *cmd], capture_output=True, text=True, cwd=ROOT)
        assert r.returncode == 2 and expected in r.stderr, r.stderr
    if not text:
        assert "python -m params --preset NAME -o params.yaml" in r.stderr
    assert list(tmp_path.iterdir()) == [bad] and bad.read_text() == text


def test_recording_names_exactly_the_leaves_read():
    from params.record import leaves, recording, unrecorded

    p = preset("smoke")
    with recording(p) as keys:
        p.diffusion.unet.model_channels
        p.run.seed
        p.data.synthetic.model_dump()
        _ = p.num_classes  # a property reads what it uses
        with unrecorded():
            p.classifier.lr_first
            p.model_dump()
    assert keys == {"diffusion.unet.model_channels", "run.seed", "data.dataset",
                    *(k for k in leaves(p) if k.startswith("data.synthetic."))}
    p.oracle.steps  # outside the block nothing is recorded
    assert "oracle.steps" not in keys
    assert len(leaves(p)) == len(set(leaves(p))) and "guidance.scale" in leaves(p)
