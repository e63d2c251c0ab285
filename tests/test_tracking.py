"""wandb is optional: off by default, and in offline mode one local run per stage, no network."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from params import dump_params, preset
from pipeline.inprocess import run_all
from stages import paths

ROOT = Path(__file__).resolve().parents[1]


def test_default_tracking_writes_no_wandb_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(dump_params(preset("smoke", run={"method": "finetune"})))
    run_all()
    assert not (tmp_path / "wandb").exists()


@pytest.mark.slow
def test_offline_tracking_writes_a_local_run_for_the_stage(tmp_path, monkeypatch):
    from stages import report

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    (tmp_path / "params.yaml").write_text(dump_params(preset("smoke", run={"method": "finetune"})))
    run_all()
    p = preset("smoke", run={"method": "finetune"}, tracking={"wandb": "offline", "group": "test"})
    (tmp_path / "params.yaml").write_text(dump_params(p))
    assert report.main([]) == 0
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))  # the run's local record


def _online_env(tmp_path, **extra):
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "WANDB_DIR": str(tmp_path),
           "OMP_NUM_THREADS": os.environ["OMP_NUM_THREADS"],
           **extra}
    (tmp_path / "params.yaml").write_text(dump_params(preset("smoke", tracking={"wandb": "online"})))
    return env


def test_online_without_an_api_key_stops_before_any_work(tmp_path):
    env = _online_env(tmp_path)  # no WANDB_API_KEY, an empty home: no ~/.netrc
    for cmd in (["stages.check_graph", "--structure", "x"], ["stages.diffusion", "--task", "0"]):
        r = subprocess.run([sys.executable, "-m", *cmd], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert r.returncode == 2 and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "`wandb login`" in r.stderr
        assert "tracking.wandb: offline" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


class _BrokenRun:
    """A wandb run whose server went away after init."""

    def log(self, *args, **kwargs):
        raise ConnectionError("network is unreachable")

    def finish(self, *args, **kwargs):
        raise ConnectionError("network is unreachable")


@pytest.mark.parametrize("failure", ["init", "log"])
def test_a_wandb_failure_is_one_warning_and_the_stage_keeps_its_work(tmp_path, monkeypatch, capsys, failure):
    import wandb
    from wandb.errors import CommError

    from stages import diffusion

    def init(**kwargs):
        if failure == "init":
            raise CommError("Timed out while retrying: no such host")
        return _BrokenRun()

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    monkeypatch.setattr(wandb, "init", init)
    (tmp_path / "params.yaml").write_text(dump_params(preset("smoke", tracking={"wandb": "online"})))
    assert diffusion.main(["--task", "0"]) == 0
    err = capsys.readouterr().err
    assert err.count(f"warning: wandb {failure} failed") == 1 and err.count("warning: wandb") == 1
    assert "Traceback" not in err and (tmp_path / paths.diffusion(0)).exists()
