"""Run the graph as a Prefect flow: one task run per stage, with the stage's log, independent
stages side by side. DVC stays the one record of what is fresh: each task asks `dvc status` for its
stage, runs the stage's command only when it is stale, then `dvc commit`s it into dvc.lock — so
after `dvc repro` a flow run reruns nothing, and after a flow run `dvc status` is clean.

    python -m pipeline.flow                 # run (without PREFECT_API_URL: one temporary Prefect server
                                            # for the run, which every worker reports to)
    python -m pipeline.flow --workers 2     # at most 2 stages at a time, each with its share of the cores
                                            # (default: 1 below 4 cores, else 2 — see default_workers)
    python -m pipeline.flow --runner dask   # the stages on a temporary local Dask cluster (--address: an existing one)
    python -m pipeline.flow --runner ray    # ... or Ray (--address ray://HOST:10001; --stage-gpus 1 on GPU workers)
    python -m pipeline.flow --runner dask --exchange remote   # workers without the driver's folder:
                                            # data through the default DVC remote (pipeline/exchange.py)
    python -m pipeline.flow --serve         # serve the deployment that launches runs from the Prefect UI,
                                            # each a DVC experiment (pipeline/deploy.py)
    prefect server start                    # then, in another shell, set PREFECT_API_URL and run:
    PREFECT_API_URL=http://127.0.0.1:4200/api python -m pipeline.flow   # watch it at http://127.0.0.1:4200

What DVC guarantees, the flow keeps:
- it holds DVC's repository lock from start to end, as `dvc repro` does: started beside a running
  `dvc repro` (or another flow) it refuses at once, naming the process that holds the lock, and a
  `dvc repro` started beside it refuses likewise — no stage ever runs twice at once;
- a stage's outputs are removed before its command runs, as `dvc repro` removes them;
- a stage that fails or is killed is reported in one line with the command that resumes the run;
  the stages after it do not run, and everything that finished is committed to dvc.lock.
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no telemetry: nothing leaves the machine

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.futures import as_completed  # noqa: E402
from prefect.states import Failed  # noqa: E402
from prefect.task_runners import ThreadPoolTaskRunner  # noqa: E402

from guide.metrics import METRICS  # noqa: E402
from params import ParamsError, load_params  # noqa: E402
from pipeline import exchange, tool_env  # noqa: E402
from pipeline.graph import build_graph, uncached  # noqa: E402
from pipeline.render import render  # noqa: E402
from stages import paths  # noqa: E402

RESUME = "python -m pipeline.flow"


class RepositoryBusy(RuntimeError):
    """Another process holds DVC's repository lock."""


