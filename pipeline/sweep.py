"""The guidance-scale sweep as queued DVC experiments, and one table and plot that answer "does
guidance help, and at which scale?".

    python -m pipeline.sweep run                       # in this repository, on the committed params.yaml
    python -m pipeline.sweep queue --scales 0 0.1 1 --seeds 0 1     # only queue (prints the DVC commands)
    dvc queue start -j 1                               # ... run the queue yourself, then:
    python -m pipeline.sweep gather --out results/sweep/mine
    python -m pipeline.sweep run --preset mnist5k --out results/sweep/mnist5k   # what `make sweep` runs
    python -m pipeline.sweep gather --root sweep-work/mnist5k --include results/sweep/mnist5k/runs.json \
        --out results/sweep/mnist5k-more   # add new seeds or points to an earlier table
    python -m pipeline.sweep gather --root sweep-work/fashion_mnist5 \
        --include-compare results/compare/fashion_mnist5/runs.json --out ...   # a comparison's guide as a point

With --preset, the sweep runs in a scratch repository (--workdir, default sweep-work/PRESET) that
holds the project's tracked files and the preset's params.yaml, committed, and shares the project's
DVC cache — so it reuses what `make demo` and `make compare` trained for the same seeds.

Each point of the grid is one `dvc exp run --queue -S guidance.scale=S -S guidance.scale_max=M
-S run.seed=0,1,…` on the committed params.yaml (method guide). Scale 0 is unguided replay — the `gr`
baseline — and every other point is paired with it on the same seed: same diffusion model, same
replay noise. Only the classifier branch depends on the scale, so each seed's diffusion branch trains
once and every other experiment of that seed restores it from DVC's run cache; `gather` reads each
experiment's log from the queue and fails if a diffusion or rehearsal stage trained twice for one seed.

`gather` keeps the experiments of the baseline commit whose params differ from params.yaml only in
guidance.scale, guidance.scale_max and run.seed, and writes OUT/runs.csv (one row per experiment),
OUT/sweep.csv and OUT/sweep.md (per point: Δ vs scale 0 with a 95% interval over seeds, and the
mechanism metrics of the replay), OUT/delta.png and OUT/mechanism.png, and OUT/runs.json. dvc.yaml
declares them as plots, so `dvc plots show` renders them.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from guide.io import atomic_path, atomic_write_json, atomic_write_text
from guide.mechanism import STATS
from guide.metrics import HEADLINE
from params import PRESETS, ParamsError, dump_params, load_params, preset
from pipeline.compare import RAN, RESTORED, ROOT, _env, markdown, parse_sets, read_runs, run_params, scratch_repo
from pipeline.stats import paired_ci, seeds_higher

SCALES = (0.0, 0.01, 0.03, 0.1, 0.3, 0.5, 1.0, 3.0)  # 0 = gr; well below and above the default; 0.5 = CIFAR-10/5
RANGES = ((0.0, 0.2),)  # per-sample U[scale, scale_max] as the reference can draw them; mean = the default
SEEDS = (0, 1, 2, 3, 4)
SWEPT = ("guidance.scale", "guidance.scale_max", "run.seed")
ACCURACY = HEADLINE
MECHANISM = STATS


def dvc(args: list[str], root: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["dvc", *args], cwd=root, env=_env(), capture_output=True, text=True)
    if check and proc.returncode:
        raise RuntimeError(f"dvc {' '.join(args)} exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return proc


def point_label(scale: float, scale_max: float | None) -> str:
    return f"{scale:g}" if scale_max is None or scale_max == scale else f"U[{scale:g}, {scale_max:g}]"


def point_fields(scale: float, scale_max: float | None) -> dict:
    """A row's point: its scale, range top (None for a fixed scale, and for a range whose top is its
    scale), label and mean scale."""
    scale_max = None if scale_max is None or scale_max == scale else scale_max
    return {"scale": scale, "scale_max": scale_max, "point": point_label(scale, scale_max),
            "mean_scale": scale if scale_max is None else (scale + scale_max) / 2}


# --- queue and run ---------------------------------------------------------------------------
def queue_commands(points: list[tuple[float, float | None]], seeds: list[int]) -> list[list[str]]:
    """One `dvc exp run --queue` per point, with the seeds as a DVC grid."""
    seed_list = ",".join(str(s) for s in seeds)
    return [["exp", "run", "--queue", "-S", f"guidance.scale={s:g}",
             "-S", f"guidance.scale_max={'null' if m is None else f'{m:g}'}", "-S", f"run.seed={seed_list}"]
            for s, m in points]


def queue(root: Path, points, seeds) -> None:
    for args in queue_commands(points, seeds):
        print("$ dvc " + " ".join(args), flush=True)
        dvc(args, root)


def queue_status(root: Path) -> list[dict]:
    """The queue's tasks as rows {task, name, status}, from DVC's API in this process (`dvc queue
    status` as a command costs 0.7 s of CPU a look, and pings the workers)."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return [{"task": e["rev"][:7], "name": e.get("name") or None, "status": e["status"]}
                for e in repo.experiments.celery_queue.status()]


