"""Each of the five methods runs 2 tasks end to end, in-process, on the synthetic data (smoke preset).
`pytest --durations=0` shows how long each takes."""
import json

import pytest
import torch

from guide.io import load_shard
from params import dump_params, preset
from pipeline.inprocess import run_all
from stages import paths


def run_method(tmp_path, monkeypatch, method: str) -> dict:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(dump_params(preset("smoke", run={"method": method})))
    names = run_all()
    summary = json.loads((tmp_path / paths.SUMMARY).read_text())
    summary["stages"] = names
    return summary


@pytest.mark.parametrize("method", ["guide", "gr", "ddgr", "finetune", "joint"])
def test_method_runs_two_tasks_end_to_end(tmp_path, monkeypatch, method):
    s = run_method(tmp_path, monkeypatch, method)
    a = s["accuracy_matrix"]
    assert len(a) == 2 and a[1][0] is None and s["method"] == method
    assert a[0][0] >= 0.9  # task 0 of the synthetic data is easy
    assert (tmp_path / paths.ACCURACY_PNG).exists() and (tmp_path / paths.ACCURACY_CSV).exists()
    generated = method in ("guide", "gr", "ddgr")
    assert (tmp_path / paths.diffusion(0)).exists() == generated
    assert (tmp_path / "artifacts" / "replay").exists() == generated
    if method == "joint":
        assert a[0][1] >= 0.9  # real data of task 0 is still there: no forgetting
    if method == "finetune":
        assert a[0][1] <= 0.1  # nothing reminds it of task 0
    if generated:
        shard = load_shard(tmp_path / paths.replay(1, 0))
        m = shard["manifest"]
        assert m["guidance"]["target"] == {"guide": "new", "gr": "none", "ddgr": "old"}[method]
        assert set(shard["labels"].tolist()) <= {0, 1}  # replay is of the old classes only
        targets = shard["targets"]
        if method == "guide":
            assert set(targets.tolist()) <= {2, 3}  # steered toward the current task's classes
        elif method == "ddgr":
            assert torch.equal(targets, shard["labels"])  # steered toward its own old class
        else:
            assert (targets == -1).all()
        assert (tmp_path / paths.replay_grid(1)).exists() == (method != "gr")
        mechanism = [json.loads((tmp_path / paths.replay_metrics(1, r)).read_text()) for r in (0, 1)]
        assert mechanism[0]["count"] == m["count"] and s["replay"]["count"] == sum(x["count"] for x in mechanism)
        assert 0 <= s["replay"]["unguided"]["oracle_accuracy"] <= 1 and 0 < s["oracle_test_accuracy"] <= 1
        if method == "gr":  # nothing guided: the twin is the replay itself
            assert all(v == 0 for x in mechanism for v in x["delta"].values())
    else:
        assert "replay" not in s and not (tmp_path / paths.ORACLE).exists()


