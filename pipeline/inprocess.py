"""Run the whole graph in one Python process, stage after stage, with no DVC and no caching — the
quickest way to try params, and what the end-to-end tests use. With `run.devices` > 1 the
data-parallel stages run under torchrun, as `dvc repro` runs them.

    python -m pipeline.inprocess            # in the current folder, from its params.yaml
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


def run_all(params_path: str = "params.yaml") -> list[str]:
    """Runs every stage in order in the current folder; returns their names."""
    stages = build_graph(load_params(params_path))
    for st in stages:
        run_stage_in_process(st)
    return [st.name for st in stages]


if __name__ == "__main__":
    run_all()
    sys.exit(0)
