"""Run the whole graph in one Python process, stage after stage, with no DVC and no caching — the
quickest way to try params, and what the end-to-end tests use. With `run.devices` > 1 the
data-parallel stages run under torchrun, as `dvc repro` runs them.

    python -m pipeline.inprocess                        # in the current folder, from its params.yaml
    python -m pipeline.inprocess classifier-t1-r0       # only that stage and the stages it needs
"""
from __future__ import annotations

import importlib
import shlex
import subprocess
import sys

from params import load_params
from pipeline.graph import Stage, build_graph


def run_stage_in_process(st: Stage) -> None:
    """One stage in this process; a data-parallel stage (`run.devices` > 1) under torchrun instead."""
    if st.processes > 1:
        code = subprocess.run([sys.executable, "-m", "torch.distributed.run", *shlex.split(st.cmd)[1:]]).returncode
    else:
        code = importlib.import_module(f"stages.{st.kind}").main(shlex.split(" ".join(st.args)))
    if code:
        raise RuntimeError(f"stage {st.name} ({st.cmd}) exited with {code}")


def needed(stages: list[Stage], targets: list[str]) -> list[Stage]:
    """The `targets` and every stage upstream of them, in the graph's order (all stages: no targets).
    ValueError naming a target the graph does not have."""
    by_name = {st.name: st for st in stages}
    unknown = [t for t in targets if t not in by_name]
    if unknown:
        raise ValueError(f"no stage {', '.join(unknown)} in this graph (stages: {', '.join(by_name)})")
    if not targets:
        return stages
    keep, todo = set(), list(targets)
    while todo:
        name = todo.pop()
        if name not in keep:
            keep.add(name)
            todo.extend(by_name[name].upstream)
    return [st for st in stages if st.name in keep]


def run_all(params_path: str = "params.yaml", targets: list[str] | None = None) -> list[str]:
    """Runs every stage (or the `targets` and what they need) in order in the current folder; returns
    their names."""
    stages = needed(build_graph(load_params(params_path)), list(targets or []))
    run(stages)
    return [st.name for st in stages]


def run(stages: list[Stage]) -> None:
    for st in stages:
        run_stage_in_process(st)


if __name__ == "__main__":
    try:  # an unknown target is one line; a stage's own error keeps its traceback
        chosen = needed(build_graph(load_params("params.yaml")), sys.argv[1:])
    except ValueError as e:
        sys.exit(f"pipeline.inprocess: {e}")
    run(chosen)
    sys.exit(0)
