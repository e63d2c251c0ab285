"""Where each artifact lives. The pipeline names these as DVC outputs and dependencies; the stages
write and read them. Paths are relative to the repository root."""
from __future__ import annotations

ARTIFACTS = "artifacts"
GRAPH_OK = f"{ARTIFACTS}/graph.ok"


def diffusion(task: int) -> str:
    return f"{ARTIFACTS}/diffusion/task{task}.pt"


def rehearsal(task: int) -> str:
    return f"{ARTIFACTS}/rehearsal/task{task}"


def replay(task: int, round: int | None) -> str:
    """A replay shard folder; round None is the online mode's record of everything it generated."""
    return f"{ARTIFACTS}/replay/task{task}/" + ("online" if round is None else f"round{round}")


def classifier(task: int, round: int) -> str:
    return f"{ARTIFACTS}/classifier/task{task}/round{round}.pt"


def evaluation(task: int) -> str:
    return f"{ARTIFACTS}/evaluate/task{task}.json"


def replay_grid(task: int) -> str:
    return f"plots/replay/task{task}.png"


SUMMARY = "metrics/summary.json"
ACCURACY_CSV = "metrics/accuracy_matrix.csv"
ACCURACY_PNG = "plots/accuracy_matrix.png"
