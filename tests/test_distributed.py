"""Data-parallel stages under torchrun: the split of a global batch, the refusal of stages that run on
one process, and the smoke diffusion, classifier and sampling stages on 2 CPU processes (gloo)
against 1 process."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from guide.distributed import SyncedBatchNorm2d, World, sync_batchnorm
from params import dump_params, preset

ROOT = Path(__file__).resolve().parents[1]

# Runs a stage after wrapping guide.io's one atomic writer, so the test sees which rank wrote what.
WRITER_SPY = textwrap.dedent("""
    import os, sys
    import guide.io as io
    real = io.atomic_path
    def spy(path):
        with open(os.environ["WRITES"], "a") as log:
            log.write(f"{os.environ.get('RANK', '-')} {path}\\n")
        return real(path)
    io.atomic_path = spy
    import importlib
    sys.exit(importlib.import_module("stages." + sys.argv[1]).main(sys.argv[2:]))
""")


def test_one_process_is_the_whole_batch_and_ranks_share_it_evenly():
    assert World().part(7) == slice(None)
    assert [World(r, 4).part(8) for r in range(4)] == [slice(0, 2), slice(2, 4), slice(4, 6), slice(6, 8)]
    with pytest.raises(ValueError, match="6 does not split evenly over 4"):
        World(1, 4).part(6)
    x = torch.tensor(2.5)
    assert World().mean(x) is x and World().wrap(m := torch.nn.Linear(1, 1)) is m


def test_a_stage_that_runs_on_one_process_refuses_a_launcher_world(tmp_path):
    (tmp_path / "params.yaml").write_text(dump_params(preset("smoke")))
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "0", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "stages.evaluate", "--task", "0"], cwd=tmp_path, env=env,
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "stages.evaluate: launched on 2 processes (WORLD_SIZE)" in r.stderr and "classifier" in r.stderr
    assert not (tmp_path / "artifacts").exists()


def _diffusion_t0(folder: Path, processes: int) -> list[str]:
    folder.mkdir()
    (folder / "params.yaml").write_text(dump_params(preset("smoke")))
    return _launch(folder, processes, "diffusion", "--task", "0")


@pytest.mark.slow
def test_the_smoke_diffusion_stage_on_two_gloo_processes_takes_the_one_process_steps(tmp_path):
    """Same global batch (32), split 16 + 16: the loss curve of 30 steps matches the one-process run
    to a relative 1e-5 and the weights to a relative distance of 1e-3 (float-summation order), and
    only rank 0 writes the checkpoint."""
    one = _diffusion_t0(tmp_path / "one", 1)
    two = _diffusion_t0(tmp_path / "two", 2)
    assert sorted(w.split(" ", 1)[1] for w in one) == ["artifacts/diffusion/task0.pt", "plots/curves/diffusion-t0.csv"]
    assert sorted(two) == sorted("0 " + w.split(" ", 1)[1] for w in one)  # each written once, by rank 0
    a = torch.load(tmp_path / "one" / "artifacts" / "diffusion" / "task0.pt", weights_only=False)
    b = torch.load(tmp_path / "two" / "artifacts" / "diffusion" / "task0.pt", weights_only=False)
    assert len(a["losses"]) == 30
    torch.testing.assert_close(b["losses"], a["losses"], rtol=1e-5, atol=0)  # measured: 4e-7
    for weights in ("model", "ema"):  # measured: 1.5e-4 and 1.0e-4 of the weights' norm
        assert _relative_distance(a[weights], b[weights]) < 1e-3, weights


def _relative_distance(a: dict, b: dict) -> float:
    """‖a − b‖ / ‖a‖ over every tensor of two state dicts. Per element the two runs can differ by up to
    Adam's step size where a gradient is float noise around 0 (a bias pair whose sum alone matters)."""
    keys = [k for k in a if a[k].is_floating_point()]  # (not BatchNorm's step counters)
    num = sum(float(((a[k].double() - b[k].double()) ** 2).sum()) for k in keys)
    den = sum(float((a[k].double() ** 2).sum()) for k in keys)
    return (num / den) ** 0.5


def test_run_devices_launches_the_data_parallel_stages_with_torchrun_and_nothing_else():
    from pipeline.graph import build_graph

    one, four = preset("smoke"), preset("smoke", run={"devices": 4})
    assert one.structure_key() != four.structure_key()  # check-graph stops a run rendered for the other
    assert preset("smoke", run={"devices": 1}).structure_key() == one.structure_key()
    stages = build_graph(four)
    cmds = {st.name: st.cmd for st in stages}
    assert cmds["diffusion-t1"] == "torchrun --standalone --nproc-per-node 4 -m stages.diffusion --task 1"
    assert cmds["classifier-t1-r0"] == "torchrun --standalone --nproc-per-node 4 -m stages.classifier --task 1 --round 0"
    assert {st.kind for st in stages if st.cmd.startswith("torchrun ")} == {
        "diffusion", "rehearsal", "replay", "classifier"}
    assert {st.kind for st in stages if st.cmd.startswith("python -m ")} == {
        "check_graph", "oracle", "evaluate", "report"}
    assert {st.name: st.cmd for st in build_graph(one)}["diffusion-t1"] == "python -m stages.diffusion --task 1"


