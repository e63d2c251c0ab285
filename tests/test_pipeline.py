"""The cached pipeline on the smoke preset, in a temporary git repository: what reruns and what does
not, under `dvc repro`, `dvc exp run -S …` and the Prefect flow. Stage sets are read from the
tools' own output and compared."""
import fcntl
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from params import STRUCTURAL_KEYS, dump_params, load_params, preset

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

RUNNING = re.compile(r"Running stage '([^']+)'")


def sh(cmd, cwd, check=True, env=None):
    r = subprocess.run(cmd, shell=True, cwd=cwd, capture_output=True, text=True, env=env)
    if check and r.returncode:
        raise AssertionError(f"{cmd} exited {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def ran(result) -> set[str]:
    return set(RUNNING.findall(result.stdout + result.stderr))


def smoke_env(path: Path) -> dict:
    return {**os.environ, "DVC_NO_ANALYTICS": "1", "WANDB_MODE": "disabled", "PREFECT_HOME": str(path / ".prefect"),
            "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
            "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}


def smoke_repo(path):
    """A git + DVC repository at `path` holding the project's files with the smoke preset, reproduced
    once; returns (path, env, the first repro's result)."""
    tracked = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
    for f in tracked:
        if (ROOT / f).is_file() and not f.startswith(("artifacts/", "metrics/", "plots/")) and f != "dvc.lock":
            (path / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, path / f)
    env = smoke_env(path)
    (path / "params.yaml").write_text(dump_params(preset("smoke")))
    sh("git init -q && python -m pipeline.render", path, env=env)
    sh("git add -A && git commit -qm smoke", path, env=env)
    first = sh("dvc repro", path, env=env)
    sh("git add -A && git commit -qm reproduced", path, env=env)
    return path, env, first


def shared_folder(tmp_path_factory) -> Path:
    """A folder of this test session that every pytest-xdist worker of it sees."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def smoke_origin(tmp_path_factory, prefect_server):
    """The cold smoke repository, reproduced once per test session (the first worker to need it builds
    it; the others wait for it): (its path, the first `dvc repro`'s output)."""
    shared = shared_folder(tmp_path_factory)
    origin, log = shared / "smoke-origin", shared / "smoke-origin.log"
    with open(shared / "smoke-origin.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not log.exists():
            shutil.rmtree(origin, ignore_errors=True)
            origin.mkdir()
            _, _, first = smoke_repo(origin)
            log.write_text(first.stdout + first.stderr)
    return origin, subprocess.CompletedProcess("dvc repro", 0, log.read_text(), "")


@pytest.fixture
def repo(smoke_origin, tmp_path):
    """A copy of the reproduced smoke repository of this test's own, which it may change at will:
    (path, env, the first repro's result). Its flows report to the session's Prefect server."""
    origin, first = smoke_origin
    path = tmp_path / "repo"
    shutil.copytree(origin, path, symlinks=True)
    return path, smoke_env(path), first


def out_hashes(path) -> dict:
    """Every stage output's md5 in dvc.lock."""
    lock = yaml.safe_load((path / "dvc.lock").read_text())
    return {(name, o["path"]): o["md5"] for name, st in lock["stages"].items() for o in st.get("outs", [])}


def flow_here(capsys, path: Path, *args: str) -> subprocess.CompletedProcess:
    """`python -m pipeline.flow ARGS` on `path`, run in this process (its flows report to the session's
    Prefect server): a new Python with Prefect, DVC and torch would cost ~4 s of CPU more."""
    from pipeline.flow import main

    capsys.readouterr()
    code = main(["--root", str(path), *args])
    out = capsys.readouterr()
    return subprocess.CompletedProcess(["pipeline.flow", *args], code, out.out, out.err)


def test_cold_repro_runs_every_stage_and_writes_the_outputs(repo):
    path, env, first = repo
    assert len(ran(first)) == 13
    summary = json.loads((path / "metrics/summary.json").read_text())
    assert summary["method"] == "guide" and len(summary["accuracy_matrix"]) == 2
    assert (path / "plots/accuracy_matrix.png").exists() and (path / "plots/replay/task1.png").exists()
    manifest = json.loads((path / "artifacts/replay/task1/round0/manifest.json").read_text())
    assert {"count", "classes", "guidance", "sources", "sha256"} <= set(manifest)
    assert not list(path.rglob("*.tmp"))  # nothing half-written left behind


def test_second_repro_runs_no_stage(repo):
    path, env, _ = repo
    again = sh("dvc repro", path, env=env)
    assert ran(again) == set() and "up to date" in again.stdout


@pytest.mark.parametrize("module,some_stage", [("stages/paths.py", "diffusion-t0"),
                                               ("params/schema.py", "evaluate-t1"),
                                               ("stages/replay.py", "replay-t1-r0")])
def test_editing_a_module_a_stage_imports_makes_dvc_call_that_stage_changed(repo, module, some_stage):
    path, env, _ = repo
    original = (path / module).read_text()
    try:
        (path / module).write_text(original + "# an edit\n")
        status = sh("dvc status --json", path, env=env).stdout
        changed = json.loads(status)
        assert some_stage in changed
        assert all(module in json.dumps(why) for why in changed.values())  # changed for that edit only
    finally:
        (path / module).write_text(original)
    assert json.loads(sh("dvc status --json", path, env=env).stdout) == {}


def test_structural_change_stops_at_once_naming_the_render_command(repo):
    path, env, _ = repo
    r = sh("dvc exp run -S replay.rounds=4", path, env=env, check=False)
    assert r.returncode != 0
    assert "python -m pipeline.render" in r.stdout + r.stderr
    assert ran(r) == {"check-graph"}


def test_flow_reruns_what_changed_clears_a_stages_outputs_first_and_leaves_dvc_status_clean(repo, capsys):
    """A changed evaluation batch size reruns the evaluations; a stray file in a replay stage's output
    folder (left by a killed run) makes DVC call that stage changed: the flow removes it with the
    stage's outputs before rerunning it, and the rerun writes the same bytes, so nothing after it runs.
    A stage that ran with a progress bar shows it as a Prefect progress artifact of its task run."""
    path, env, _ = repo
    params = (path / "params.yaml").read_text()
    (path / "params.yaml").write_text(params.replace("batch_size: 500", "batch_size: 250"))
    stray = path / "artifacts/replay/task1/round0/stray.tmp"
    stray.write_text("left behind by a killed run")
    r = flow_here(capsys, path)
    assert r.returncode == 0, r.stderr[-2000:]
    flow_ran = re.search(r"(\d+) of 13 stages ran: (.*)", r.stdout)
    assert flow_ran, r.stdout[-500:]
    assert set(flow_ran.group(2).strip().split(", ")) - {"report"} == {"replay-t1-r0", "evaluate-t0", "evaluate-t1"}
    assert not stray.exists()
    status = sh("dvc status", path, env=env)
    assert "up to date" in status.stdout
    # the stage that ran with a progress bar (sampling) showed it as a progress artifact of its task run
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterType

    with get_client(sync_client=True) as client:
        shown = {}
        for a in client.read_artifacts(artifact_filter=ArtifactFilter(type=ArtifactFilterType(any_=["progress"]))):
            run = client.read_task_run(a.task_run_id)
            if client.read_flow_run(run.flow_run_id).parameters.get("root") == str(path):
                shown[run.name] = (a.data, a.description)
    assert set(shown) == {"replay-t1-r0"}, shown  # of those that ran, the one with a progress bar
    assert shown["replay-t1-r0"][0] == 100 and shown["replay-t1-r0"][1].startswith("replay-t1-r0 — replay@1.0: "), shown


SERVER = "prefect.server.api.server:create_app"  # in the command line of every Prefect server process


class ServerWatch:
    """Samples the process table while a command runs: the pids of Prefect servers that were not
    running when it started and whose PREFECT_HOME is under `home` (the command's own: a session
    server that the other pytest-xdist worker starts meanwhile is not counted)."""

    def __init__(self, home: Path):
        self.home = str(home).encode()
        self.before, self.seen, self._stop = self.servers(), set(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def servers(self) -> set[int]:
        found = set()
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    if SERVER.encode() in (proc / "cmdline").read_bytes() and any(
                            v.startswith(b"PREFECT_HOME=" + self.home) for v in (proc / "environ").read_bytes().split(b"\0")):
                        found.add(int(proc.name))
                except OSError:
                    pass
        return found

    def _run(self):
        while not self._stop.wait(1.0):  # a server lives for the whole flow run: a look a second finds it
            self.seen |= self.servers() - self.before

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def cache_objects(cache: Path, md5: str) -> list[Path]:
    """The files of a DVC cache (`.dvc/cache/files` or a local remote's `files`) that hold the output
    with lock hash `md5`: its object, and a folder's member objects too."""
    path = cache / "md5" / md5[:2] / md5[2:]
    members = [cache / "md5" / m["md5"][:2] / m["md5"][2:] for m in json.loads(path.read_text())] \
        if md5.endswith(".dir") else []
    return [path, *members]


def launch_through_the_deployment(path: Path, env: dict, *overrides: dict) -> tuple[list, str]:
    """Serve the deployment in `path` (`python -m pipeline.flow --serve`, reporting to the session's
    Prefect server) and create a run for each of `overrides` through the client, as the UI does, one
    after the other; returns the finished flow runs and the served process's output."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    from pipeline.deploy import DEPLOYMENT, FLOW

    serving = subprocess.Popen([sys.executable, "-m", "pipeline.flow", "--serve"], cwd=path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        with get_client(sync_client=True) as client:
            for _ in range(1500):
                assert serving.poll() is None, serving.communicate()[0][-3000:]
                try:
                    client.read_deployment_by_name(f"{FLOW}/{DEPLOYMENT}")
                    break
                except Exception:  # not registered yet
                    time.sleep(0.2)
        runs = [run_deployment(f"{FLOW}/{DEPLOYMENT}", parameters={"overrides": o}, timeout=900, poll_interval=1,
                               as_subflow=False) for o in overrides]
    finally:
        serving.terminate()
        log = serving.communicate(timeout=120)[0]
    return runs, log


def test_a_deployment_run_and_the_flow_on_dask_workers_write_the_lock_dvc_exp_run_writes(repo, tmp_path,
                                                                                         prefect_server, capsys):
    """One change of params, evaluate.batch_size=16, made from the Prefect UI and with `dvc exp run
    -S`, then the experiment's results reproduced on Dask workers, on the smoke repository.

    Launched from the Prefect UI: the deployment's flow given a bad value (guidance.scale "loud")
    fails naming the field before anything runs; the deployment (`python -m pipeline.flow --serve`,
    against the session's Prefect server) given the change by a run created through the client reruns
    only the stages that read it, records a DVC experiment and leaves the workspace at the last
    commit. `dvc exp run -S evaluate.batch_size=16` then runs nothing: it restores every stage the deployment ran from DVC's run cache (the flow's commits
    filled it) and writes the deployment's experiment's dvc.lock; it shows in `dvc exp show`.

    On Dask: the flow on a 2-process Dask cluster with `--exchange remote`, in a second repository
    that starts as the experiment left the first (its params, lock and data, pulled from a
    local-directory DVC remote) and no Prefect server, but with the replay and classifier outputs of
    task 1's last round gone from the workspace, its cache and the remote. Those two stages run in the
    workers' own clones, the classifier pulling from the remote what the replay stage pushed there,
    never in the driver's folder. dvc.lock comes out as the experiment's (so byte-identical artifacts),
    every cached output is in the remote and `dvc status` is clean after. Prefect: without
    PREFECT_API_URL the flow starts exactly one server, for the driver and every worker, and every
    stage's task run is recorded by it. Uncommitted tracked files are refused in one line."""
    pytest.importorskip("prefect_dask")
    path, env, _ = repo
    fresh, remote, spaces = tmp_path / "driver", tmp_path / "remote", tmp_path / "workers"

    from pipeline.deploy import guide_experiment  # the deployment's flow, here in this process

    bad = guide_experiment(overrides={"guidance.scale": "loud"}, root=str(path), return_state=True)
    assert bad.is_failed() and "guidance.scale" in bad.message, bad.message
    assert not sh("git status --porcelain --untracked-files=no", path, env=env).stdout.strip()
    (good,), log = launch_through_the_deployment(path, env, {"evaluate.batch_size": 16})
    assert good.state.is_completed(), good.state.message + log[-3000:]
    deployed = re.search(r"(\d+) of 13 stages ran: (.*)", log)
    assert deployed, log[-3000:]
    deployed = set(deployed.group(2).strip().split(", "))
    must = {"evaluate-t0", "evaluate-t1"}
    assert must <= deployed <= must | {"report"}  # report only if an accuracy moved
    name = re.search(r"DVC experiment (\S+):", log).group(1)
    assert not sh("git status --porcelain --untracked-files=no", path, env=env).stdout.strip()
    assert "up to date" in sh("dvc status", path, env=env).stdout  # the workspace is the last commit's

    r = sh("dvc exp run -S evaluate.batch_size=16", path, env=env)
    exp_ran = set(re.findall(r"Stage '([^']+)' is cached - skipping run", r.stdout + r.stderr))
    assert ran(r) == set() and exp_ran == deployed, r.stdout[-2000:]  # all from the run cache
    shows = sh("dvc exp show --json", path, env=env).stdout
    assert name in shows and "final_average_accuracy" in shows
    lock = (path / "dvc.lock").read_text()
    sh(f"dvc exp apply {name}", path, env=env)
    assert (path / "dvc.lock").read_text() == lock and load_params(path / "params.yaml").evaluate.batch_size == 16

    # a local remote and a second repository holding what the experiment made, but for the two
    # stages below: their outputs gone from its workspace, its cache and the remote
    shutil.copytree(path / ".dvc" / "cache" / "files", remote / "files")
    for f in sh("git ls-files", path, env=env).stdout.split():  # as the experiment left them: params, lock
        (fresh / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path / f, fresh / f)
    sh(f"git init -q && dvc remote add -q -d store {remote} && git add -A && git commit -qm experiment && dvc pull -q",
       fresh, env=env)
    rerun = {"replay-t1-r1", "classifier-t1-r1"}
    for name in rerun:
        for out in yaml.safe_load((fresh / "dvc.lock").read_text())["stages"][name]["outs"]:
            shutil.rmtree(fresh / out["path"]) if (fresh / out["path"]).is_dir() else (fresh / out["path"]).unlink()
            for cache in (fresh / ".dvc" / "cache" / "files", remote / "files"):
                for obj in cache_objects(cache, out["md5"]):
                    obj.unlink(missing_ok=True)
    # DVC lists their downstream stages too (a dependency is missing); rerun, the two stages write the
    # same bytes, so the flow finds those unchanged and runs only the two
    assert set(json.loads(sh("dvc status --json", fresh, env=env).stdout)) == rerun | {"evaluate-t1", "report"}
    # float reductions depend on the thread count: the stages get the threads `dvc repro` gave them
    # (tests/conftest.py sets OMP_NUM_THREADS); a Prefect home of its own, and no server to report to
    alone = {**{k: v for k, v in env.items() if k != "PREFECT_API_URL"}, "GUIDE_FLOW_WORKSPACES": str(spaces),
             "PREFECT_HOME": str(tmp_path / "prefect")}
    flow = "python -m pipeline.flow --runner dask --workers 2 --exchange remote"
    with ServerWatch(tmp_path / "prefect") as watch:
        r = sh(flow, fresh, env=alone)
    flow_ran = re.search(r"(\d+) of 13 stages ran: (.*)", r.stdout)
    assert flow_ran and set(flow_ran.group(2).split(", ")) == rerun, r.stdout[-500:]
    assert "a temporary server for this run" in r.stdout
    assert len(watch.seen) == 1, f"{len(watch.seen)} Prefect servers served one flow run"
    lock = yaml.safe_load((fresh / "dvc.lock").read_text())
    assert lock == yaml.safe_load((path / "dvc.lock").read_text())
    assert len(out_hashes(fresh)) >= 13  # the same lock, so byte-identical artifacts for every output
    with sqlite3.connect(tmp_path / "prefect" / "prefect.db") as db:  # the one server's record of the run
        runs = db.execute("SELECT t.name, t.state_type FROM task_run t JOIN flow_run f ON t.flow_run_id = f.id "
                          "WHERE f.id = (SELECT id FROM flow_run ORDER BY start_time DESC LIMIT 1)").fetchall()
    assert sorted(n for n, _ in runs) == sorted(lock["stages"])  # the 13 stages, each once
    assert {s for _, s in runs} == {"COMPLETED"}
    clones = list((spaces / "guide-flow").iterdir())
    assert clones and all((c / "artifacts").is_dir() for c in clones)  # the stages ran there, not in `fresh`
    cached = {o["md5"] for st in lock["stages"].values() for o in st.get("outs", [])
              if not o["path"].startswith(("metrics/", "plots/"))}
    in_remote = {f"{d.name}{f.name}" for d in (remote / "files" / "md5").iterdir() for f in d.iterdir()}
    assert len(cached) >= 8 and cached <= in_remote
    assert "up to date" in sh("dvc status", fresh, env=env).stdout
    (fresh / "params.yaml").write_text((fresh / "params.yaml").read_text() + "\n")
    r = flow_here(capsys, fresh, "--runner", "dask", "--workers", "2", "--exchange", "remote")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [r.stderr.strip()], r.stderr
    assert "params.yaml" in r.stderr and "commit them first" in r.stderr


def test_the_flow_on_a_local_ray_cluster_reruns_what_is_stale_and_leaves_dvc_status_clean(repo):
    """`--runner ray` on the reproduced smoke repository: only the stage whose output went missing runs,
    on a Ray worker, and DVC agrees with the result. Given PREFECT_API_URL, the Ray workers report to
    that server and start none of their own."""
    pytest.importorskip("prefect_ray")
    path, env, _ = repo
    before = out_hashes(path)
    (path / "metrics/summary.json").unlink()
    with ServerWatch(path) as watch:  # a server a Ray worker started would have the repository's home
        r = sh("python -m pipeline.flow --runner ray --workers 2", path, env=env)
    assert "1 of 13 stages ran: report" in r.stdout, r.stdout[-500:]
    assert watch.seen == set(), "a Ray worker started a Prefect server of its own"
    assert "up to date" in sh("dvc status", path, env=env).stdout
    assert out_hashes(path) == before


def test_a_forced_rerun_changes_no_hash_and_reruns_nothing_downstream(repo):
    path, env, _ = repo
    before = out_hashes(path)
    r = sh("dvc repro -f -s diffusion-t0", path, env=env)
    assert ran(r) == {"diffusion-t0"}
    again = sh("dvc repro", path, env=env)
    assert ran(again) == set() and out_hashes(path) == before


def test_flow_refuses_at_once_while_another_dvc_process_holds_the_repository(repo, capsys):
    path, env, _ = repo
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom dvc.repo import Repo\n"
                               "r = Repo('.'); r.lock.lock(); print('locked', flush=True); time.sleep(120)"],
                              cwd=path, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        r = flow_here(capsys, path)
        assert r.returncode == 2 and "Traceback" not in r.stderr
        lines = [x for x in r.stderr.splitlines() if x.strip()]
        assert len(lines) == 1, lines  # one line, even for a holder whose command spans lines
        assert lines[0].startswith("pipeline.flow: another DVC process holds the repository")
        assert f"pid {holder.pid}" in lines[0]
        assert ran(r) == set() and "stages ran" not in r.stdout
        # the deployment's flow likewise, before it writes anything (and restores nothing)
        from pipeline.deploy import guide_experiment

        params = (path / "params.yaml").read_text()
        state = guide_experiment(overrides={"guidance.scale": 0.5}, root=str(path), return_state=True)
        assert state.is_failed() and f"pid {holder.pid}" in state.message, state.message
        assert (path / "params.yaml").read_text() == params
    finally:
        holder.kill()
        holder.wait()


def test_a_failed_stage_under_the_flow_is_one_line_with_the_command_to_resume(repo, tmp_path, capsys,
                                                                              monkeypatch):
    path, env, _ = repo
    params = (path / "params.yaml").read_text()
    (path / "params.yaml").write_text(params.replace("wandb: disabled", "wandb: online"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)  # the stages the flow starts: no key, no netrc
    monkeypatch.setenv("HOME", str(tmp_path))
    r = flow_here(capsys, path)
    assert r.returncode == 1 and "Traceback" not in r.stdout + r.stderr
    # Prefect may log lines of its own; ours is the one report line
    lines = [x for x in r.stderr.splitlines() if x.startswith("stage ")]
    assert len(lines) == 1 and lines[0].startswith("stage report failed (exit 2): python -m stages.report")
    assert "resume with `python -m pipeline.flow`" in lines[0]


# run settings that choose how to compute, not what: no stage declares them
EXECUTION = {"run.threads", "run.device", "run.resume_every"}
NOT_READ_IN_SMOKE = {"data.image_size", "data.root"}  # real datasets only: the smoke data is synthetic


def _covered(key: str, declared) -> bool:
    return any(key == d or key.startswith(d + ".") for d in declared)


def test_each_stage_reads_the_params_it_declares_and_no_other(repo, tmp_path, monkeypatch):
    """Each smoke stage, run again (in this process, through the entry point its command calls) with
    its params reads recorded: every key it reads is declared in dvc.yaml (structural keys are
    declared once, by check-graph, whose output every stage depends on), every declared key or group
    is read, and every leaf of the schema is read by some stage."""
    from params.record import leaves
    from pipeline.graph import build_graph
    from pipeline.inprocess import run_stage_in_process

    path, env, _ = repo
    monkeypatch.chdir(path)
    p = load_params(path / "params.yaml")
    read: set[str] = set()
    for st in build_graph(p):
        if st.kind == "check_graph":
            continue
        record = tmp_path / f"{st.name}.json"
        monkeypatch.setenv("GUIDE_RECORD_PARAMS", str(record))
        run_stage_in_process(st)
        keys = {k for k in json.loads(record.read_text()) if k not in EXECUTION and not k.startswith("tracking.")}
        declared = [d for d in st.params if d != "tracking"]
        assert {k for k in keys if not _covered(k, (*declared, *STRUCTURAL_KEYS))} == set(), st.name
        assert {d for d in declared if not any(_covered(k, (d,)) for k in keys)} == set(), st.name
        read |= keys
    assert json.loads(sh("dvc status --json", path, env=env).stdout) == {}  # the reruns wrote the same bytes
    never = {k for k in leaves(p) if k not in read and k not in EXECUTION and k not in STRUCTURAL_KEYS
             and not k.startswith("tracking.")}
    assert never == NOT_READ_IN_SMOKE


def test_a_flow_run_after_repro_reruns_nothing_and_publishes_the_science_as_prefect_artifacts(repo, capsys):
    path, env, _ = repo
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from pipeline.flow import main

    assert main(["--root", str(path)]) == 0
    assert "0 of 13 stages ran" in capsys.readouterr().out
    with get_client(sync_client=True) as client:
        def latest(key):
            found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
            assert found, key
            return max(found, key=lambda a: a.created)

        table = latest("accuracy-matrix")
        summary = json.loads((path / "metrics/summary.json").read_text())
        rows = json.loads(table.data) if isinstance(table.data, str) else table.data
        assert [r["after task 1"] for r in rows] == [round(v, 4) for v in (row[1] for row in summary["accuracy_matrix"])]
        metrics = latest("final-metrics")
        assert f"| final_average_accuracy | {summary['final_average_accuracy']:.4f} |" in metrics.data
        grid = latest("replay-task1")
        assert "data:image/png;base64," in grid.data and "| guided |" in grid.data
        runs = {r.name: r for r in client.read_task_runs() if r.id == table.task_run_id or r.name == "replay-t1-r0"}
        assert set(runs["report"].tags) >= {"kind:report", "method:guide"}
        assert set(runs["replay-t1-r0"].tags) >= {"kind:replay", "task:1", "round:0", "method:guide"}


def test_every_training_stage_writes_its_curve_and_dvc_plots_show_draws_them(repo):
    """plots/curves/: one CSV per training stage, a row every 50 (diffusion) or 20 (classifier, oracle)
    steps and at the last; `dvc plots show --json` renders every one with no error."""
    from params import load_params
    from pipeline.graph import build_graph

    path, env, _ = repo
    p = load_params(path / "params.yaml")
    every = {"diffusion": 50, "classifier": 20, "oracle": 20}
    curves = []
    for st in build_graph(p):
        if st.kind not in every:
            continue
        (curve,) = [o for o in st.outs if o.startswith("plots/curves/")]
        task = int(dict(a.split() for a in st.args).get("--task", 0))
        rnd = int(dict(a.split() for a in st.args).get("--round", 0))
        if st.kind == "diffusion":
            first, last = 0, p.diffusion.steps_first if task == 0 else p.diffusion.steps_later
        elif st.kind == "oracle":
            first, last = 0, p.oracle.steps
        else:
            per = (p.classifier.steps_first if task == 0 else p.classifier.steps_later) // p.classifier_rounds(task)
            first, last = rnd * per, (rnd + 1) * per
        rows = (path / curve).read_text().splitlines()
        steps = [int(r.split(",")[0]) for r in rows[1:]]
        assert steps == sorted({s for s in range(first + 1, last + 1) if s % every[st.kind] == 0} | {last}), curve
        assert all(len(r.split(",")) == len(rows[0].split(",")) and "" not in r.split(",")[:2] for r in rows[1:])
        curves.append(curve)
    assert len(curves) == 1 + p.data.num_tasks + sum(p.classifier_rounds(t) for t in range(p.data.num_tasks))
    shown = json.loads(sh("dvc plots show --json", path, env=env).stdout)
    assert [e for e in shown.get("errors", []) if e["source"].startswith("plots/curves/")] == []
    # each curve file is drawn with data rows: a plot of several files names each row's file, a plot
    # of one file does not
    defined = {name: spec for item in yaml.safe_load((path / "dvc.yaml").read_text())["plots"] if isinstance(item, dict)
               for name, spec in item.items()}
    drawn = set()
    for name, renders in shown["data"].items():
        rows = [v for r in renders if r.get("type") == "vega" for v in r["content"].get("data", {}).get("values", [])]
        files = list(defined.get(name, {}).get("y", {}))
        drawn |= {v["filename"] for v in rows if "filename" in v} | ({Path(files[0]).name} if rows and len(files) == 1 else set())
    assert {Path(c).name for c in curves} <= drawn, sorted(drawn)
    # the curves are cached outputs (so the run cache restores their stages), and a forced rerun writes
    # the same bytes: test_a_forced_rerun_changes_no_hash_and_reruns_nothing_downstream
    stages = yaml.safe_load((path / "dvc.yaml").read_text())["stages"]
    assert "plots/curves/diffusion-t0.csv" in stages["diffusion-t0"]["outs"]  # a plain, cached output
