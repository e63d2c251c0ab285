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


def replay_metrics(task: int, round: int | None) -> str:
    """The mechanism metrics of a replay shard (guide.mechanism): guided vs unguided from the same noise."""
    return f"metrics/replay/task{task}" + ("" if round is None else f"-r{round}") + ".json"


def all_replay_metrics(p) -> list[str]:
    """The mechanism metrics files of every replay shard of the run `p` describes (none for methods
    without generated replay)."""
    if not p.generated_replay:
        return []
    online = p.guidance.mode == "online"
    return [replay_metrics(t, None if online else r) for t in range(1, p.data.num_tasks)
            for r in range(p.classifier_rounds(t))]


def classifier(task: int, round: int) -> str:
    return f"{ARTIFACTS}/classifier/task{task}/round{round}.pt"


ORACLE = f"{ARTIFACTS}/oracle.pt"
ORACLE_METRICS = "metrics/oracle.json"


def evaluation(task: int) -> str:
    return f"{ARTIFACTS}/evaluate/task{task}.json"


def replay_grid(task: int) -> str:
    return f"plots/replay/task{task}.png"


SUMMARY = "metrics/summary.json"
ACCURACY_CSV = "metrics/accuracy_matrix.csv"
ACCURACY_PNG = "plots/accuracy_matrix.png"


def curve(kind: str, task: int | None = None, round: int | None = None) -> str:
    """A training stage's curve (a CSV that `dvc plots` draws): `round` only when the task has rounds."""
    return f"plots/curves/{kind}" + ("" if task is None else f"-t{task}") + ("" if round is None else f"-r{round}") + ".csv"
