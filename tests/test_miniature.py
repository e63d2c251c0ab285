"""pipeline.miniature: its data is what the real loaders read, its presets differ from the paper
presets only in what a miniature may change, and all six run end to end (`python -m pipeline.miniature
--all` does the same outside the suite)."""
from __future__ import annotations

import numpy as np
import pytest
import yaml

from guide.data import load_dataset
from params import dump_params, preset
from params import load_params
from pipeline.graph import build_graph
from pipeline.miniature import PAPER, TEST_PER_CLASS, TRAIN_PER_CLASS, WRITERS, graph_problems, run_preset, shrink
from stages.construct import check_constructs

# what a miniature may change: step counts (T and the length of a respaced chain too), sample counts,
# batch sizes, the networks' widths (and where the data is, and the CPU)
MAY_CHANGE = {"diffusion.steps_first", "diffusion.steps_later", "diffusion.num_timesteps", "diffusion.batch_size",
              "diffusion.train_respacing", "rehearsal.respacing", "replay.respacing",
              "diffusion.unet.model_channels", "diffusion.unet.num_head_channels", "classifier.width", "rehearsal.per_task", "rehearsal.batch_size", "replay.batch_size",
              "classifier.steps_first", "classifier.steps_later", "classifier.batch_size", "oracle.steps",
              "oracle.batch_size", "evaluate.batch_size", "evaluate.grid_images", "data.root", "run.device"}


def leaves(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        out.update(leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


@pytest.mark.parametrize("name", PAPER)
def test_a_miniature_changes_only_sizes_and_builds_in_every_stage(name, tmp_path):
    full = leaves(yaml.safe_load(dump_params(preset(name))))
    mini = preset(name, **shrink(name, tmp_path))
    if mini.data.root:
        (tmp_path / mini.data.root).mkdir(parents=True, exist_ok=True)  # check_constructs wants it to exist
    small = leaves(yaml.safe_load(dump_params(mini)))
    changed = {k for k in full if full[k] != small[k]}
    assert changed <= MAY_CHANGE, changed - MAY_CHANGE
    assert {"diffusion.steps_first", "classifier.steps_first"} <= changed
    for key in ("diffusion.train_respacing", "rehearsal.respacing", "replay.respacing"):  # the kind of chain kept
        assert bool(full[key]) == bool(small[key]) and full[key].rstrip("0123456789") == small[key].rstrip("0123456789")
    check_constructs(mini, name)  # what every stage builds


@pytest.mark.parametrize("dataset", sorted(WRITERS))
def test_the_miniature_data_is_what_the_real_loaders_read(dataset, tmp_path):
    write, sub = WRITERS[dataset]
    write(tmp_path / sub if sub else tmp_path, np.random.default_rng(0))
    ds = load_dataset(dataset, tmp_path / sub if sub else tmp_path)
    n = {"cifar100": 100, "imagenet100_64": 100}.get(dataset, 10)
    size = {"cifar10": 32, "cifar100": 32, "imagenet100_64": 64}.get(dataset, 28)
    assert ds.num_classes == n and ds.train_x.shape[1:] == ds.test_x.shape[1:]
    assert ds.train_x.shape[-1] == size and ds.train_x.min() >= -1 and ds.train_x.max() <= 1
    per_class = 5 * 1 if dataset == "cifar10" else TRAIN_PER_CLASS  # cifar10: one image a class in each of 5 batches
    assert ds.train_y.bincount().tolist() == [per_class] * n
    assert ds.test_y.bincount().tolist() == [TEST_PER_CLASS] * n


@pytest.mark.slow
@pytest.mark.parametrize("name", PAPER)
def test_every_paper_preset_runs_end_to_end_in_miniature(name, tmp_path, monkeypatch):
    """Each of the five paper presets and fashion_mnist5 (one test each, so pytest-xdist spreads them):
    its data in the real on-disk layout, every stage of its graph in this process (run_preset raises
    naming the preset when the accuracy matrix, a replay measurement or a replay grid is missing or
    malformed, or when a file or params key the rendered dvc.yaml declares is not there)."""
    kinds = {"check_graph", "oracle", "diffusion", "rehearsal", "classifier", "evaluate", "report"}
    r = run_preset(name, tmp_path)
    p = load_params(tmp_path / name / "params.yaml")
    graph = build_graph(p)
    assert r["stages"] == len(graph) and {st.kind for st in graph} == kinds, (name, r)
    assert (p.guidance.mode, p.classifier.arch) == (preset(name).guidance.mode, preset(name).classifier.arch)
    if name != "cifar10_2":
        return
    # the declared-files check sees a missing output and a params key DVC would not find
    folder = tmp_path / name
    (folder / "metrics/replay/task1.json").unlink()
    raw = yaml.safe_load((folder / "params.yaml").read_text())
    del raw["classifier"]["width"]
    monkeypatch.chdir(folder)
    problems = graph_problems(load_params("params.yaml"), raw)
    assert "stage classifier-t1: declared output metrics/replay/task1.json is missing" in problems
    assert "stage report: declared dependency metrics/replay/task1.json is missing" in problems
    assert "stage classifier-t1: declared params key classifier.width is not in params.yaml" in problems
