"""Resume states (stages/resume.py): a training stage SIGKILLed part-way continues from its latest
state when rerun with the same inputs, and its output is byte-identical to an uninterrupted run's."""
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
    subprocess.run([sys.executable, "-m", "pipeline.render"], cwd=path, check=True, capture_output=True)
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


def kill_after_a_state(proc: subprocess.Popen, folder: Path, timeout: float = 120) -> Path:
    """SIGKILL the stage as soon as it has written a resume state; returns the state's path."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = list((folder / ".resume").glob("*.pt")) if (folder / ".resume").is_dir() else []
        if found:
            proc.send_signal(signal.SIGKILL)
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