def test_batchnorm_layers_become_synced_in_place_keeping_their_parameters():
    from guide.models import build_classifier

    model = build_classifier("small_cnn", 4, 1, 16)
    params, keys = list(model.parameters()), list(model.state_dict())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    assert sync_batchnorm(model) is model
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(type(m) is SyncedBatchNorm2d for m in norms)
    assert all(a is b for a, b in zip(model.parameters(), params)) and len(list(model.parameters())) == len(params)
    assert list(model.state_dict()) == keys and optimizer.param_groups[0]["params"][0] is params[0]
    x = torch.randn(8, 1, 16, 16)
    plain = build_classifier("small_cnn", 4, 1, 16)
    plain.load_state_dict(model.state_dict())
    torch.testing.assert_close(model(x), plain(x), rtol=0, atol=0)  # no process group: BatchNorm2d itself


def _launch(folder: Path, processes: int, *stage: str) -> list[str]:
    """Run one stage (module args...) in `folder` on 1 plain process or N torchrun ranks, 1 thread
    each; returns the (rank, path) lines of every artifact written."""
    (folder / "spy.py").write_text(WRITER_SPY)
    writes = folder / "writes.txt"
    writes.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WRITES": str(writes)}
    launcher = [sys.executable] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    r = subprocess.run([*launcher, "spy.py", *stage], cwd=folder, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return writes.read_text().splitlines() if writes.exists() else []


@pytest.mark.slow
def test_classifier_and_sampling_stages_on_two_gloo_processes_match_one_process(tmp_path):
    """The smoke graph up to round 0 of task 1 on one process, then its task-1 sampling stages and both classifier stages
    again on 2 ranks from the same inputs. Sampling splits its batches over the ranks: the
    rehearsal and replay shards (guided, with their unguided twins and the oracle's measurements) are
    the same bytes. Training takes the one-process steps: losses within a relative 1e-4 (measured
    1.1e-5), weights within a relative distance of 1e-5 (measured 1.9e-7; with per-rank BatchNorm
    statistics instead of the global batch's, 7.6 and 2.6e-2). Rank 0 alone writes."""
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    # batches of 16: 3 rehearsal and 4 replay batches, so both ranks sample, one of them twice
    (one / "params.yaml").write_text(dump_params(preset(
        "smoke", replay={"batch_size": 16}, rehearsal={"per_task": 40, "batch_size": 16})))
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    subprocess.run([sys.executable, "-m", "pipeline.inprocess", "rehearsal-t1", "classifier-t1-r0"], cwd=one,
                   check=True, capture_output=True, env={**os.environ, **env, "PYTHONPATH": str(ROOT)}, timeout=300)
    shutil.copytree(one, two)
    made = ["artifacts/rehearsal/task1/shard.pt", "artifacts/rehearsal/task1/manifest.json",
            "artifacts/replay/task1/round0/shard.pt", "artifacts/replay/task1/round0/manifest.json",
            "metrics/replay/task1-r0.json", "artifacts/classifier/task1/round0.pt"]
    for path in made:
        (two / path).unlink()

    assert [w.split()[0] for w in _launch(two, 2, "rehearsal", "--task", "1")] == ["0", "0"]
    writes = _launch(two, 2, "replay", "--task", "1", "--round", "0")
    assert {w.split()[0] for w in writes} == {"0"} and len(writes) == len(set(writes))
    assert sorted(_launch(two, 2, "classifier", "--task", "1", "--round", "0")) == [
        "0 artifacts/classifier/task1/round0.pt", "0 plots/curves/classifier-t1-r0.csv"]
    for path in made[:-1]:
        assert (two / path).read_bytes() == (one / path).read_bytes(), path
    (two / "artifacts/classifier/task0/round0.pt").unlink()
    assert sorted(_launch(two, 2, "classifier", "--task", "0")) == [
        "0 artifacts/classifier/task0/round0.pt", "0 plots/curves/classifier-t0.csv"]

    for path in ("artifacts/classifier/task0/round0.pt", "artifacts/classifier/task1/round0.pt"):
        a, b = (torch.load(f / path, weights_only=False) for f in (one, two))
        torch.testing.assert_close(b["losses"], a["losses"], rtol=1e-4, atol=1e-6)
        assert _relative_distance(a["model"], b["model"]) < 1e-5, path
