"""Runs launched from the Prefect UI. `python -m pipeline.flow --serve` serves the deployment
`guide-experiment/guide`: in the UI, Deployments → guide → Run → Custom run, set `overrides` (params
keys and values, e.g. {"guidance.scale": 0.5, "run.seed": 1}) and press Run — or from a shell:

    prefect deployment run guide-experiment/guide --param 'overrides={"guidance.scale": 0.5}'

Each run is what `dvc exp run -S guidance.scale=0.5` does, with every stage a task run in the UI:
- the overrides are applied to the committed params.yaml and checked by the params schema before
  anything runs (a string value is read as YAML, as `-S` reads it); a bad key or value fails the run
  in one line naming it, and a key that changes the graph's stages (params.STRUCTURAL_KEYS) is
  refused, as `dvc exp run -S` refuses it at check-graph;
- the graph runs as `python -m pipeline.flow` runs it (the stages DVC finds stale, committed into
  dvc.lock and DVC's run cache), then `dvc exp save` records it as a DVC experiment (`dvc exp show`
  lists it, `dvc exp apply NAME` brings it into the workspace) and the workspace returns to the last
  commit, so every run starts from the same place. `experiment: false` instead leaves the results in
  the workspace, as `dvc repro` after editing params.yaml would (and records nothing);
- runs queue: the served deployment runs one at a time (the next waits as "Late"/"Pending" in the
  UI); a run holds DVC's repository lock from its check to its last stage (as `dvc exp run` does),
  refuses to start while another DVC process holds it, and refuses while tracked files differ from
  the last commit.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from guide.io import atomic_path
from params import STRUCTURAL_KEYS, ParamsError, dump_params
from params.io import params_from_dict
from pipeline import exchange, tool_env
from pipeline.flow import guide_pipeline, locked

FLOW, DEPLOYMENT = "guide-experiment", "guide"


def apply_overrides(text: str, overrides: dict[str, Any], source: str = "params.yaml"):
    """The params of `text` (a params.yaml) with `overrides` (dotted key → value) applied, validated by
    the schema. ParamsError naming the key when it is not one of the file's keys, when its value is
    refused, or when it changes the graph's stages."""
    raw = yaml.safe_load(text)
    before = params_from_dict(raw, source)
    for key, value in overrides.items():
        parts = str(key).split(".")
        node = raw
        for i, part in enumerate(parts):
            if not part or not isinstance(node, dict) or part not in node:
                raise ParamsError(f"overrides: {key!r}: {source} has no key {'.'.join(parts[:i + 1])!r} "
                                  "(a dotted params key, e.g. guidance.scale)")
            if i < len(parts) - 1:
                node = node[part]
        if isinstance(node[parts[-1]], dict):
            raise ParamsError(f"overrides: {key!r} is a group of {source}; give one of its keys")
        node[parts[-1]] = yaml.safe_load(value) if isinstance(value, str) else value
    after = params_from_dict(raw, f"{source} with overrides")
    for key in STRUCTURAL_KEYS:
        old, new = (_value(p, key) for p in (before, after))
        if old != new:
            raise ParamsError(f"overrides: {key}: {old!r} → {new!r} changes the graph's stages; set it in {source}, "
                              "run `python -m pipeline.render`, commit both, then launch")
    return after


def _value(p, dotted: str):
    for part in dotted.split("."):
        p = getattr(p, part)
    return p


def dvc(args: list[str], root: str) -> str:
    return exchange.dvc(args, root, {**tool_env(), "DVC_NO_ANALYTICS": "1"})


def restore_workspace(root: str) -> None:
    """The tracked files and DVC's outputs as the last commit has them."""
    exchange.git(["checkout", "--", "."], root)
    dvc(["checkout", "--quiet"], root)


@flow(name=FLOW, log_prints=True)
def guide_experiment(overrides: dict[str, Any] = {}, experiment: bool = True, name: str = "",  # noqa: B006
                     root: str = ".", workers: int = 1) -> dict[str, Any]:
    """The GUIDE graph of the committed params.yaml with params overrides, recorded as a DVC
    experiment (what `dvc exp run -S KEY=VALUE ...` does, each stage a task run).

    Args:
        overrides: params keys and values, e.g. {"guidance.scale": 0.5, "run.seed": 1}; a string
            value is read as YAML, as `dvc exp run -S` reads it.
        experiment: record the run as a DVC experiment and put the workspace back at the last
            commit; off: leave the results in the workspace and record nothing.
        name: the experiment's name (empty: DVC picks one).
        root: the repository (set when the deployment was served).
        workers: stages run side by side at most.
    """
    root = os.path.abspath(root)
    params_file = Path(root) / "params.yaml"
    overrides = dict(overrides or {})
    p = apply_overrides(params_file.read_text(), overrides)  # nothing has run or been written yet
    applied = {k: _value(p, k) for k in overrides}
    print("overrides: " + (", ".join(f"{k}={v!r}" for k, v in applied.items()) or "none"))
    exp, wrote = None, False
    try:
        # DVC's repository lock from the check to the last stage, as `dvc exp run` holds it: another DVC
        # process refuses to start meanwhile, and one already running makes this run refuse at once
        with locked(root):
            dirty = exchange.changed_tracked_files(root) if experiment else []
            if dirty:
                raise RuntimeError(f"{root}: these tracked files differ from the last commit: {', '.join(dirty)}; "
                                   "commit them (each experiment starts from the last commit), or run with "
                                   "experiment: false")
            wrote = True  # from here on, whatever differs from the last commit is this run's doing
            if overrides:
                with atomic_path(params_file) as tmp:
                    Path(tmp).write_text(dump_params(p))
            outcome = guide_pipeline.with_options(task_runner=ThreadPoolTaskRunner(max_workers=workers))(
                root, "params.yaml", workers)
        ran = [n for n, o in outcome.items() if o == "ran"]
        print(f"{len(ran)} of {len(outcome)} stages ran" + (f": {', '.join(ran)}" if ran else ""))
        failed = [o.removeprefix("failed: ") for o in outcome.values() if o.startswith("failed")]
        if failed:
            raise RuntimeError("; ".join(failed) + (" — the workspace is back at the last commit; what finished is "
                                                    "in DVC's run cache" if experiment else ""))
        if experiment:
            out = dvc(["exp", "save", *(["--name", name] if name else [])], root)
            found = re.search(r"saved as: (\S+)", out)
            exp = found.group(1) if found else (name or out.strip())
            print(f"DVC experiment {exp}: `dvc exp show` lists it, `dvc exp apply {exp}` brings it into the workspace")
    finally:
        if experiment and wrote:  # never what another process changed: nothing is restored before the lock
            restore_workspace(root)
    return {"experiment": exp, "overrides": applied, "ran": ran}


def serve(root: str, workers: int) -> None:
    """Serve the deployment (blocks until interrupted): one run at a time, the others queue."""
    guide_experiment.serve(name=DEPLOYMENT, parameters={"root": root, "workers": workers}, limit=1,
                           description="the GUIDE graph with params overrides, recorded as a DVC experiment")