def test_online_mode_records_what_it_generated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = preset("smoke", guidance={"mode": "online"}, replay={"rounds": 1})
    (tmp_path / "params.yaml").write_text(dump_params(p))
    names = run_all()
    assert not any(n.startswith("replay-") for n in names)
    shard = load_shard(tmp_path / paths.replay(1, None))
    steps, interval = p.classifier.steps_later, p.classifier.interval
    per_step = p.classifier.batch_size // 2  # task 1: half real, half replay
    assert shard["manifest"]["count"] == (steps // interval) * per_step  # regenerated every interval steps
    assert set(shard["targets"].tolist()) <= {2, 3}
    mechanism = json.loads((tmp_path / paths.replay_metrics(1, None)).read_text())
    assert mechanism["count"] == shard["manifest"]["count"]


def test_same_seed_same_tensors(tmp_path, monkeypatch):
    """Two runs of the diffusion stage with the same seed give bit-identical weights."""
    from stages import diffusion

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(dump_params(preset("smoke")))
    weights = []
    for _ in range(2):
        assert diffusion.main(["--task", "0"]) == 0
        weights.append(torch.load(paths.diffusion(0), weights_only=True)["ema"])
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_default_preset_loads_mnist5k_in_task_order():
    from stages.common import Context

    ctx = Context("test", preset("mnist5k"), task=1, round=0)
    assert len(ctx.data.train_x) == 4000 and len(ctx.data.test_x) == 1000
    assert ctx.tasks == [range(0, 2), range(2, 4), range(4, 6), range(6, 8), range(8, 10)] and ctx.seen() == 4


def test_a_method_registered_once_is_known_to_params_the_graph_and_the_comparison(monkeypatch):
    from guide.continual import METHODS, Method
    from params import ParamsError, params_from_dict
    from pipeline import compare
    from pipeline.graph import build_graph

    raw = preset("smoke").model_dump(mode="json")
    raw["run"]["method"] = "toy"
    with pytest.raises(ParamsError, match="run.method: .*'toy' is not a method; expected one of guide, gr"):
        params_from_dict(raw)
    monkeypatch.setitem(METHODS, "toy", Method("toy", "generated", "old"))
    p = params_from_dict(raw)
    assert p.generated_replay
    names = {s.name for s in build_graph(p)}
    assert {"oracle", "diffusion-t0", "replay-t1-r0"} <= names
    assert compare.method_order(["joint", "toy", "gr"]) == ["gr", "toy", "joint"]


def test_each_task_restarts_the_ema_and_rehearsal_samples_the_live_weights(tmp_path, monkeypatch):
    """The reference's weights across tasks: diffusion(t) trains on from diffusion(t−1)'s live weights,
    its EMA starts afresh from them (TrainLoop builds a new EMA every task), and self-rehearsal
    samples those live weights (prev_model = deepcopy(model)), not the EMA. With ema_decay = 1 the EMA
    never moves, so it is exactly the weights it started from."""
    from guide.io import load_checkpoint, save_checkpoint
    from stages import diffusion, rehearsal
    from stages.rehearsal import rehearsal_count

    monkeypatch.chdir(tmp_path)
    p = preset("smoke", run={"method": "gr"}, diffusion={"ema_decay": 1.0},
               rehearsal={"per_task": 20, "batch_size": 16})
    (tmp_path / "params.yaml").write_text(dump_params(p))
    assert diffusion.main(["--task", "0"]) == 0 and rehearsal.main(["--task", "1"]) == 0
    d0 = load_checkpoint(paths.diffusion(0))
    first = load_shard(paths.rehearsal(1))
    assert len(first["labels"]) == rehearsal_count(20, 1, 16) == 32  # 20 rounded up to whole batches
    assert set(first["labels"].tolist()) <= {0, 1}

    assert diffusion.main(["--task", "1"]) == 0
    d1 = load_checkpoint(paths.diffusion(1))
    assert all(torch.equal(d1["ema"][k], d0["model"][k]) for k in d0["model"])  # restarted from the live weights
    assert any(not torch.equal(d1["model"][k], d0["model"][k]) for k in d0["model"])

    # rehearsal reads the live weights only: garbage in the EMA changes nothing, other live weights do
    save_checkpoint(paths.diffusion(0), {**d0, "ema": {k: torch.zeros_like(v) for k, v in d0["ema"].items()}})
    assert rehearsal.main(["--task", "1"]) == 0
    assert torch.equal(load_shard(paths.rehearsal(1))["images"], first["images"])
    save_checkpoint(paths.diffusion(0), {**d0, "model": d0["ema"]})
    assert rehearsal.main(["--task", "1"]) == 0
    assert not torch.equal(load_shard(paths.rehearsal(1))["images"], first["images"])


def test_epoch_batches_visit_every_item_once_per_epoch_and_drop_the_rest():
    from guide.continual import EpochBatches

    b = EpochBatches(10, 3, torch.Generator().manual_seed(0))
    epoch = torch.cat([b.next() for _ in range(3)])
    assert sorted(epoch.tolist()) == sorted(set(epoch.tolist())) and len(epoch) == 9  # one left out
    second = torch.cat([b.next() for _ in range(3)])
    assert len(set(second.tolist())) == 9 and not torch.equal(second, epoch)  # a new shuffle
    assert EpochBatches(2, 5, torch.Generator().manual_seed(0)).next().tolist() in ([0, 1], [1, 0])
