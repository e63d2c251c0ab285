"""Data-parallel stages under torchrun: the split of a global batch, the refusal of stages that run on
one process, and the smoke diffusion stage on 2 CPU processes (gloo) against 1 process."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from guide.distributed import World
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
    from stages.diffusion import main
    sys.exit(main(sys.argv[1:]))
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
    r = subprocess.run([sys.executable, "-m", "stages.classifier", "--task", "0"], cwd=tmp_path, env=env,
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "stages.classifier: launched on 2 processes (WORLD_SIZE)" in r.stderr and "diffusion" in r.stderr
    assert not (tmp_path / "artifacts").exists()


def _diffusion_t0(folder: Path, processes: int) -> list[str]:
    folder.mkdir()
    (folder / "params.yaml").write_text(dump_params(preset("smoke")))
    (folder / "spy.py").write_text(WRITER_SPY)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "WRITES": str(folder / "writes.txt")}
    launcher = [sys.executable] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    r = subprocess.run([*launcher, "spy.py", "--task", "0"], cwd=folder, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return (folder / "writes.txt").read_text().splitlines()


@pytest.mark.slow
def test_the_smoke_diffusion_stage_on_two_gloo_processes_takes_the_one_process_steps(tmp_path):
    """Same global batch (32), split 16 + 16: the loss curve of 30 steps matches the one-process run
    to a relative 1e-5 and the weights to a relative distance of 1e-3 (float-summation order), and
    only rank 0 writes the checkpoint."""
    one = _diffusion_t0(tmp_path / "one", 1)
    two = _diffusion_t0(tmp_path / "two", 2)
    assert len(one) == 1 and one[0].endswith("diffusion/task0.pt")
    assert two == ["0 " + one[0].split(" ", 1)[1]]  # written once, by rank 0
    a = torch.load(tmp_path / "one" / "artifacts" / "diffusion" / "task0.pt", weights_only=False)
    b = torch.load(tmp_path / "two" / "artifacts" / "diffusion" / "task0.pt", weights_only=False)
    assert len(a["losses"]) == 30
    torch.testing.assert_close(b["losses"], a["losses"], rtol=1e-5, atol=0)  # measured: 4e-7
    for weights in ("model", "ema"):  # measured: 1.5e-4 and 1.0e-4 of the weights' norm
        assert _relative_distance(a[weights], b[weights]) < 1e-3, weights


def _relative_distance(a: dict, b: dict) -> float:
    """‖a − b‖ / ‖a‖ over every tensor of two state dicts. Per element the two runs can differ by up to
    Adam's step size where a gradient is float noise around 0 (a bias pair whose sum alone matters)."""
    num = sum(float(((a[k].double() - b[k].double()) ** 2).sum()) for k in a)
    den = sum(float((a[k].double() ** 2).sum()) for k in a)
    return (num / den) ** 0.5


def test_run_devices_launches_the_data_parallel_stages_with_torchrun_and_nothing_else():
    from pipeline.graph import build_graph

    one, four = preset("smoke"), preset("smoke", run={"devices": 4})
    assert one.structure_key() != four.structure_key()  # check-graph stops a run rendered for the other
    assert preset("smoke", run={"devices": 1}).structure_key() == one.structure_key()
    cmds = {st.name: st.cmd for st in build_graph(four)}
    assert cmds["diffusion-t1"] == "torchrun --standalone --nproc-per-node 4 -m stages.diffusion --task 1"
    assert all(c.startswith("python -m ") for n, c in cmds.items() if not n.startswith("diffusion-"))
    assert {st.name: st.cmd for st in build_graph(one)}["diffusion-t1"] == "python -m stages.diffusion --task 1"
