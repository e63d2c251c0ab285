"""Resume states (stages/resume.py): a training stage SIGKILLed part-way continues from its latest
state when rerun with the same inputs, and its output is byte-identical to an uninterrupted run's."""
import contextlib
import importlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from params import dump_params, preset

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def folder_with(path: Path, **overrides) -> Path:
    """The project's code, the smoke preset with `overrides` and its dvc.yaml (the resume key reads
    the stage's entry), at `path`."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if f.endswith(".py") and (ROOT / f).is_file() and f.split("/")[0] in ("guide", "params", "pipeline", "stages"):
            (path / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, path / f)
    shutil.copy2(ROOT / "guide/imagenet100_classes.txt", path / "guide/imagenet100_classes.txt")
    (path / "params.yaml").write_text(dump_params(preset("smoke", **overrides)))
    from pipeline.render import main as render  # in this process: a new Python costs ~2 s of CPU

    assert render(["--params", str(path / "params.yaml"), "--output", str(path / "dvc.yaml")]) == 0
    return path


def stage(path: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    return subprocess.Popen([sys.executable, "-m", *args], cwd=path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def run_here(capsys, path: Path, module: str, *args: str) -> str:
    """The stage `module` run to the end in this process, in `path` and on one thread as `stage` runs
    it (a new Python would spend ~2.5 s of CPU importing torch); returns what it wrote to stderr."""
    threads, cwd = torch.get_num_threads(), os.getcwd()
    capsys.readouterr()
    torch.set_num_threads(1)
    os.chdir(path)
    try:
        code = importlib.import_module(module).main(list(args))
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)
    err = capsys.readouterr().err
    assert code == 0, err[-2000:]
    return err


def torchrun(path: Path, processes: int, *args: str) -> subprocess.Popen:
    """A stage on `processes` gloo ranks, one thread each."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             f"--nproc-per-node={processes}", "-m", *args], cwd=path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def tree(pid: int) -> list[int]:
    """`pid` and every process below it (the elastic launcher starts its ranks in sessions of their
    own, so a process group does not hold them)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        out.append(todo.pop())
        todo += children.get(out[-1], [])
    return out


def kill_after_a_state(proc: subprocess.Popen, folder: Path, timeout: float = 120, group: bool = False) -> Path:
    """SIGKILL the stage (`group`: it and every process below it, a launcher and its ranks) as soon as it has
    written a resume state; returns the state's path."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = list((folder / ".resume").glob("*.pt")) if (folder / ".resume").is_dir() else []
        if found:
            for pid in (tree(proc.pid) if group else [proc.pid]):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.communicate()
            return found[0]
        assert proc.poll() is None, "the stage finished before writing a resume state"
        time.sleep(0.02)
    raise AssertionError("no resume state appeared")


# dropout and augmentation on, so the global random stream matters too; online guided replay, so the
# classifier's state includes the replay's generators, its current bank, what it drew and the probe
DIFFUSION = {"diffusion": {"steps_first": 40, "unet": {"dropout": 0.1}}, "run": {"resume_every": 10},
             "guidance": {"mode": "online"}, "classifier": {"steps_later": 60, "augmentation": "digits"}}
OUTPUTS = ("artifacts/diffusion/task0.pt", "plots/curves/diffusion-t0.csv")
CLASSIFIER = ("artifacts/classifier/task1/round0.pt", "artifacts/replay/task1/online/shard.pt",
              "artifacts/replay/task1/online/manifest.json", "metrics/replay/task1.json", "plots/replay/task1.png",
              "plots/curves/classifier-t1.csv")


