"""Stages on workers that share no filesystem with the driver: the DVC remote carries the data.

With `python -m pipeline.flow --exchange remote`, a stage does not run in the driver's folder. The
worker that the task runner picks keeps a workspace of its own — a git clone of the driver's
repository at the driver's commit — and, for each stage it is given:

1. writes the driver's `dvc.lock` into the workspace and pulls the outputs of the stage's upstream
   stages from the DVC remote (its dependencies);
2. runs the stage's command there;
3. commits the stage in the workspace and pushes its outputs to the remote (DVC's `pull`, `commit`
   and `push`, through its Python API in the worker process);
4. hands the stage's `dvc.lock` entry back to the driver.

The driver stays the one writer of its `dvc.lock`: it records the entry and `dvc pull`s the outputs
into its own folder, so `dvc status` there is clean and the next stage's status is DVC's as usual.
Everything here is git and DVC; the remote is whatever `.dvc/config` names as default (a local
folder, S3, GCS, SSH — DVC's own), and the workers need the project installed, git, and the datasets
at the paths params.yaml gives.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import yaml

LOCK = "dvc.lock"
WORKSPACES_ENV = "GUIDE_FLOW_WORKSPACES"  # where workers keep their clones (default: the system temp folder)


class ExchangeError(RuntimeError):
    """The repository cannot be exchanged through a remote as it stands (one line, for the user)."""


def git(args: list[str], cwd: str | Path) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode:
        raise ExchangeError(f"git {' '.join(args)} in {cwd}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def changed_tracked_files(root: str | Path, ignore: tuple[str, ...] = ()) -> list[str]:
    """Tracked files that differ from the last commit, but for `ignore` and DVC's .gitignore bookkeeping."""
    return [line[3:] for line in git(["status", "--porcelain", "--untracked-files=no"], root).splitlines()
            if line[3:] not in ignore and not line[3:].endswith(".gitignore")]


def check_driver(root: str, repo) -> str:
    """The commit the workers clone. Refuses, naming what to do, when there is no default DVC remote
    or when a tracked file other than dvc.lock differs from that commit (a worker would not see it)."""
    remote = repo.config.get("core", {}).get("remote")
    if not remote:
        raise ExchangeError("--exchange remote needs a default DVC remote that the workers can reach: "
                            "`dvc remote add -d NAME URL`, then commit .dvc/config")
    commit = git(["rev-parse", "HEAD"], root).strip()
    changed = changed_tracked_files(root, ignore=(LOCK,))
    if changed:
        raise ExchangeError(f"--exchange remote: the workers clone commit {commit[:12]}, but these tracked "
                            f"files differ from it: {', '.join(changed)}; commit them first")
    return commit


def workspace(url: str, commit: str) -> Path:
    """This worker's clone of `url` at `commit` (one per process and thread, reused across stages so
    its DVC cache is too). A clone that did not finish is never taken for one: it is made under a
    temporary name and renamed when checked out."""
    base = Path(os.environ.get(WORKSPACES_ENV) or tempfile.gettempdir()) / "guide-flow"
    key = hashlib.sha256(url.encode()).hexdigest()[:8]
    ws = base / f"{key}-{commit[:12]}-{os.getpid()}-{threading.get_ident()}"
    if not (ws / ".git").is_dir():
        partial = ws.with_name(ws.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        base.mkdir(parents=True, exist_ok=True)
        git(["clone", "--quiet", "--no-checkout", url, str(partial)], base)
        git(["checkout", "--quiet", "--detach", commit], partial)
        partial.rename(ws)
    return ws


def dvc(args: list[str], cwd: str | Path, env: dict[str, str]) -> str:
    proc = subprocess.run(["dvc", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise ExchangeError(f"dvc {' '.join(args)} in {cwd} exited {proc.returncode}: "
                            f"{(proc.stderr.strip() or proc.stdout.strip())[-500:]}")
    return proc.stdout


def read_files(root: str | Path, outputs: list[str]) -> dict[str, bytes]:
    """The files of `outputs` (files or folders) under `root`, by path relative to it: how the
    uncached outputs (`pipeline.graph.uncached`, small JSON and PNG files) travel with the task."""
    root, files = Path(root), {}
    for out in outputs:
        path = root / out
        found = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path] if path.is_file() else []
        files.update({f.relative_to(root).as_posix(): f.read_bytes() for f in found})
    return files


def write_files(root: str | Path, files: dict[str, bytes]) -> None:
    """Write `files` under `root`, each whole or not at all (a temporary name, then a rename)."""
    for rel, data in files.items():
        path = Path(root) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".exchange.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)


_DVC_API = threading.Lock()  # one DVC operation at a time in a process (DVC's API is not made for threads)


def in_repo(ws: Path, what: str, op) -> None:
    """`op(repo)` on the DVC repository at `ws`, through DVC's Python API in this process and, as the
    `dvc` command would be, in `ws` as the working folder (DVC reads stage names and paths against
    it): a worker imports DVC once, where a `dvc` command would import it again for each pull, commit
    and push (~0.8 s of CPU each). A DVC error becomes one ExchangeError naming the operation and the
    folder."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    with _DVC_API, contextlib.chdir(ws):
        try:
            with Repo(".") as repo:
                op(repo)
        except DvcException as e:
            raise ExchangeError(f"dvc {what} in {ws}: {e}") from None


def prepare(ws: Path, lock_text: str, upstream: list[str], files: dict[str, bytes]) -> None:
    """The driver's lock in the workspace, the upstream stages' uncached outputs written and their
    cached outputs pulled from the remote."""
    if lock_text:
        (ws / LOCK).write_text(lock_text)
    else:  # the driver has none yet: neither may the workspace (a lock from an earlier run)
        (ws / LOCK).unlink(missing_ok=True)
    write_files(ws, files)
    if upstream:
        in_repo(ws, f"pull {' '.join(upstream)}", lambda repo: repo.pull(targets=upstream, force=True))


def finish(ws: Path, name: str) -> dict:
    """Commit stage `name` in the workspace, push its outputs; returns its dvc.lock entry."""
    in_repo(ws, f"commit {name}", lambda repo: repo.commit(name, force=True))
    in_repo(ws, f"push {name}", lambda repo: repo.push(targets=[name]))
    return yaml.safe_load((ws / LOCK).read_text())["stages"][name]


def record(repo, name: str, entry: dict) -> None:
    """In the driver: stage `name`'s lock entry into dvc.lock (with DVC's own YAML writer), then its
    outputs pulled from the remote into the driver's folder."""
    from dvc.utils.serialize import modify_yaml

    with modify_yaml(os.path.join(repo.root_dir, LOCK), fs=repo.fs) as data:
        if not data:
            data.update({"schema": "2.0"})
        data.setdefault("stages", {})[name] = entry
    repo._reset()
    repo.pull(targets=[name], force=True)
