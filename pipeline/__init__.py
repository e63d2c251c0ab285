"""The task graph and what renders or runs it (dvc.yaml, the Prefect flow, comparisons, sweeps)."""
import os
import sys
from pathlib import Path


def tool_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """`base` (default: this process's environment) with this interpreter's bin folder first on PATH,
    so the `python` of a stage command and the `dvc` the pipeline calls are this environment's, however
    the caller was started (`.venv/bin/python -m pytest` or `-m pipeline.flow` without the venv on PATH)."""
    env = dict(os.environ if base is None else base)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", os.defpath)])
    return env
