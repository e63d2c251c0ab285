"""The flow's scale-out options, without running a graph (the end-to-end runs are in test_pipeline.py)."""
import os
import subprocess

import pytest

from pipeline import exchange
from pipeline.graph import uncached
from pipeline.flow import GPU_KINDS, main, resources


@pytest.mark.parametrize("argv, needs", [
    (["--exchange", "remote"], "--exchange remote needs --runner dask or ray"),
    (["--runner", "dask", "--stage-gpus", "1"], "--stage-gpus needs --runner ray"),
    (["--runner", "ray", "--repo-url", "git@host:x.git"], "--repo-url needs --exchange remote"),
    (["--address", "tcp://h:8786"], "--address needs --runner dask or ray"),
    (["--serve", "--runner", "dask"], "--serve runs the graph on threads of the served process"),
])
def test_flow_options_that_do_not_go_together_are_refused_naming_the_option(argv, needs, capsys):
    with pytest.raises(SystemExit) as exit:
        main(argv)
    assert exit.value.code == 2 and needs in capsys.readouterr().err


def test_stage_gpus_reserve_a_gpu_on_ray_for_the_stages_that_train_or_sample_only():
    pytest.importorskip("prefect_ray")
    from prefect_ray.context import RemoteOptionsContext

    for kind in ("diffusion", "replay", "classifier", "evaluate", "report", "check_graph"):
        with resources(kind, 0.5):
            options = RemoteOptionsContext.get().current_remote_options
            assert options == ({"num_gpus": 0.5} if kind in GPU_KINDS else {}), kind
    with resources("diffusion", 0.0):
        assert RemoteOptionsContext.get().current_remote_options == {}
    with resources("classifier", 1.0, processes=4):  # run.devices: 4 → a data-parallel stage of 4 ranks
        assert RemoteOptionsContext.get().current_remote_options == {"num_gpus": 4.0}


def test_uncached_outputs_travel_whole_with_the_task(tmp_path):
    src, dst = tmp_path / "worker", tmp_path / "driver"
    (src / "metrics/replay").mkdir(parents=True)
    (src / "metrics/replay/task1.json").write_text('{"a": 1}')
    (src / "plots").mkdir()
    (src / "plots/grid.png").write_bytes(b"\x89PNG\x00")
    (src / "artifacts").mkdir()
    (src / "artifacts/model.pt").write_bytes(b"weights")
    outputs = ["metrics/replay", "plots/grid.png", "artifacts/model.pt", "metrics/absent.json"]
    assert uncached(outputs) == ["metrics/replay", "plots/grid.png", "metrics/absent.json"]
    files = exchange.read_files(src, uncached(outputs))
    assert files == {"metrics/replay/task1.json": b'{"a": 1}', "plots/grid.png": b"\x89PNG\x00"}
    exchange.write_files(dst, files)
    assert (dst / "metrics/replay/task1.json").read_text() == '{"a": 1}'
    assert not list(dst.rglob("*.tmp")) and not (dst / "artifacts").exists()


def test_remote_exchange_needs_a_default_remote_and_a_committed_tree(tmp_path):
    from dvc.repo import Repo

    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@e.com"}
    run = lambda cmd: subprocess.run(cmd, shell=True, cwd=tmp_path, env=env, check=True, capture_output=True)  # noqa: E731
    run("git init -q && dvc init -q && echo a > params.yaml && git add -A && git commit -qm init")
    with Repo(str(tmp_path)) as repo, pytest.raises(exchange.ExchangeError, match="dvc remote add -d"):
        exchange.check_driver(str(tmp_path), repo)
    run(f"dvc remote add -q -d store {tmp_path / 'remote'} && git add -A && git commit -qm remote")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    with Repo(str(tmp_path)) as repo:
        assert exchange.check_driver(str(tmp_path), repo) == head
        (tmp_path / "dvc.lock").write_text("schema: '2.0'\n")  # the driver's own lock may differ
        assert exchange.check_driver(str(tmp_path), repo) == head
        (tmp_path / "params.yaml").write_text("b\n")
        with pytest.raises(exchange.ExchangeError, match=r"differ from it: params\.yaml; commit them first"):
            exchange.check_driver(str(tmp_path), repo)


def test_a_cluster_elsewhere_needs_a_prefect_server_it_can_reach(capsys, monkeypatch):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with temporary_settings(restore_defaults={PREFECT_API_URL}), pytest.raises(SystemExit) as exit:
        main(["--runner", "dask", "--address", "tcp://h:8786"])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and "--address tcp://h:8786 needs PREFECT_API_URL" in err, err


def test_a_configured_prefect_api_is_used_as_it_is_and_no_server_starts():
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from pipeline.flow import prefect_api

    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        with prefect_api(startup_s=0) as (url, started):
            assert url == "http://127.0.0.1:9/api" and not started


def test_why_a_stage_runs_is_one_line_a_person_reads(tmp_path):
    """DVC's own status of a stage whose dep file, params key and output all changed, as the flow logs it."""
    from dvc.repo import Repo

    from pipeline.flow import describe_changes

    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    run = lambda cmd: subprocess.run(cmd, shell=True, cwd=tmp_path, env=env, check=True, capture_output=True)
    (tmp_path / "params.yaml").write_text("a: 1\nb: 2\n")
    (tmp_path / "in.txt").write_text("x\n")
    (tmp_path / "dvc.yaml").write_text("stages:\n  s:\n    cmd: cp in.txt out.txt\n    deps: [in.txt]\n"
                                       "    params: [a, b]\n    outs: [out.txt]\n")
    run("git init -q && python -m dvc init -q && python -m dvc repro -q")
    (tmp_path / "in.txt").write_text("y\n")
    (tmp_path / "params.yaml").write_text("a: 3\nb: 2\n")
    (tmp_path / "out.txt").unlink()
    with Repo(str(tmp_path)) as repo:
        (status,) = repo.status().values()  # keyed "s", or "PATH/dvc.yaml:s" from another folder
    assert describe_changes(status) == "deps modified: in.txt; params modified: a; outputs deleted: out.txt"
    assert describe_changes(["always changed"]) == "always changed"


def test_deployment_overrides_are_read_as_dvc_reads_dash_s_and_checked_by_the_schema():
    from params import ParamsError, dump_params, preset
    from pipeline.deploy import apply_overrides

    text = dump_params(preset("smoke"))
    p = apply_overrides(text, {"guidance.scale": "0.5", "run.seed": 3, "classifier.lr_later": 0.02})
    assert (p.guidance.scale, p.run.seed, p.classifier.lr_later) == (0.5, 3, 0.02)  # "0.5" is YAML's 0.5
    assert apply_overrides(text, {}) == preset("smoke")
    for overrides, named in [({"guidance.scale": "loud"}, "guidance.scale"),
                             ({"guidance.loudness": 1}, "'guidance.loudness'"),
                             ({"guidance": 1}, "'guidance' is a group"),
                             ({"replay.rounds": 4}, "replay.rounds: 2 → 4 changes the graph's stages")]:
        with pytest.raises(ParamsError) as err:
            apply_overrides(text, overrides)
        assert named in str(err.value), (overrides, str(err.value))
