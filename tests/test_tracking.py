"""wandb is optional: off by default, and in offline mode one local run per stage, no network."""
import pytest

from params import dump_params, preset
from pipeline.inprocess import run_all


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