def test_killed_diffusion_and_online_classifier_stages_resume_to_the_same_bytes_and_bad_or_stale_states_are_not_used(tmp_path, capsys):
    # killed right after its first state (step 10 of 40), then rerun: it resumes there
    cut = folder_with(tmp_path / "cut", **DIFFUSION)
    state = kill_after_a_state(stage(cut, "stages.diffusion", "--task", "0"), cut)
    saved = state.read_bytes()  # written atomically: complete once it has its name
    assert not (cut / OUTPUTS[0]).exists()  # killed: no output that looks finished
    err = run_here(capsys, cut, "stages.diffusion", "--task", "0")
    assert f"resuming from .resume/{state.name} at step " in err
    assert list((cut / ".resume").iterdir()) == []  # removed once the stage succeeded

    # the uninterrupted run, in a second folder with the same inputs (so the same key), finding a
    # truncated copy of that state: refused in one line, it starts fresh and ends with the resumed bytes
    whole = folder_with(tmp_path / "whole", **DIFFUSION)
    (whole / ".resume").mkdir()
    (whole / ".resume" / state.name).write_bytes(saved[: len(saved) // 2])
    err = run_here(capsys, whole, "stages.diffusion", "--task", "0")
    lines = [line for line in err.splitlines() if "resume state" in line]
    assert len(lines) == 1 and lines[0].startswith(f"resume state .resume/{state.name} is unreadable (")
    assert lines[0].endswith("); starting fresh") and "resuming" not in err
    assert list((whole / ".resume").iterdir()) == []  # 40 % 10 == 0: none left at the end
    for out in OUTPUTS:
        assert (cut / out).read_bytes() == (whole / out).read_bytes(), out

    # the online classifier of task 1, killed part-way through its guided replay: the same bytes again
    for st in (("stages.oracle",), ("stages.classifier", "--task", "0"), ("stages.classifier", "--task", "1")):
        run_here(capsys, whole, *st)
    for f in ("artifacts/oracle.pt", "artifacts/classifier/task0/round0.pt"):
        (cut / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(whole / f, cut / f)  # what those stages would write there: same inputs, same bytes
    cstate = kill_after_a_state(stage(cut, "stages.classifier", "--task", "1"), cut)
    assert cstate.name.startswith("classifier-t1-")
    assert f"resuming from .resume/{cstate.name} at step " in run_here(capsys, cut, "stages.classifier", "--task", "1")
    for out in CLASSIFIER:
        assert (cut / out).read_bytes() == (whole / out).read_bytes(), out

    # a state made under other inputs (the diffusion state from above, after a param changed) is not
    # used, and is removed
    (cut / ".resume" / state.name).write_bytes(saved)
    (cut / "params.yaml").write_text(dump_params(preset("smoke", **{**DIFFUSION, "diffusion": {
        **DIFFUSION["diffusion"], "lr": 2e-3, "steps_first": 10}})))
    assert "resuming" not in run_here(capsys, cut, "stages.diffusion", "--task", "0")
    assert list((cut / ".resume").iterdir()) == []


def test_a_killed_data_parallel_diffusion_stage_resumes_to_the_same_bytes_under_torchrun(tmp_path):
    """Two gloo ranks with dropout: each rank's global random stream is its own (stages.common seeds
    rank r > 0 apart), so rank 0's state carries every rank's and each rank resumes its own."""
    over = {**DIFFUSION, "run": {"resume_every": 5, "devices": 2}, "diffusion": {"steps_first": 20, "unet": {"dropout": 0.1}}}
    cut, whole = folder_with(tmp_path / "cut", **over), folder_with(tmp_path / "whole", **over)
    assert "torchrun --standalone --nproc-per-node 2 -m stages.diffusion --task 0" in (cut / "dvc.yaml").read_text()
    state = kill_after_a_state(torchrun(cut, 2, "stages.diffusion", "--task", "0"), cut, group=True)
    ranks = torch.load(state, weights_only=False)["ranks"]
    assert sorted(ranks) == [0, 1] and not torch.equal(ranks[0]["torch_rng"], ranks[1]["torch_rng"])
    assert not (cut / OUTPUTS[0]).exists()
    errs = []
    for proc in [torchrun(f, 2, "stages.diffusion", "--task", "0") for f in (cut, whole)]:
        errs.append(proc.communicate(timeout=300)[1])
        assert proc.returncode == 0, errs[-1][-3000:]
    assert f"resuming from .resume/{state.name} at step " in errs[0] and "resuming" not in errs[1]
    for out in OUTPUTS:
        assert (cut / out).read_bytes() == (whole / out).read_bytes(), out


# rounds mode (a replay stage), and sampling in many small batches
SAMPLING = {"guidance": {"mode": "rounds"}, "rehearsal": {"per_task": 40, "batch_size": 4},
            "replay": {"batch_size": 8}}
DRAWN = ("artifacts/rehearsal/task1/shard.pt", "artifacts/rehearsal/task1/manifest.json",
         "artifacts/replay/task1/round0/shard.pt", "artifacts/replay/task1/round0/manifest.json",
         "metrics/replay/task1-r0.json", "plots/replay/task1.png")


def test_interrupted_sampling_stages_resume_by_finished_batch_to_the_same_bytes(tmp_path, capsys, monkeypatch):
    """Rehearsal, and rounds-mode replay with its unguided twin, stopped after some finished batches
    (an exception where a kill would land, once a batch is kept): the rerun takes the kept batches,
    draws the rest and writes the uninterrupted run's bytes; a truncated batch file is drawn again."""
    from stages.resume import Batches

    whole = folder_with(tmp_path / "whole", **SAMPLING)
    for st in (("stages.diffusion", "--task", "0"), ("stages.oracle",), ("stages.classifier", "--task", "0"),
               ("stages.rehearsal", "--task", "1"), ("stages.replay", "--task", "1", "--round", "0")):
        run_here(capsys, whole, *st)
    cut = folder_with(tmp_path / "cut", **SAMPLING)
    for f in ("artifacts/diffusion/task0.pt", "artifacts/oracle.pt", "artifacts/classifier/task0/round0.pt"):
        (cut / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(whole / f, cut / f)

    keep = Batches.save
    for stop_in, stop_at, st in (("drawn", 3, ("stages.rehearsal", "--task", "1")),
                                 ("twin", 2, ("stages.replay", "--task", "1", "--round", "0"))):
        def save_then_stop(self, i, outputs, stop_in=stop_in, stop_at=stop_at):
            keep(self, i, outputs)
            if self.folder.name == stop_in and i == stop_at:
                raise KeyboardInterrupt  # stopped with batches 0..stop_at kept
        monkeypatch.setattr(Batches, "save", save_then_stop)
        with pytest.raises(KeyboardInterrupt):
            run_here(capsys, cut, *st)
        monkeypatch.setattr(Batches, "save", keep)
        kept = sorted((cut / ".resume").glob(f"*/{stop_in}/batch-*.pt"))
        assert len(kept) == stop_at + 1
        if stop_in == "drawn":  # a truncated part: it and what follows are drawn again
            kept[2].write_bytes(kept[2].read_bytes()[:100])
        err = run_here(capsys, cut, *st)
        resumed = [line for line in err.splitlines() if "finished batches" in line or "unreadable" in line]
        if stop_in == "drawn":
            assert len(resumed) == 2 and "is unreadable" in resumed[0] and "after 2 finished batches" in resumed[1]
        else:  # the guided batches all kept (64 images in 8), then the twin's first three
            assert "drawn after 8 finished batches" in resumed[0] and "twin after 3 finished batches" in resumed[1]
        assert list((cut / ".resume").iterdir()) == []  # removed once the stage succeeded
    for out in DRAWN:
        assert (cut / out).read_bytes() == (whole / out).read_bytes(), out
