"""Run the graph as a Prefect flow: one task run per stage, with the stage's log, independent
stages side by side. DVC stays the one record of what is fresh: each task asks `dvc status` for its
stage, runs the stage's command only when it is stale, then `dvc commit`s it into dvc.lock — so
after `dvc repro` a flow run reruns nothing, and after a flow run `dvc status` is clean.

    python -m pipeline.flow                 # run (a temporary Prefect server starts if none is set)
    python -m pipeline.flow --workers 2     # at most 2 stages at a time
    prefect server start                    # then, in another shell, set PREFECT_API_URL and run:
    PREFECT_API_URL=http://127.0.0.1:4200/api python -m pipeline.flow   # watch it at http://127.0.0.1:4200
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.task_runners import ThreadPoolTaskRunner

from params import ParamsError, load_params
from pipeline.graph import build_graph
from pipeline.render import render

_dvc = threading.Lock()  # DVC's repository lock is per process: one DVC operation at a time


def _dvc_status(root: str, name: str) -> dict:
    from dvc.repo import Repo

    with _dvc, Repo(root) as repo:
        return repo.status(targets=[name])


def _dvc_commit(root: str, name: str) -> None:
    from dvc.repo import Repo

    with _dvc, Repo(root) as repo:
        repo.commit(name, force=True)


@task(name="stage", retries=0)
def run_stage(name: str, cmd: str, root: str) -> str:
    """Run one stage if DVC says it is stale; returns "ran" or "fresh"."""
    logger = get_run_logger()
    changed = _dvc_status(root, name)
    if not changed:
        logger.info("%s is up to date; skipped", name)
        return "fresh"
    logger.info("%s: %s", name, changed.get(name, changed))
    logger.info("$ %s", cmd)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, shell=True, cwd=root, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        line = line.rstrip().rsplit("\r", 1)[-1]  # progress bars: keep the latest state
        if line:
            logger.info(line)
    if proc.wait():
        raise RuntimeError(f"stage {name} failed (exit {proc.returncode}): {cmd}")
    _dvc_commit(root, name)
    return "ran"


@flow(name="guide-pipeline", log_prints=True)
def guide_pipeline(root: str = ".", params_path: str = "params.yaml") -> dict[str, str]:
    """The task graph of params.yaml; returns each stage's outcome ("ran" or "fresh")."""
    p = load_params(Path(root) / params_path)
    stages = build_graph(p)
    dvc_yaml = Path(root) / "dvc.yaml"
    if not dvc_yaml.exists() or dvc_yaml.read_text() != render(stages):
        raise RuntimeError(f"{dvc_yaml} does not match {params_path}: run `python -m pipeline.render` first")
    futures = {}
    for st in stages:
        futures[st.name] = run_stage.with_options(task_run_name=st.name).submit(
            st.name, st.cmd, root, wait_for=[futures[u] for u in st.upstream])
    return {name: fut.result() for name, fut in futures.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.flow", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=".", help="the repository (where dvc.yaml is)")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--workers", type=int, default=2, help="stages run side by side at most")
    args = ap.parse_args(argv)
    try:
        outcome = guide_pipeline.with_options(task_runner=ThreadPoolTaskRunner(max_workers=args.workers))(
            os.path.abspath(args.root), args.params)
    except ParamsError as err:
        print(err, file=sys.stderr)
        return 2
    ran = [n for n, o in outcome.items() if o == "ran"]
    print(f"{len(ran)} of {len(outcome)} stages ran" + (f": {', '.join(ran)}" if ran else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