def live_workers(root: Path) -> list[int]:
    """Pids of this repository's DVC queue workers that are still running, from the records dvc-task
    keeps of the workers it spawned (.dvc/tmp/exps/celery/dvc-exp-worker-N.json: pid, and the return
    code once it has exited)."""
    alive = []
    for info in sorted((root / ".dvc" / "tmp" / "exps" / "celery").glob("dvc-exp-worker-*.json")):
        try:
            record = json.loads(info.read_text())
            pid = int(record["pid"])
            if record.get("returncode") is None:
                os.kill(pid, 0)  # raises if no such process
                alive.append(pid)
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return alive


def start_workers(root: Path, jobs: int) -> None:
    """`dvc queue start -j JOBS`. The worker it leaves running inherits its output: read through pipes,
    the command would seem to last as long as the worker, so its output goes to a file."""
    print(f"$ dvc queue start -j {jobs}", flush=True)
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.run(["dvc", "queue", "start", "-j", str(jobs)], cwd=root, env=_env(), stdout=out,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if proc.returncode:
            out.seek(0)
            raise RuntimeError(f"dvc queue start -j {jobs} exited {proc.returncode}:\n{out.read()[-3000:]}")


def start_and_wait(root: Path, jobs: int, poll_s: float = 20.0, status=None, workers=None, start=None) -> list[dict]:
    """Start the queue's workers, wait until nothing is queued or running, and stop them.

    Two ways a DVC queue stalls, both seen in the Fashion sweep, are handled here. The worker stops
    itself once its queue stays empty, watched by a thread of dvc-task's that can die (a JSONDecodeError
    on a half-written message of the file broker), leaving it idle for ever: so `dvc queue stop` ends
    it when the queue is done. And `dvc queue stop` broadcasts a shutdown through the file broker that
    stays there when no worker takes it; the next worker of that repository (same node name) takes it
    on start-up and exits after its first task, leaving the rest queued with no one to run them: so a
    queue with tasks waiting, none running and no live worker for two looks in a row is started again,
    and the stop at the end is sent only while a worker is alive.
    `status`, `workers` and `start` replace queue_status, live_workers and start_workers (tests)."""
    status = status or queue_status
    workers = workers or live_workers
    start = start or start_workers
    start(root, jobs)
    stalled = 0
    while True:
        rows = status(root)
        pending = [r for r in rows if r["status"] in ("Queued", "Running")]
        if not pending:
            if workers(root):
                dvc(["queue", "stop"], root, check=False)
            return rows
        waiting = not any(r["status"] == "Running" for r in rows) and not workers(root)
        stalled = stalled + 1 if waiting else 0
        if stalled >= 2:
            print(f"{time.strftime('%H:%M:%S')}  {len(pending)} queued, none running and no live worker: "
                  "starting the queue again", flush=True)
            start(root, jobs)
            stalled = 0
        done = sum(r["status"] == "Success" for r in rows)
        print(f"{time.strftime('%H:%M:%S')}  {done} done, {len(pending)} queued or running", flush=True)
        time.sleep(poll_s)


# --- gather ----------------------------------------------------------------------------------
def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(flatten(v, f"{key}.") if isinstance(v, dict) else {key: v})
    return out


def experiments(root: Path, rev: str = "HEAD") -> list[dict]:
    """Experiments of the baseline commit `rev`: their name, params (flat) and metrics/summary.json."""
    shown = json.loads(dvc(["exp", "show", "--json", "--rev", rev], root).stdout or "[]")
    out = []
    for baseline in shown:
        for group in baseline.get("experiments") or []:
            state = (group.get("executor") or {}).get("state", "success")
            if state != "success":  # queued, running or failed: its data is not its own yet
                continue
            for exp in group.get("revs") or []:
                data = exp.get("data") or {}
                params = (data.get("params") or {}).get("params.yaml", {}).get("data")
                summary = (data.get("metrics") or {}).get("metrics/summary.json", {}).get("data")
                if params and summary and not exp.get("error"):
                    out.append({"name": exp.get("name") or exp["rev"][:7], "rev": exp["rev"],
                                "params": flatten(params), "summary": summary})
    return out


def select(exps: list[dict], base_params: dict) -> list[dict]:
    """The experiments that differ from `base_params` only in the swept keys, latest per point and seed."""
    keep: dict[tuple, dict] = {}
    for e in exps:
        p = e["params"]
        if all(p.get(k) == v for k, v in base_params.items() if k not in SWEPT):
            key = (float(p["guidance.scale"]), p.get("guidance.scale_max"), int(p["run.seed"]))
            keep.setdefault(key, e)  # dvc exp show lists the newest first
    return list(keep.values())


def stage_log(root: Path, name: str) -> str | None:
    proc = dvc(["queue", "logs", name], root, check=False)
    return proc.stdout if proc.returncode == 0 else None


def row_order(r: dict) -> tuple:
    """A sweep table's order: by mean scale, fixed scales before ranges, then by seed."""
    return r["mean_scale"], r["scale_max"] is not None, r["seed"]


def run_rows(exps: list[dict], logs: dict[str, str | None]) -> list[dict]:
    rows = []
    for e in exps:
        p, s = e["params"], e["summary"]
        scale, scale_max = float(p["guidance.scale"]), p.get("guidance.scale_max")
        scale_max = None if scale_max is None else float(scale_max)
        log = logs.get(e["name"])
        row = {"name": e["name"], "seed": int(p["run.seed"]), **point_fields(scale, scale_max),
               **{k: s[k] for k in ACCURACY},
               "ran": RAN.findall(log) if log is not None else None,
               "restored": RESTORED.findall(log) if log is not None else None}
        for view in ("guided", "unguided"):
            row.update({f"{view}_{k}": s["replay"][view][k] for k in MECHANISM})
        row["oracle_test_accuracy"] = s.get("oracle_test_accuracy")
        rows.append(row)
    return sorted(rows, key=row_order)


def sharing_problems(rows: list[dict]) -> list[str]:
    """A diffusion or rehearsal stage that trained in more than one experiment of the same seed."""
    problems = []
    for seed in sorted({r["seed"] for r in rows}):
        trained: dict[str, list[str]] = {}
        for r in rows:
            if r["seed"] == seed and r["ran"]:
                for n in r["ran"]:
                    if n.startswith(("diffusion-", "rehearsal-", "oracle")):
                        trained.setdefault(n, []).append(r["name"])
        problems += [f"seed {seed}: {n} trained in {', '.join(x)}" for n, x in trained.items() if len(x) > 1]
    return problems


def aggregate(rows: list[dict]) -> pd.DataFrame:
    """Per point: Δ of each accuracy metric vs scale 0 on the same seed (mean, 95% CI, seeds higher),
    and the mechanism metrics (mean over seeds, and guided − unguided with its interval)."""
    df = pd.DataFrame(rows)
    base = df[(df.scale == 0) & df.scale_max.isna()].set_index("seed")
    out = []
    for point, g in df.groupby("point", sort=False):
        r0 = g.iloc[0]
        row = {"point": point, "scale": r0.scale, "scale_max": r0.scale_max, "mean_scale": r0.mean_scale,
               "seeds": len(g)}
        for k in ACCURACY:
            row[k] = g[k].mean()
            paired = [v - base.loc[s, k] for s, v in zip(g.seed, g[k]) if s in base.index]
            if paired:
                ci = paired_ci(paired)
                row.update({f"delta_{k}": ci.mean, f"delta_{k}_low": ci.low, f"delta_{k}_high": ci.high,
                            f"delta_{k}_higher": ci.wins, f"delta_{k}_tied": ci.ties,
                            f"delta_{k}_seeds": ci.n})
        for k in MECHANISM:
            row[f"guided_{k}"] = g[f"guided_{k}"].mean()
            row[f"unguided_{k}"] = g[f"unguided_{k}"].mean()
            ci = paired_ci(g[f"guided_{k}"] - g[f"unguided_{k}"])
            row.update({f"shift_{k}": ci.mean, f"shift_{k}_low": ci.low, f"shift_{k}_high": ci.high})
        out.append(row)
    return pd.DataFrame(out).sort_values(["mean_scale", "scale_max"], na_position="first").reset_index(drop=True)


def sweep_markdown(table: pd.DataFrame) -> str:
    def delta(r, k) -> str:
        m = r.get(f"delta_{k}")
        if m is None or pd.isna(m):
            return "—"
        if r.point == "0":
            return "0 (baseline)"
        lo, hi = r[f"delta_{k}_low"], r[f"delta_{k}_high"]
        star = " *" if lo > 0 or hi < 0 else ""
        ci = f" [{lo:+.3f}, {hi:+.3f}]" if not math.isnan(lo) else ""
        tied = int(r.get(f"delta_{k}_tied", 0) or 0)
        return f"{m:+.3f}{ci}{star} ({seeds_higher(int(r[f'delta_{k}_higher']), int(r[f'delta_{k}_seeds']), tied)})"

    frame = pd.DataFrame(index=pd.Index(table.point, name="scale"))
    frame["final acc."] = [f"{v:.3f}" for v in table.final_average_accuracy]
    for k, name in (("final_average_accuracy", "Δ final acc."), ("average_incremental_accuracy", "Δ avg. incr. acc."),
                    ("forgetting", "Δ forgetting")):
        frame[name] = [delta(r, k) for _, r in table.iterrows()]
    frame["current-task mass, guided / unguided"] = [
        f"{r.guided_current_mass:.3f} / {r.unguided_current_mass:.3f}" for _, r in table.iterrows()]
    frame["oracle p(y), guided / unguided"] = [
        f"{r.guided_oracle_label_prob:.3f} / {r.unguided_oracle_label_prob:.3f}" for _, r in table.iterrows()]
    frame["seeds"] = table.seeds.astype(int).tolist()
    return ("Δ = value at the point − value at scale 0 (unguided, = gr) on the same seed: mean [95% Student-t "
            "interval] over seeds, * where the interval excludes 0, (seeds higher / seeds; a |Δ| ≤ 1e-6 is a tie, counted apart). Mechanism columns: "
            "replay of every task averaged, guided and its unguided twin from the same noise.\n\n" + markdown(frame))


def plots(table: pd.DataFrame, out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    single = table[table.scale_max.isna()]
    ranged = table[table.scale_max.notna()]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharex=True)
    for ax, k, name in zip(axes, ("final_average_accuracy", "average_incremental_accuracy"),
                           ("final average accuracy", "average incremental accuracy")):
        ax.axhline(0, color="grey", lw=0.8)
        ax.plot(single.mean_scale, single[f"delta_{k}"], "o-", label="scale s")
        ax.fill_between(single.mean_scale, single[f"delta_{k}_low"], single[f"delta_{k}_high"], alpha=0.25)
        if len(ranged):
            ax.errorbar(ranged.mean_scale, ranged[f"delta_{k}"],
                        yerr=[ranged[f"delta_{k}"] - ranged[f"delta_{k}_low"],
                              ranged[f"delta_{k}_high"] - ranged[f"delta_{k}"]],
                        fmt="s", capsize=3, label="s ~ U[a, b] (at its mean)")
        ax.set_xscale("symlog", linthresh=0.01)
        ax.set_xlabel("guidance scale")
        ax.set_ylabel(f"Δ {name} vs scale 0")
        ax.legend(fontsize=8)
    n = int(table.seeds.max())
    fig.suptitle(f"{title}: paired difference to unguided replay, mean and 95% CI over {n} seeds", fontsize=10)
    fig.tight_layout()
    with atomic_path(out / "delta.png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), sharex=True)
    for ax, k, name in zip(axes, ("current_mass", "current_pred_fraction", "oracle_label_prob"),
                           ("current classifier: mass on current task", "current classifier: predicts current task",
                            "oracle: p(conditioned old class)")):
        for view, style in (("guided", "o-"), ("unguided", "--")):
            ax.plot(single.mean_scale, single[f"{view}_{k}"], style, label=f"{view}")
        if len(ranged):
            ax.plot(ranged.mean_scale, ranged[f"guided_{k}"], "s", label="guided, s ~ U[a, b]")
        ax.set_xscale("symlog", linthresh=0.01)
        ax.set_xlabel("guidance scale")
        ax.set_title(name, fontsize=9)
        ax.set_ylim(0, 1)
        ax.legend(fontsize=8)
    fig.suptitle(f"{title}: where replay lands (every replay shard, guided vs unguided from the same noise; "
                 f"mean over {n} seeds)", fontsize=10)
    fig.tight_layout()
    with atomic_path(out / "mechanism.png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def fixed_params(base_flat: dict) -> dict:
    """What every point of a sweep shares: the params with the swept keys left out."""
    return {k: v for k, v in base_flat.items() if k not in SWEPT}


def load_included(paths: list[str], fixed: dict, title: str) -> list[dict]:
    """The runs of earlier gathers (their runs.json), which must be sweeps of the same params apart
    from the swept keys (older files, without those params recorded, must carry the same title);
    see read_runs for the errors."""
    def check(data: dict) -> str | None:
        if "fixed_params" not in data:
            return None if data.get("title") == title else f"a sweep of {data.get('title')!r}, not {title!r}"
        differ = sorted(k for k in set(fixed) | set(data["fixed_params"]) if fixed.get(k) != data["fixed_params"].get(k))
        return f"a sweep of other params ({', '.join(differ[:5])})" if differ else None

    return read_runs(paths, lambda r: ((r["point"], int(r["seed"])), f"point {r['point']} seed {r['seed']}"), check)


def merge_rows(gathered: list[dict], included: list[dict]) -> list[dict]:
    """Gathered and included runs in one table's order; ValueError if a point and seed is in both."""
    clash = sorted({(r["point"], int(r["seed"])) for r in gathered} & {(r["point"], int(r["seed"])) for r in included})
    if clash:
        raise ValueError("--include already holds " + ", ".join(f"point {p} seed {s}" for p, s in clash)
                         + ", gathered here too: leave that file out")
    return sorted(gathered + included, key=row_order)


SAME = 1e-6  # a comparison's gr and a sweep's scale 0 of one seed agree to this: the same run


def compare_rows(paths: list[str], fixed: dict, own: list[dict]) -> list[dict]:
    """The `guide` runs of paired comparisons (pipeline.compare's runs.json) as sweep rows at their
    params' guidance scale, for the seeds where the sweep (`own`: the rows gathered and included) has
    no run at that point. A comparison belongs only if its preset with its --set pairs is the sweep's
    params apart from the swept keys. Where the sweep has a scale-0 run of that seed, the comparison's
    gr must equal it in every accuracy and replay metric (within SAME) — the sign that both trained the
    same diffusion model and drew replay from the same noise, so the comparison's guide pairs with the
    sweep's scale 0 — and the sweep's stays; where it has none, the comparison's gr joins as scale 0.
    ValueError naming the file, the keys or the seed otherwise."""
    mine = {(r["point"], int(r["seed"])): r for r in own}
    rows, seen = [], {}
    for path in paths:
        try:
            data = json.loads(Path(path).read_text())
            name = data["preset"]
            params = run_params(name, "guide", 0, parse_sets(list(data.get("set", [])), name))
            runs = {(r["method"], int(r["seed"])): r for r in data["runs"] if r.get("method") in ("guide", "gr")}
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"--include-compare {path}: not a comparison's runs.json "
                             f"({type(e).__name__}: {e})") from None
        theirs = fixed_params(flatten(params.model_dump(mode="json")))
        differ = sorted(k for k in set(fixed) | set(theirs) if fixed.get(k) != theirs.get(k))
        if differ:
            raise ValueError(f"--include-compare {path}: a comparison of other params ({', '.join(differ[:5])})")
        scale, top = params.guidance.scale, params.guidance.scale_max
        point = point_label(scale, top)
        for (method, seed), r in sorted(runs.items()):
            if method != "guide" or (point, seed) in mine:
                continue
            if (point, seed) in seen:
                raise ValueError(f"--include-compare {path}: point {point} seed {seed} is already in {seen[point, seed]}")
            seen[point, seed] = path
            gr, base = runs.get(("gr", seed)), mine.get(("0", seed))
            if gr is None:
                raise ValueError(f"--include-compare {path}: seed {seed}: no gr run to pair its guide run with")
            unguided = compare_row(gr, seed, 0.0, None)
            if base is None:  # the comparison's own pair
                rows.append(unguided)
            else:
                off = [k for k in (*ACCURACY, *(f"unguided_{k}" for k in MECHANISM))
                       if abs(float(unguided[k]) - float(base[k])) > SAME]
                if off:
                    raise ValueError(
                        f"--include-compare {path}: seed {seed}: its gr is not this sweep's scale 0 "
                        f"({off[0]} {unguided[off[0]]:.6f} vs {base[off[0]]:.6f}), so its guide run did not share "
                        "this sweep's diffusion model and replay noise: run that point here instead")
            rows.append(compare_row(r, seed, scale, top))
    return rows


def compare_row(r: dict, seed: int, scale: float, top: float | None) -> dict:
    """A comparison's run (its runs.json entry) as a sweep row at `scale` (U[scale, top] if `top`)."""
    return {"name": f"compare {r['method']} seed {seed}", "seed": seed, **point_fields(scale, top),
            **{k: r[k] for k in ACCURACY}, "ran": None, "restored": None,
            **{f"{view}_{k}": r[f"replay_{view}_{k}"] for view in ("guided", "unguided") for k in MECHANISM},
            "oracle_test_accuracy": r.get("oracle_test_accuracy")}


def gather(root: Path, out: Path, rev: str, params_path: str = "params.yaml", title: str | None = None,
           include: list[str] = (), include_compare: list[str] = ()) -> int:
    base = load_params(root / params_path)
    base_flat = flatten(base.model_dump(mode="json"))
    title = title or f"{base.data.dataset}/{base.data.num_tasks}, guide"
    try:
        included = load_included(list(include), fixed_params(base_flat), title)
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    exps = select(experiments(root, rev), base_flat)
    status = {r["name"]: r["status"] for r in queue_status(root) if r["name"]}
    logs = {e["name"]: stage_log(root, e["name"]) if e["name"] in status else None for e in exps}
    try:
        rows = merge_rows(run_rows(exps, logs), included)
        rows = merge_rows(rows, compare_rows(list(include_compare), fixed_params(base_flat), rows))
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    if not any(r["scale"] == 0 and r["scale_max"] is None for r in rows):
        print(f"no experiment at guidance.scale=0 (the unguided baseline) among the {len(rows)} found: "
              f"queue it with `python -m pipeline.sweep queue --scales 0 …`", file=sys.stderr)
        return 1
    problems = sharing_problems(rows)
    table = aggregate(rows)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "runs.json", {"title": title, "rev": rev, "runs": rows, "sharing_problems": problems,
                                          "logs_found": sum(v is not None for v in logs.values()),
                                          "fixed_params": fixed_params(base_flat), "included": list(include),
                                          "included_compare": list(include_compare)})
    for name, frame in (("runs.csv", pd.DataFrame(rows).drop(columns=["ran", "restored"])), ("sweep.csv", table)):
        with atomic_path(out / name) as tmp:
            frame.to_csv(tmp, index=False, float_format="%.6g")
    text = sweep_markdown(table)
    atomic_write_text(out / "sweep.md", text)
    plots(table, out, title)
    print(text)
    missing = sum(v is None for v in logs.values())
    if missing:
        print(f"{missing} of {len(rows)} experiments have no queue log left: their stages were not checked")
    if problems:
        print("a diffusion stage trained more than once for one seed:\n" + "\n".join(problems), file=sys.stderr)
        return 1
    print(f"{len(rows)} experiments, {table.seeds.max()} seeds; every seed's diffusion branch trained at most once")
    return 0


def parse_points(scales: list[float], ranges: list[str]) -> list[tuple[float, float | None]]:
    points = [(s, None) for s in scales]
    for r in ranges:
        lo, _, hi = r.partition(":")
        try:
            a, b = float(lo), float(hi)
        except ValueError:
            raise SystemExit(f"--ranges {r!r}: expected LOW:HIGH, e.g. 0:0.5") from None
        if not 0 <= a <= b:
            raise SystemExit(f"--ranges {r!r}: expected 0 ≤ LOW ≤ HIGH")
        points.append((a, b))
    return points


def preset_repo(workdir: Path, name: str, cache_dir: Path) -> Path:
    """A scratch repository whose committed params.yaml (and dvc.yaml) is preset `name`."""
    scratch_repo(workdir, cache_dir, params_text=dump_params(preset(name)))
    return workdir


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.sweep", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=("run", "queue", "gather"))
    ap.add_argument("--root", default=".", help="the repository (committed params.yaml and dvc.yaml)")
    ap.add_argument("--preset", choices=PRESETS, help="run in a scratch repository on this preset instead")
    ap.add_argument("--workdir", help="the scratch repository of --preset (default sweep-work/PRESET)")
    ap.add_argument("--cache-dir", default=str(ROOT / ".dvc" / "cache"),
                    help="DVC cache of the scratch repository; default: the project's")
    ap.add_argument("--scales", nargs="+", type=float, default=list(SCALES), help="one point per scale (0 = gr)")
    ap.add_argument("--ranges", nargs="*", default=[f"{a:g}:{b:g}" for a, b in RANGES],
                    help="points with per-sample scales U[LOW, HIGH]")
    ap.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    ap.add_argument("-j", "--jobs", type=int, default=1, help="queue workers (1 on a 2-core machine)")
    ap.add_argument("--poll", type=float, default=20.0, help="seconds between looks at the queue while it runs")
    ap.add_argument("--rev", default="HEAD", help="gather the experiments of this baseline commit")
    ap.add_argument("--out", default="results/sweep", help="where gather writes its table and plots")
    ap.add_argument("--title", help="plot title (default: dataset/tasks, guide)")
    ap.add_argument("--include", nargs="+", default=[], metavar="RUNS_JSON",
                    help="earlier gathers' runs.json (a sweep of the same params): their runs join the table")
    ap.add_argument("--include-compare", nargs="+", default=[], metavar="RUNS_JSON",
                    help="paired comparisons' runs.json (pipeline.compare, same params): their guide runs join "
                         "at their scale on the seeds this sweep lacks there, each paired through its gr run")
    args = ap.parse_args(argv)
    root = Path(args.root).resolve()
    if args.preset:
        root = preset_repo(Path(args.workdir or f"sweep-work/{args.preset}").resolve(), args.preset,
                           Path(args.cache_dir).resolve())
    try:
        p = load_params(root / "params.yaml")
    except ParamsError as err:
        print(err, file=sys.stderr)
        return 2
    if p.run.method != "guide":
        print(f"params.yaml: run.method: the sweep varies GUIDE's guidance scale (got {p.run.method!r})", file=sys.stderr)
        return 2
    points = parse_points(args.scales, args.ranges)
    if args.action in ("run", "queue"):
        if (0.0, None) not in points:
            print("--scales: include 0, the unguided baseline every point is paired with", file=sys.stderr)
            return 2
        queue(root, points, args.seeds)
    if args.action == "run":
        rows = start_and_wait(root, args.jobs, args.poll)
        failed = [r for r in rows if r["status"] == "Failed"]
        if failed:
            print(f"{len(failed)} experiment(s) failed: see `dvc queue logs NAME` for "
                  + ", ".join(r["name"] or r["task"] for r in failed), file=sys.stderr)
            return 1
    if args.action in ("run", "gather"):
        return gather(root, Path(args.out), args.rev, title=args.title, include=args.include,
                      include_compare=args.include_compare)
    return 0


if __name__ == "__main__":
    sys.exit(main())