def lock_holder(root: str) -> str:
    """Who holds `.dvc/tmp/lock`, as well as the lock file tells (DVC writes the holder's pid)."""
    lockfile = Path(root) / ".dvc" / "tmp" / "lock"
    try:
        pid = int(lockfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return f"{lockfile}"
    try:
        cmd = " ".join(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().split())
    except OSError:
        cmd = ""
    cmd = cmd if len(cmd) <= 160 else cmd[:157] + "..."  # one line, whatever the holder's command was
    return f"{lockfile}, pid {pid}" + (f": {cmd}" if cmd else "")


class Repository:
    """DVC's view of the repository, locked for the whole flow. Status and commit go through this
    one locked instance (DVC's lock is re-entrant within it), one at a time."""

    def __init__(self, root: str):
        self.root = root
        self._mutex = threading.Lock()
        self._initial: dict | None = None  # every stage's status when the flow started (see `changes`)

    def __enter__(self) -> "Repository":
        from dvc.lock import LockError
        from dvc.repo import Repo, lock_repo

        self.repo = Repo(self.root)
        self._locked = lock_repo(self.repo)
        try:
            self._locked.__enter__()
        except LockError:
            self.repo.close()
            raise RepositoryBusy(f"another DVC process holds the repository ({lock_holder(self.root)}); "
                                 f"wait for it to finish, then run `{RESUME}` again") from None
        return self

    def __exit__(self, *exc) -> bool:
        self._locked.__exit__(*exc)
        self.repo.close()
        return False

    def status(self, name: str | None = None) -> dict:
        """DVC's status of stage `name`, or of every stage (one read of dvc.yaml and dvc.lock)."""
        with self._mutex:
            self.repo._reset()  # what earlier commits wrote, not a cached index
            return self.repo.status(targets=[name] if name else None)

    def changes(self, name: str, fresh_upstream: bool = False) -> str:
        """What DVC finds changed for stage `name`, as one line ("" when it is up to date).
        `fresh_upstream`: no stage upstream of it has run in this flow, so the status of every
        stage read once at the start still holds for it (the flow holds the repository lock, and only
        a stage that runs changes files) — DVC reads its two YAML files once, not once per stage
        (0.4 s a stage on the smoke graph)."""
        if fresh_upstream:
            if self._initial is None:
                self._initial = self.status()
            changed = self._initial.get(name)
        else:
            changed = self.status(name)
            changed = changed.get(name, changed) if changed else None
        return describe_changes(changed) if changed else ""

    def commit(self, name: str) -> None:
        with self._mutex:
            self.repo._reset()
            self.repo.commit(name, force=True)

    def record(self, name: str, entry: dict, files: dict[str, bytes]) -> None:
        """A stage a worker ran in its own workspace: its uncached outputs written here, its lock
        entry recorded and its cached outputs pulled from the remote (pipeline/exchange.py)."""
        with self._mutex:
            exchange.write_files(self.root, files)
            exchange.record(self.repo, name, entry)


def describe_changes(status) -> str:
    """DVC's status of one stage as one line a person reads: what changed, grouped by kind, e.g.
    "params changed: guidance.scale; deps modified: artifacts/diffusion/t0.pt; outputs deleted: …"."""
    items = status if isinstance(status, list) else [status]
    groups: dict[str, list[str]] = {}
    for item in items:
        if isinstance(item, str):  # "changed command", "always changed"
            groups.setdefault(item, [])
            continue
        for kind, entries in item.items():
            side = "deps" if "dep" in kind else "outputs"
            for path, what in entries.items():
                if isinstance(what, dict):  # a params file: {key: "modified" | "new" | "deleted"}
                    for key, how in what.items():
                        groups.setdefault(f"params {how}", []).append(key)
                else:
                    groups.setdefault(f"{side} {what}", []).append(path)
    return "; ".join(f"{k}: {', '.join(v)}" if v else k for k, v in groups.items())


_repository: Repository | None = None  # the flow's locked repository, shared by its task runs


def clear_outputs(root: str, outputs: list[str]) -> None:
    """Remove a stage's outputs before it runs, as `dvc repro` does."""
    for out in outputs:
        path = Path(root) / out
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def default_workers(cores: int | None = None) -> int:
    """Stages side by side when --workers is not given: 1 on a machine of fewer than 4 cores, else 2.
    Measured on 2 cores (the default run, cold): 1 worker with both cores 16 min 48 s, 2 workers with
    one core each 20 min 46 s (`dvc repro`: 17 min 25 s) — the diffusion chain is the critical path and
    wants every core; splitting 2 cores between branches slows it more than overlapping gains."""
    return 1 if (cores or os.cpu_count() or 1) < 4 else 2


def thread_env(workers: int, cores: int | None = None, processes: int = 1) -> dict[str, str]:
    """Each of `workers` side-by-side stages gets its share of the cores: two torch processes with a
    thread per core each thrash (measured on 2 cores: a diffusion step 0.17 s alone, ~1 s beside
    another). A data-parallel stage's `processes` ranks split their stage's share. `run.threads`,
    when set, still wins inside the stage. An OMP_NUM_THREADS the user set is kept (per process, as
    torchrun reads it). Always explicit: a Dask worker's own environment says 1 thread (Dask's
    default)."""
    per_stage = max(1, (cores or os.cpu_count() or 1) // max(1, workers))
    share = os.environ.get("OMP_NUM_THREADS") or str(max(1, per_stage // max(1, processes)))
    return {"OMP_NUM_THREADS": share, "MKL_NUM_THREADS": share}


def describe_exit(code: int) -> str:
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        return f"killed by {name}"
    if code == 137:
        return "killed (exit 137: SIGKILL, often out of memory)"
    return f"exit {code}"


@task(name="stage", retries=0)
def run_stage(name: str, cmd: str, root: str, outputs: list[str], threads: dict[str, str], changed: str,
              remote: dict | None = None):
    """Run one stage that DVC found stale (`changed`: what changed, "" when fresh) in `root`, on whichever worker
    the task runner gives it; a fresh stage only publishes. Returns "ran" or "fresh", or a Failed
    state. The flow, not the worker, asked DVC and commits the result into dvc.lock.

    With `remote` (`--exchange remote`), the stage runs in this worker's own clone instead of `root`:
    its upstream outputs pulled from the DVC remote, its outputs pushed there, and ("ran", lock entry,
    uncached output files) returned for the driver to record."""
    logger = get_run_logger()
    if not changed:
        logger.info("%s is up to date; skipped", name)
        if remote is None:
            publish(root, outputs)  # every flow run shows the results, fresh or not
        return "fresh"
    logger.info("%s: %s", name, changed)
    env = {**tool_env(), "PYTHONUNBUFFERED": "1", **threads}
    if remote is not None:
        root = str(exchange.workspace(remote["url"], remote["commit"]))
        logger.info("workspace %s: pulling %s", root, ", ".join(remote["upstream"]) or "nothing")
        exchange.prepare(Path(root), remote["lock"], remote["upstream"], remote["files"])
    clear_outputs(root, outputs)
    logger.info("$ %s", cmd)
    proc = subprocess.Popen(cmd, shell=True, cwd=root, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    bars = StageProgress(name)
    for line in proc.stdout:  # text mode reads a progress bar's every "\r" redraw as a line
        line = line.rstrip().rsplit("\r", 1)[-1]
        if line:
            logger.info(line)
            bars.see(line)
    if proc.wait():
        return Failed(message=f"stage {name} failed ({describe_exit(proc.returncode)}): {cmd}")
    publish(root, outputs)
    if remote is not None:
        entry = exchange.finish(Path(root), name)
        logger.info("%s pushed to the DVC remote", name)
        return "ran", entry, exchange.read_files(root, uncached(outputs))
    return "ran"


# a stage's tqdm line: "classifier@1.1:  45%|████▌     | 9/20 [00:03<00:04,  2.51it/s, loss=0.6]"
BAR = re.compile(r"^(?P<desc>\S+): +(?P<pct>\d+)%\|.*?\| *(?P<n>\d+)/(?P<total>\d+) \[(?P<elapsed>[^<\]]*)<(?P<left>[^,\]]*)")


class StageProgress:
    """A running stage's progress bars as one Prefect progress artifact of its task run (the UI's
    progress bar, and the artifact list's latest value): the percentage of the bar drawn last, and
    its steps, elapsed and remaining time as the description. Updated when a bar moves by 5 points,
    starts or ends: a few API calls a stage, whatever its length."""

    def __init__(self, stage: str):
        self.stage, self.id, self.shown = stage, None, None

    def see(self, line: str) -> None:
        m = BAR.match(line)
        if not m:
            return
        pct = float(m["pct"])
        if self.shown is not None and self.shown[0] == m["desc"] and self.shown[1] <= pct < min(self.shown[1] + 5, 100):
            return
        from prefect.artifacts import create_progress_artifact, update_progress_artifact

        text = f"{self.stage} — {m['desc']}: {m['n']}/{m['total']}, {m['elapsed'].strip()} elapsed, " \
               f"{m['left'].strip()} left"
        try:
            if self.id is None:
                self.id = create_progress_artifact(pct, description=text)
            else:
                update_progress_artifact(self.id, pct, description=text)
        except Exception as err:  # progress is a courtesy: a stage never fails over it
            get_run_logger().warning("progress artifact not updated: %s", " ".join(str(err).split())[:200])
            self.id = self.shown = None
            return
        self.shown = (m["desc"], pct)


def publish(root: str, outputs: list[str]) -> None:
    """Prefect artifacts of what a stage made, linked to its task run: the accuracy matrix as a table
    and the final metrics (report); the replay grid and the replay measurements (guided replay)."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    root_path = Path(root)
    if paths.SUMMARY in outputs and (root_path / paths.SUMMARY).is_file():
        s = json.loads((root_path / paths.SUMMARY).read_text())
        matrix = s["accuracy_matrix"]
        rows = [{"task": i, **{f"after task {j}": ("" if v is None else round(v, 4)) for j, v in enumerate(row)}}
                for i, row in enumerate(matrix)]
        create_table_artifact(rows, key="accuracy-matrix",
                              description="accuracy on task (row) after training task (column)")
        keys = (*METRICS, "oracle_test_accuracy")
        lines = [f"| {k} | {s[k]:.4f} |" for k in keys if isinstance(s.get(k), (int, float))]
        create_markdown_artifact("| metric | value |\n|---|---|\n" + "\n".join(lines), key="final-metrics",
                                 description="metrics/summary.json")
    grids = [o for o in outputs if o.startswith("plots/replay/") and (root_path / o).is_file()]
    measured = [o for o in outputs if o.startswith("metrics/replay/") and (root_path / o).is_file()]
    for grid in grids:
        task = Path(grid).stem  # task1
        image = base64.b64encode((root_path / grid).read_bytes()).decode()
        text = f"### Replay, {task}: top row unguided, bottom row guided, from the same noise\n\n" \
               f"![{task}](data:image/png;base64,{image})\n"
        for m in measured:
            r = json.loads((root_path / m).read_text())
            text += "\n| replay | " + " | ".join(r["guided"]) + " |\n|---|" + "---|" * len(r["guided"]) + "\n"
            text += "".join(f"| {view} | " + " | ".join(f"{v:.3f}" for v in r[view].values()) + " |\n"
                            for view in ("guided", "unguided"))
        create_markdown_artifact(text, key=f"replay-{task}", description=grid)


def stage_tags(stage, method: str) -> list[str]:
    """Tags a task run carries, so the UI can filter by stage kind, task, round and method."""
    tags = [f"kind:{stage.kind}", f"method:{method}"]
    args = dict(a.split() for a in stage.args if a.startswith(("--task", "--round")))
    tags += [f"{k.lstrip('-')}:{v}" for k, v in args.items()]
    return tags


@flow(name="guide-pipeline", log_prints=True)
def guide_pipeline(root: str = ".", params_path: str = "params.yaml", workers: int | None = None,
                   exchange_mode: str = "shared", repo_url: str | None = None,
                   stage_gpus: float = 0.0) -> dict[str, str]:
    """The task graph of params.yaml; returns each stage's outcome: "ran", "fresh", "failed: …" or
    "not run" (after a failure upstream). `exchange_mode` "remote": workers run stages in clones of
    `repo_url` (default: `root`) and exchange data through the DVC remote. `stage_gpus`: GPUs a
    training or sampling stage asks the Ray runner for."""
    workers = workers or default_workers()
    p = load_params(Path(root) / params_path)
    stages = build_graph(p)
    dvc_yaml = Path(root) / "dvc.yaml"
    if not dvc_yaml.exists() or dvc_yaml.read_text() != render(stages):
        raise RuntimeError(f"{dvc_yaml} does not match {params_path}: run `python -m pipeline.render` first")
    outcome: dict[str, str] = {}
    by_name = {st.name: st for st in stages}
    with locked(root) as repo:
        commit = exchange.check_driver(root, repo.repo) if exchange_mode == "remote" else None
        waiting, running = list(stages), {}
        while waiting or running:
            for st in list(waiting):  # submit every stage whose upstream is done, as DVC sees it now
                ups = [outcome.get(u) for u in st.upstream]
                if any(u is not None and u not in ("ran", "fresh") for u in ups):
                    outcome[st.name] = "not run"
                elif all(u is not None for u in ups):
                    changed = repo.changes(st.name, fresh_upstream=all(u == "fresh" for u in ups))
                    remote = None
                    if commit is not None and changed:
                        upstream = [by_name[u] for u in st.upstream]
                        remote = {"url": repo_url or root, "commit": commit, "upstream": [u.name for u in upstream],
                                  "lock": (Path(root) / exchange.LOCK).read_text()
                                  if (Path(root) / exchange.LOCK).exists() else "",
                                  "files": exchange.read_files(root, [o for u in upstream for o in uncached(u.outputs)])}
                    with resources(st.kind, stage_gpus, st.processes):
                        running[st.name] = run_stage.with_options(
                            task_run_name=st.name, tags=stage_tags(st, p.run.method)).submit(
                            st.name, st.cmd, root, list(st.outputs), thread_env(workers, processes=st.processes), changed, remote)
                else:
                    continue
                waiting.remove(st)
            if not running:
                continue
            done = next(as_completed(list(running.values())))
            name = next(n for n, f in running.items() if f is done)
            del running[name]
            done.wait()  # the final state, as the runner has it (`.state` alone may ask the API, which lags)
            state = done.state
            result = done.result() if state.is_completed() else f"failed: {state.message}"
            if isinstance(result, (tuple, list)):  # ran on a worker's own clone: record what it pushed
                result, entry, files = result
                repo.record(name, entry, files)
            elif result == "ran":
                repo.commit(name)  # before any stage after it asks DVC for its status
            outcome[name] = result
    return {st.name: outcome[st.name] for st in stages}


class locked:
    """The repository locked for the flow's task runs: the one `main` holds, or a new lock."""

    def __init__(self, root: str):
        self.root, self.own = root, None

    def __enter__(self):
        global _repository
        if _repository is None:
            self.own = _repository = Repository(self.root).__enter__()
        return _repository

    def __exit__(self, *exc):
        global _repository
        if self.own is not None:
            _repository = None
            self.own.__exit__(*exc)
        return False


RUNNERS = ("threads", "dask", "ray")
EXCHANGES = ("shared", "remote")
GPU_KINDS = ("rehearsal", "diffusion", "replay", "classifier", "oracle")  # the stages that train or sample


def resources(kind: str, gpus: float, processes: int = 1):
    """Ray's per-task resources for a stage, as a context for its submission: `gpus` GPUs per
    process (a data-parallel stage has `processes` ranks) for the stages that train or sample, none
    for the rest. A no-op for gpus=0, which the other runners always have (a Ray task asking for a
    GPU the cluster lacks would wait forever)."""
    if not gpus or kind not in GPU_KINDS:
        return contextlib.nullcontext()
    from prefect_ray.context import remote_options

    return remote_options(num_gpus=gpus * processes)


def task_runner(kind: str, workers: int, address: str | None = None):
    """Prefect's task runner for `kind`. With the default `--exchange shared`, stages run as
    subprocesses in the repository folder, so a Dask or Ray worker must see it at the same path (a
    local cluster, or workers on a shared filesystem); with `--exchange remote` they need not. The
    flow itself asks DVC for every status and writes every result into dvc.lock, from this process."""
    if kind == "threads":
        return ThreadPoolTaskRunner(max_workers=workers)
    if kind == "ray":
        try:
            from prefect_ray import RayTaskRunner
        except ImportError:
            raise ParamsError("--runner ray needs prefect-ray: pip install -e '.[ray]'") from None
        if address:
            return RayTaskRunner(address=address)
        # a temporary local Ray: one CPU slot per stage, so at most `workers` stages side by side
        return RayTaskRunner(init_kwargs={"num_cpus": workers, "include_dashboard": False,
                                          "log_to_driver": False})
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:
        raise ParamsError("--runner dask needs prefect-dask: pip install -e '.[dask]'") from None
    if address:
        return DaskTaskRunner(address=address)
    # one stage per worker process; the stage's threads come from thread_env, not from Dask
    return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True,
                                          "dashboard_address": None})


def api_url() -> str | None:
    """The Prefect API the user configured (environment or Prefect profile), if any."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


SERVER_STARTUP_S = 300  # how long the flow waits for its temporary Prefect server (Prefect's own default: 20 s)


@contextlib.contextmanager
def prefect_api(startup_s: float = SERVER_STARTUP_S):
    """The Prefect API this run reports to, as a context: PREFECT_API_URL when the user set one (a
    server they started, or Prefect Cloud); otherwise ONE temporary server for the whole run, started
    here and waited for up to `startup_s` seconds (on a slow 2-core machine `prefect server start`
    took 24 s, past Prefect's 20 s limit for the temporary server it would start by itself). Its URL
    is put in this process's settings and environment, so every task runner's workers — threads,
    Dask worker processes, Ray workers — report to it instead of each starting a server of its own.
    Yields (url, whether it was started here)."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, temporary_settings

    configured = api_url()
    if configured:
        yield configured, False
        return
    server = SubprocessASGIServer()
    server.start(timeout=int(max(startup_s, 1)))
    before = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = server.api_url  # inherited by every worker process started from here on
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            yield server.api_url, True
            drain()  # while the server still listens: else the exit waits on retries to a closed port
    finally:
        if before is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = before
        server.stop()


def serve(root: str, workers: int) -> None:
    """`--serve`: the deployment that launches runs from the Prefect UI (pipeline/deploy.py), until
    interrupted. It holds no repository lock: each run takes DVC's while it runs."""
    from pipeline.deploy import DEPLOYMENT, FLOW, serve as serve_deployment

    with prefect_api() as (url, started):
        print(f"Prefect API: {url}" + (" (a temporary server: set PREFECT_API_URL to a `prefect server "
                                       "start` to use its UI)" if started else ""), flush=True)
        print(f"serving {FLOW}/{DEPLOYMENT} for {root}: in the UI, Deployments → {DEPLOYMENT} → Run → "
              f"Custom run; or `prefect deployment run {FLOW}/{DEPLOYMENT} --param "
              "'overrides={\"guidance.scale\": 0.5}'`", flush=True)
        serve_deployment(root, workers)


def drain(timeout_s: float = 30.0) -> None:
    """Send the logs and events Prefect still holds (it sends them in batches, in the background)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=timeout_s)
    EventsWorker.drain_all(timeout=timeout_s)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.flow", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=".", help="the repository (where dvc.yaml is)")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--workers", type=int, default=default_workers(),
                    help="stages run side by side at most (default: 1 below 4 cores, else 2)")
    ap.add_argument("--runner", choices=RUNNERS, default="threads",
                    help="where stages run: threads of this process (default), a Dask or a Ray cluster")
    ap.add_argument("--address", help="with --runner dask: the scheduler (tcp://HOST:8786); with --runner ray: "
                                      "the cluster (ray://HOST:10001 or auto); none: a temporary local cluster "
                                      "of --workers processes")
    ap.add_argument("--exchange", choices=EXCHANGES, default="shared",
                    help="shared: workers run stages in this folder (same path); remote: each worker in its own "
                         "clone, data through the default DVC remote")
    ap.add_argument("--repo-url", help="with --exchange remote: the git URL workers clone (default: --root)")
    ap.add_argument("--stage-gpus", type=float, default=0.0,
                    help="with --runner ray: GPUs each training or sampling stage asks for (default 0)")
    ap.add_argument("--serve", action="store_true",
                    help="serve the deployment guide-experiment/guide: runs launched from the Prefect UI (or "
                         "`prefect deployment run`) with params overrides, each recorded as a DVC experiment "
                         "(pipeline/deploy.py); runs until interrupted")
    args = ap.parse_args(argv)
    if args.serve and (args.runner != "threads" or args.exchange != "shared"):
        ap.error("--serve runs the graph on threads of the served process (no --runner/--exchange)")
    if args.address and args.runner == "threads":
        ap.error("--address needs --runner dask or ray")
    if args.exchange == "remote" and args.runner == "threads":
        ap.error("--exchange remote needs --runner dask or ray (threads share this folder)")
    if args.repo_url and args.exchange != "remote":
        ap.error("--repo-url needs --exchange remote")
    if args.stage_gpus and args.runner != "ray":
        ap.error("--stage-gpus needs --runner ray (Dask and threads cannot reserve a GPU per task)")
    if args.address and not api_url():
        ap.error(f"--address {args.address} needs PREFECT_API_URL: workers elsewhere cannot reach the temporary "
                 "Prefect server this machine would start; start one they reach (`prefect server start --host "
                 "0.0.0.0`) and set PREFECT_API_URL to it")
    global _repository
    root, cwd = os.path.abspath(args.root), os.getcwd()
    try:
        os.chdir(root)  # DVC resolves stage targets against the working directory (and the deployment's
        load_params(Path(root) / args.params)  # entry point, pipeline/deploy.py, is relative to it)
        if args.serve:
            serve(root, args.workers)
            return 0
        with Repository(root) as _repository:  # before Prefect starts: a busy repository is one line
            if args.exchange == "remote":
                exchange.check_driver(root, _repository.repo)  # one line before Prefect starts
            with prefect_api() as (url, started):
                print(f"Prefect API: {url}" + (" (a temporary server for this run; set PREFECT_API_URL to keep "
                                               "one and watch it in the UI)" if started else ""), flush=True)
                runner = task_runner(args.runner, args.workers, args.address)
                outcome = guide_pipeline.with_options(task_runner=runner)(
                    root, args.params, args.workers, args.exchange, args.repo_url, args.stage_gpus)
    except (ParamsError, RepositoryBusy, exchange.ExchangeError) as err:
        print(f"pipeline.flow: {err}", file=sys.stderr)
        return 2
    finally:
        _repository = None
        os.chdir(cwd)
    ran = [n for n, o in outcome.items() if o == "ran"]
    print(f"{len(ran)} of {len(outcome)} stages ran" + (f": {', '.join(ran)}" if ran else ""))
    failed = {n: o for n, o in outcome.items() if o.startswith("failed")}
    for name, o in failed.items():
        waiting = sum(v == "not run" for v in outcome.values())
        print(f"{o.removeprefix('failed: ')} — {waiting} stage(s) after it did not run; what finished is "
              f"in dvc.lock; resume with `{RESUME}` (or `dvc repro`)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    # run from the imported module, not __main__: a Dask worker then imports the task by name
    # instead of unpickling a copy of this module's globals (the repository lock among them)
    from pipeline.flow import main as _main

    sys.exit(_main())
