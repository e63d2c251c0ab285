"""Stop the run at once when params.yaml's structural params (number of tasks, rounds, method,
guidance mode, training of the last diffusion task) no longer match the rendered dvc.yaml.

    python -m stages.check_graph --structure KEY    (KEY is written into dvc.yaml by the render)
"""
from __future__ import annotations

import argparse
import sys

from guide.io import atomic_write_text
from params import STRUCTURAL_KEYS, Params, ParamsError, load_params
from stages import paths
from stages.construct import check_constructs
from stages.tracking import wandb_key_problem

RENDER = "python -m pipeline.render"


def reads(p: Params, task: int | None = None, round: int | None = None) -> tuple[str, ...]:
    """The structural keys: declared once, here, and every other stage depends on this one's output."""
    return STRUCTURAL_KEYS


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m stages.check_graph", description=__doc__)
    ap.add_argument("--structure", required=True, help="the structure key dvc.yaml was rendered for")
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args(argv)
    try:
        p = load_params(args.params)
        check_constructs(p, args.params)  # what every stage builds from it, before any of them runs
    except ParamsError as err:
        print(f"stages.check_graph: {err}", file=sys.stderr)
        return 2
    problem = wandb_key_problem(p)
    if problem:  # before any stage does any work
        print(f"stages.check_graph: {args.params}: {problem}", file=sys.stderr)
        return 2
    if p.structure_key() != args.structure:
        print(f"stages.check_graph: dvc.yaml was rendered for other structural params than {args.params} "
              f"now holds ({', '.join(f'{k}={v}' for k, v in p.structure().items())}).\n"
              f"Run `{RENDER}` (and commit dvc.yaml), then run again.", file=sys.stderr)
        return 2
    # constant content: the stages after it depend on the check having passed, not on the key
    atomic_write_text(paths.GRAPH_OK, "the rendered graph matches params.yaml\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
