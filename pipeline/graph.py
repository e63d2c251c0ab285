"""The task graph, unrolled from the typed params: a list of stages (name, command, dependencies,
params, outputs). `dvc.yaml` (pipeline.render) and the Prefect flow (pipeline.flow) are both made
from this one list.

Per task t: rehearsal-t{t} (t ≥ 1) → diffusion-t{t}; replay-t{t}-r{r} → classifier-t{t}-r{r} for
r = 0 … R−1 (guided-replay methods in rounds mode; otherwise one classifier-t{t}); evaluate-t{t};
then report. Methods with generated replay also train the oracle, which measures every replay
shard (metrics/replay/). Every training stage writes its curve (plots/curves/). Every stage depends on check-graph, which stops the run when params.yaml's
structure no longer matches the rendered graph.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from guide.continual import METHODS
from params import Params
from params.schema import DATA_PARALLEL
from pipeline.codedeps import code_deps
from stages import paths



def reads(kind: str, p: Params, task: int | None = None, round: int | None = None) -> tuple[str, ...]:
    """The params keys a stage of `kind` reads, as its module declares them (`reads`)."""
    return importlib.import_module(f"stages.{kind}").reads(p, task, round)


UNCACHED = ("metrics/", "plots/")  # results a person reads: DVC keeps them out of its cache, git holds them
# ... except the training curves and the per-shard measurements (the summary averages them): DVC's
# run cache never restores a stage with an uncached output that is not declared a metric or a plot,
# and queued experiments and comparisons share the diffusion stages and the oracle that way
CACHED = ("plots/curves/", "metrics/replay/", "metrics/oracle.json")


def is_uncached(output: str) -> bool:
    return output.startswith(UNCACHED) and not output.startswith(CACHED)


def uncached(outputs) -> list[str]:
    """The outputs DVC keeps out of its cache (dvc.yaml says `cache: false` for them), so a DVC remote
    does not carry them either."""
    return [o for o in outputs if is_uncached(o)]


@dataclass(frozen=True)
class Stage:
    name: str
    kind: str  # the stage module: python -m stages.<kind>
    args: tuple[str, ...] = ()
    deps: tuple[str, ...] = ()
    params: tuple[str, ...] = ()  # params.yaml groups or keys the stage reads
    outs: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()  # outputs not cached, shown by `dvc metrics show` and `dvc exp show`
    plots: tuple[str, ...] = ()  # outputs not cached, images a person looks at
    upstream: tuple[str, ...] = field(default=(), compare=False)  # names of the stages it waits for
    processes: int = 1  # > 1: data parallel, launched by torchrun (run.devices)

    @property
    def cmd(self) -> str:
        launcher = "python" if self.processes == 1 else f"torchrun --standalone --nproc-per-node {self.processes}"
        return " ".join([launcher, "-m", f"stages.{self.kind}", *self.args])

    @property
    def outputs(self) -> tuple[str, ...]:
        return self.outs + self.metrics + self.plots


def build_graph(p: Params) -> list[Stage]:
    """The stages of the run that `p` describes, in a topological order."""
    method = METHODS[p.run.method]
    T = p.data.num_tasks
    stages: list[Stage] = []
    by_out: dict[str, str] = {}

    def add(name: str, kind: str, task: int | None = None, round: int | None = None, deps=(),
            outs=(), metrics=(), plots=()) -> None:
        args = ([f"--task {task}"] if task is not None else []) + ([f"--round {round}"] if round is not None else [])
        deps = (paths.GRAPH_OK, *code_deps(f"stages.{kind}"), *deps)  # the code it runs, from its imports
        params = reads(kind, p, task, round)  # the keys it reads, as the stage declares them
        upstream = tuple(dict.fromkeys(by_out[d] for d in deps if d in by_out))
        st = Stage(name, kind, tuple(args), tuple(deps), tuple(params), tuple(outs), tuple(metrics), tuple(plots),
                   upstream, p.run.devices if kind in DATA_PARALLEL else 1)
        stages.append(st)
        for o in st.outputs:
            by_out[o] = name

    # first, the guard: its command carries the structure key the graph was rendered for
    stages.append(Stage("check-graph", "check_graph", (f"--structure {p.structure_key()}",),
                        code_deps("stages.check_graph"), reads("check_graph", p), (paths.GRAPH_OK,)))
    by_out[paths.GRAPH_OK] = "check-graph"
    # the oracle that judges replay, and the diffusion branch as far as some classifier (or the
    # reference's last task) needs it
    if method.uses_diffusion:
        add("oracle", "oracle", outs=(paths.ORACLE, paths.ORACLE_METRICS, paths.curve("oracle")))
        last = T if p.diffusion.train_last_task else T - 1
        for t in range(last):
            if t > 0:
                add(f"rehearsal-t{t}", "rehearsal", t, deps=(paths.diffusion(t - 1),), outs=(paths.rehearsal(t),))
                add(f"diffusion-t{t}", "diffusion", t, deps=(paths.diffusion(t - 1), paths.rehearsal(t)),
                    outs=(paths.diffusion(t), paths.curve("diffusion", t)))
            else:
                add("diffusion-t0", "diffusion", 0, outs=(paths.diffusion(0), paths.curve("diffusion", 0)))

    # the classifier branch
    for t in range(T):
        rounds = p.classifier_rounds(t)
        prev = [paths.classifier(t - 1, p.classifier_rounds(t - 1) - 1)] if t > 0 else []
        generated = method.uses_diffusion and t > 0
        for r in range(rounds):
            suffix = f"-r{r}" if rounds > 1 else ""
            init = [paths.classifier(t, r - 1)] if r > 0 else prev
            deps, outs = list(init), [paths.classifier(t, r), paths.curve("classifier", t, r if rounds > 1 else None)]
            if generated and p.guidance.mode == "rounds":
                # the round's starting classifier guides GUIDE's replay and measures every method's
                old_guide = prev if method.guidance == "old" and r > 0 else []
                add(f"replay-t{t}{suffix}", "replay", t, r, deps=(paths.diffusion(t - 1), *init, *old_guide,
                                                                  paths.ORACLE),
                    outs=(paths.replay(t, r), paths.replay_metrics(t, r)),
                    plots=(paths.replay_grid(t),) if r == 0 and method.guidance != "none" else ())
                deps.append(paths.replay(t, r))
            elif generated:  # online: the classifier stage samples its own replay
                deps += [paths.diffusion(t - 1), paths.ORACLE]
                outs += [paths.replay(t, None), paths.replay_metrics(t, None)]
            add(f"classifier-t{t}{suffix}", "classifier", t, r, deps=deps, outs=outs,
                plots=(paths.replay_grid(t),) if generated and p.guidance.mode == "online" and method.guidance != "none"
                else ())
        add(f"evaluate-t{t}", "evaluate", t, deps=(paths.classifier(t, rounds - 1),), outs=(paths.evaluation(t),))

    add("report", "report", deps=(*(paths.evaluation(t) for t in range(T)), *paths.all_replay_metrics(p),
                             *([paths.ORACLE_METRICS] if method.uses_diffusion else [])),
        outs=(paths.ACCURACY_CSV,), metrics=(paths.SUMMARY,), plots=(paths.ACCURACY_PNG,))
    return stages
