"""The task graph, unrolled from the typed params: a list of stages (name, command, dependencies,
params, outputs). `dvc.yaml` (pipeline.render) and the Prefect flow (pipeline.flow) are both made
from this one list.

Per task t: rehearsal-t{t} (t ≥ 1) → diffusion-t{t}; replay-t{t}-r{r} → classifier-t{t}-r{r} for
r = 0 … R−1 (guided-replay methods in rounds mode; otherwise one classifier-t{t}); evaluate-t{t};
then report. Methods with generated replay also train the oracle, which measures every replay
shard (metrics/replay/). Every stage depends on check-graph, which stops the run when params.yaml's
structure no longer matches the rendered graph.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from guide.continual import METHODS
from params import STRUCTURAL_KEYS, Params
from pipeline.codedeps import code_deps
from stages import paths

SEED = "run.seed"


@dataclass(frozen=True)
class Stage:
    name: str
    kind: str  # the stage module: python -m stages.<kind>
    args: tuple[str, ...] = ()
    deps: tuple[str, ...] = ()
    params: tuple[str, ...] = ()  # params.yaml groups or keys the stage reads
    outs: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()  # outputs not cached, shown by `dvc metrics show`
    plots: tuple[str, ...] = ()  # outputs not cached, images a person looks at
    upstream: tuple[str, ...] = field(default=(), compare=False)  # names of the stages it waits for

    @property
    def cmd(self) -> str:
        return " ".join(["python -m", f"stages.{self.kind}", *self.args])

    @property
    def outputs(self) -> tuple[str, ...]:
        return self.outs + self.metrics + self.plots


def build_graph(p: Params) -> list[Stage]:
    """The stages of the run that `p` describes, in a topological order."""
    method = METHODS[p.run.method]
    T = p.data.num_tasks
    stages: list[Stage] = []
    by_out: dict[str, str] = {}

    def add(name: str, kind: str, task: int | None = None, round: int | None = None, deps=(), params=(),
            outs=(), metrics=(), plots=()) -> None:
        args = ([f"--task {task}"] if task is not None else []) + ([f"--round {round}"] if round is not None else [])
        deps = (paths.GRAPH_OK, *code_deps(f"stages.{kind}"), *deps)  # the code it runs, from its imports
        upstream = tuple(dict.fromkeys(by_out[d] for d in deps if d in by_out))
        st = Stage(name, kind, tuple(args), tuple(deps), tuple(params), tuple(outs), tuple(metrics), tuple(plots),
                   upstream)
        stages.append(st)
        for o in st.outputs:
            by_out[o] = name

    # first, the guard: its command carries the structure key the graph was rendered for
    stages.append(Stage("check-graph", "check_graph", (f"--structure {p.structure_key()}",),
                        code_deps("stages.check_graph"), STRUCTURAL_KEYS, (paths.GRAPH_OK,)))
    by_out[paths.GRAPH_OK] = "check-graph"
    # Each stage lists exactly the keys it reads, so a change reruns only what it affects.
    unet = ("diffusion.unet", "diffusion.schedule", "diffusion.num_timesteps")  # to build and sample
    def diffusion_keys(t: int) -> tuple[str, ...]:
        steps = "diffusion.steps_first" if t == 0 else "diffusion.steps_later"
        return (SEED, "data", *unet, steps, "diffusion.batch_size", "diffusion.lr", "diffusion.weight_decay",
                "diffusion.ema_decay", "diffusion.hflip")

    def classifier_keys(t: int) -> tuple[str, ...]:
        which = ("steps_first", "lr_first") if t == 0 else ("steps_later", "lr_later", "interval")
        return (SEED, "run.method", "data", *(f"classifier.{k}" for k in (*which, "arch", "batch_size", "momentum",
                                                                            "weight_decay", "augmentation")))

    replay_keys = (SEED, "run.method", "data", *unet, "replay", "guidance", "classifier.arch",
                   "classifier.batch_size", "classifier.interval", "classifier.steps_later")
    grid_keys = ("evaluate.grid_images",) if method.guidance != "none" else ()  # the stage that draws the grid

    # the oracle that judges replay, and the diffusion branch as far as some classifier (or the
    # reference's last task) needs it
    if method.uses_diffusion:
        add("oracle", "oracle", params=(SEED, "data", "classifier.arch", "classifier.momentum",
                                        "classifier.weight_decay", "classifier.augmentation", "oracle"),
            outs=(paths.ORACLE,), metrics=(paths.ORACLE_METRICS,))
        last = T if p.diffusion.train_last_task else T - 1
        for t in range(last):
            if t > 0:
                add(f"rehearsal-t{t}", "rehearsal", t, deps=(paths.diffusion(t - 1),),
                    params=(SEED, "data", *unet, "rehearsal"), outs=(paths.rehearsal(t),))
                add(f"diffusion-t{t}", "diffusion", t, deps=(paths.diffusion(t - 1), paths.rehearsal(t)),
                    params=(*diffusion_keys(t), "rehearsal.per_task"), outs=(paths.diffusion(t),))
            else:
                add("diffusion-t0", "diffusion", 0, params=diffusion_keys(0), outs=(paths.diffusion(0),))

    # the classifier branch
    for t in range(T):
        rounds = p.classifier_rounds(t)
        prev = [paths.classifier(t - 1, p.classifier_rounds(t - 1) - 1)] if t > 0 else []
        generated = method.uses_diffusion and t > 0
        for r in range(rounds):
            suffix = f"-r{r}" if rounds > 1 else ""
            init = [paths.classifier(t, r - 1)] if r > 0 else prev
            deps, params, outs = list(init), classifier_keys(t), [paths.classifier(t, r)]
            metrics: list[str] = []
            if generated and p.guidance.mode == "rounds":
                # the round's starting classifier guides GUIDE's replay and measures every method's
                old_guide = prev if method.guidance == "old" and r > 0 else []
                add(f"replay-t{t}{suffix}", "replay", t, r, deps=(paths.diffusion(t - 1), *init, *old_guide,
                                                                  paths.ORACLE),
                    params=replay_keys + (grid_keys if r == 0 else ()), outs=(paths.replay(t, r),), metrics=(paths.replay_metrics(t, r),),
                    plots=(paths.replay_grid(t),) if r == 0 and method.guidance != "none" else ())
                deps.append(paths.replay(t, r))
            elif generated:  # online: the classifier stage samples its own replay
                deps += [paths.diffusion(t - 1), paths.ORACLE]
                params = tuple(dict.fromkeys(params + replay_keys + grid_keys))
                outs.append(paths.replay(t, None))
                metrics.append(paths.replay_metrics(t, None))
            add(f"classifier-t{t}{suffix}", "classifier", t, r, deps=deps, params=params, outs=outs,
                metrics=metrics,
                plots=(paths.replay_grid(t),) if generated and p.guidance.mode == "online" and method.guidance != "none"
                else ())
        add(f"evaluate-t{t}", "evaluate", t, deps=(paths.classifier(t, rounds - 1),),
            params=(SEED, "data", "classifier.arch", "evaluate.batch_size"), outs=(paths.evaluation(t),))

    add("report", "report", deps=(*(paths.evaluation(t) for t in range(T)), *paths.all_replay_metrics(p),
                             *([paths.ORACLE_METRICS] if method.uses_diffusion else [])),
        params=(SEED, "run.method", "data.dataset", "data.num_tasks", "tracking"),
        outs=(paths.ACCURACY_CSV,), metrics=(paths.SUMMARY,), plots=(paths.ACCURACY_PNG,))
    return stages
