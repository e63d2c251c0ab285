"""Compare methods over seeds with DVC: each (seed, method) is reproduced in one scratch repository,
so DVC's run cache shares a seed's diffusion branch among the methods that use it (guide, gr, ddgr
have identical diffusion and rehearsal stages) — no diffusion stage trains twice for the same seed
and settings. The log of which stages ran and which were restored from the cache is kept, and
checked, in `runs.json`.

    python -m pipeline.compare                                   # mnist5k, 5 methods, seeds 0 … 4
    python -m pipeline.compare --preset fashion_mnist5 --out results/compare/fashion_mnist5
    python -m pipeline.compare --preset smoke --seeds 0 1 --methods guide gr --out results/smoke
    python -m pipeline.compare --methods guide gr --set diffusion.steps_first=1000 diffusion.steps_later=600 \
        --out results/compare/mnist5k-half      # the preset with params changed, as `dvc exp run -S` takes them
    python -m pipeline.compare --preset fashion_mnist5 --methods joint finetune \
        --include results/compare/fashion_mnist5/runs.json --out results/compare/fashion_mnist5-all

`--set KEY=VALUE …` changes params of the preset for every run (dotted keys, YAML values; not
run.method or run.seed, which --methods and --seeds give); runs.json records them.
`--include` adds the runs of earlier comparisons (their runs.json, same preset and --set) to the table without
running them again, so methods can be added to a comparison one command at a time; with `--methods`
and nothing after it, only the included runs are tabulated.

guide, gr and ddgr of one seed share the diffusion model, so the table leads with each method's
per-seed difference to `gr` (the same replay, unguided): its mean with a 95% Student-t interval over
seeds (pipeline.stats), and in how many seeds the method came out higher. Absolute means ± standard
deviations follow. Writes OUT/summary.md, OUT/summary.csv (one row per method and metric),
OUT/paired.csv (one row per method, seed and metric), OUT/runs.csv (one row per run) and OUT/runs.json.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

from guide.continual import METHODS
from guide.io import atomic_path, atomic_write_json, atomic_write_text
from guide.metrics import HEADLINE
from params import PRESETS, ParamsError, dump_params, load_params, preset
from pipeline import tool_env
from pipeline.graph import build_graph, is_uncached
from pipeline.stats import paired_ci, paired_differences, seeds_higher

ROOT = Path(__file__).resolve().parents[1]
METRICS = HEADLINE
BASELINE = "gr"  # the same replay as guide and ddgr, unguided
RAN = re.compile(r"Running stage '([^']+)'")
RESTORED = re.compile(r"Stage '([^']+)' (?:is cached - skipping run|didn't change, skipping)")


def _env() -> dict:
    """The environment every DVC call here runs in: no analytics, this interpreter's tools first."""
    return {**tool_env(), "DVC_NO_ANALYTICS": "1"}


def scratch_repo(workdir: Path, cache_dir: Path, params_text: str | None = None) -> None:
    """A git repository holding the project's tracked files as they are now (no outputs), with DVC
    initialised and its cache (run cache included) at `cache_dir`: by default the project's own, so a
    `make demo` run is reused by the comparison and the comparison's runs by later `dvc repro`s. An
    existing one is brought up to date with the project's files first, so it never runs old code.
    With `params_text`, that params.yaml and its rendered dvc.yaml are committed instead of the
    project's. A new commit is made only when something changed."""
    workdir.mkdir(parents=True, exist_ok=True)
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file() and not f.startswith(("metrics/", "plots/", "results/")) and f != "dvc.lock":
            (workdir / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, workdir / f)
    if params_text is not None:
        (workdir / "params.yaml").write_text(params_text)
        subprocess.run([sys.executable, "-m", "pipeline.render"], cwd=workdir, check=True, env=_env(),
                       capture_output=True)
    fresh = not (workdir / ".git").exists()
    subprocess.run(("git init -q && " if fresh else "") + "git add -A", shell=True, cwd=workdir, check=True)
    # DVC's outputs stay out of git: one that moved from git to DVC's cache since this workdir was made
    # would otherwise still be tracked here, and DVC refuses to run its stage
    cached = [o for st in build_graph(load_params(workdir / "params.yaml")) for o in st.outs if not is_uncached(o)]
    subprocess.run(["git", "rm", "-r", "-q", "--cached", "--ignore-unmatch", "--", *cached],
                   cwd=workdir, check=True, capture_output=True)
    subprocess.run("git diff --cached --quiet || "
                   "git -c user.name=scratch -c user.email=scratch@localhost commit -qm 'project files'",
                   shell=True, cwd=workdir, check=True)
    if fresh:
        cache_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(["dvc", "cache", "dir", "--local", str(cache_dir)], cwd=workdir, check=True, env=_env())


def parse_sets(pairs: list[str], preset_name: str) -> dict:
    """`--set KEY=VALUE` pairs as nested params overrides, checked against the schema on `preset_name`.
    ValueError naming the pair or the field when one is malformed, unknown, or of the wrong type."""
    nested: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        parts = key.split(".")
        if not sep or not all(parts):
            raise ValueError(f"--set {pair!r}: expected KEY=VALUE with a dotted key, e.g. diffusion.steps_first=1000")
        if key in ("run.method", "run.seed"):
            raise ValueError(f"--set {pair!r}: {key} is given by --{key.split('.')[1]}s")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {pair!r}: {part} is given a value and keys")
        node[parts[-1]] = yaml.safe_load(value)
    try:
        preset(preset_name, **nested)
    except (ParamsError, ValueError) as e:
        raise ValueError(f"--set: {e}") from None
    return nested


def run_params(preset_name: str, method: str, seed: int, sets: dict | None = None):
    over = {k: dict(v) if isinstance(v, dict) else v for k, v in (sets or {}).items()}
    over["run"] = {**over.get("run", {}), "method": method, "seed": seed}
    return preset(preset_name, **over)


def reproduce(workdir: Path, preset_name: str, method: str, seed: int, sets: dict | None = None) -> dict:
    (workdir / "params.yaml").write_text(dump_params(run_params(preset_name, method, seed, sets)))
    env = _env()
    subprocess.run([sys.executable, "-m", "pipeline.render"], cwd=workdir, check=True, env=env, capture_output=True)
    start = time.perf_counter()
    proc = subprocess.run(["dvc", "repro"], cwd=workdir, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    log = proc.stdout + proc.stderr
    (workdir / "logs").mkdir(exist_ok=True)
    (workdir / "logs" / f"{method}-seed{seed}.log").write_text(log)
    if proc.returncode:
        raise RuntimeError(f"dvc repro failed for {method}, seed {seed}:\n{log[-3000:]}")
    summary = json.loads((workdir / "metrics" / "summary.json").read_text())
    return {"method": method, "seed": seed, "wall_s": round(wall, 1), "ran": RAN.findall(log),
            "restored": RESTORED.findall(log), **{k: summary[k] for k in (*METRICS, "backward_transfer")},
            **replay_columns(summary), "accuracy_matrix": summary["accuracy_matrix"]}


def replay_columns(summary: dict) -> dict:
    """The mechanism metrics of a run's summary as flat columns (empty without generated replay)."""
    if "replay" not in summary:
        return {}
    r = summary["replay"]
    return {"oracle_test_accuracy": summary["oracle_test_accuracy"],
            **{f"replay_{view}_{k}": v for view in ("guided", "unguided") for k, v in r[view].items()}}


def check_sharing(runs: list[dict]) -> list[str]:
    """Problems, if any: a diffusion or rehearsal stage that trained more than once for one seed."""
    problems = []
    for seed in sorted({r["seed"] for r in runs}):
        trained: dict[str, list[str]] = {}
        for r in runs:
            if r["seed"] == seed:
                for name in r["ran"]:
                    if name.startswith(("diffusion-", "rehearsal-")):
                        trained.setdefault(name, []).append(r["method"])
        problems += [f"seed {seed}: {n} trained by {', '.join(m)}" for n, m in trained.items() if len(m) > 1]
    return problems


def read_runs(paths: list[str], key, check) -> list[dict]:
    """The runs recorded in earlier runs.json files (a comparison's or a sweep's), in order.
    `check(data)` returns why a file does not belong here, or None; `key(run)` returns (identity,
    label). ValueError naming the file when one is missing or unreadable, does not belong, or holds a
    run whose identity an earlier one already had."""
    runs, seen = [], {}
    for path in paths:
        try:
            data = json.loads(Path(path).read_text())
            keyed = [(key(r), r) for r in data["runs"]]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"--include {path}: not a runs.json written here ({type(e).__name__}: {e})") from None
        problem = check(data)
        if problem:
            raise ValueError(f"--include {path}: {problem}")
        for (identity, label), r in keyed:
            if identity in seen:
                raise ValueError(f"--include {path}: {label} is already in {seen[identity]}")
            seen[identity] = path
            runs.append(r)
    return runs


def load_included(paths: list[str], preset_name: str, sets: list[str] | None = None) -> list[dict]:
    """The runs of earlier comparisons (their runs.json), all of preset `preset_name` with the same
    `--set` pairs (see read_runs)."""
    def check(data):
        if data.get("preset") != preset_name:
            return f"runs of preset {data.get('preset')!r}, not {preset_name!r}"
        if sorted(data.get("set", [])) != sorted(sets or []):
            return f"runs with --set {' '.join(data.get('set', [])) or '(none)'}, not {' '.join(sets or []) or '(none)'}"
        return None
    return read_runs(paths, lambda r: ((r["method"], r["seed"]), f"{r['method']} seed {r['seed']}"), check)


def markdown(frame: pd.DataFrame) -> str:
    head = "| " + " | ".join([frame.index.name or "", *frame.columns]) + " |"
    rule = "|" + "---|" * (len(frame.columns) + 1)
    rows = ["| " + " | ".join([str(i), *map(str, row)]) + " |" for i, row in zip(frame.index, frame.values)]
    return "\n".join([head, rule, *rows]) + "\n"


def method_order(methods=None) -> list[str]:
    """`methods` (default: every registered method) in the registry's order, those that train a
    diffusion model first, so the others reuse it."""
    chosen = set(METHODS if methods is None else methods)
    return sorted((m for m in METHODS if m in chosen), key=lambda m: not METHODS[m].uses_diffusion)


def paired_rows(runs: list[dict], baseline: str = BASELINE) -> pd.DataFrame:
    """One row per (method, seed, metric): the method's value minus the baseline's on the same seed."""
    rows = []
    for k in METRICS:
        diffs = paired_differences({(r["method"], r["seed"]): r[k] for r in runs}, baseline)
        rows += [{"method": m, "seed": seed, "metric": k, "delta": d} for m, per in diffs.items()
                 for seed, d in sorted(per.items())]
    return pd.DataFrame(rows, columns=["method", "seed", "metric", "delta"])


def summarize(runs: list[dict], baseline: str = BASELINE) -> pd.DataFrame:
    """One row per (method, metric): mean and std over seeds, and the paired Δ vs the baseline."""
    df, paired = pd.DataFrame(runs), paired_rows(runs, baseline)
    rows = []
    for m in method_order(df.method):
        for k in METRICS:
            v = df.loc[df.method == m, k]
            row = {"method": m, "metric": k, "seeds": len(v), "mean": v.mean(), "std": v.std(ddof=1)}
            d = paired.loc[(paired.method == m) & (paired.metric == k), "delta"]
            if len(d):
                ci = paired_ci(d)
                row.update(delta=ci.mean, delta_low=ci.low, delta_high=ci.high, higher_seeds=ci.wins,
                           tied_seeds=ci.ties, paired_seeds=ci.n, significant=ci.significant)
            rows.append(row)
    return pd.DataFrame(rows)


def report_markdown(table: pd.DataFrame, baseline: str = BASELINE) -> str:
    """The paired table first (Δ vs the baseline, 95% CI, seeds higher), then absolute values."""
    def cell_delta(r) -> str:
        if pd.isna(r.get("delta", float("nan"))):
            return "—"
        ci = f"{r.delta:+.3f} [{r.delta_low:+.3f}, {r.delta_high:+.3f}]" if r.paired_seeds > 1 else f"{r.delta:+.3f}"
        tied = int(r.get("tied_seeds", 0) or 0)
        return f"{ci}{' *' if r.significant else ''} ({seeds_higher(int(r.higher_seeds), int(r.paired_seeds), tied)})"

    def cell_abs(r) -> str:
        return f"{r['mean']:.3f} ± {r['std']:.3f}" if r.seeds > 1 else f"{r['mean']:.3f}"

    out = []
    if "delta" in table and table["delta"].notna().any():
        rows = table[table.method != baseline]
        frame = pd.DataFrame(index=pd.Index(method_order(rows.method), name="method"))
        for k in METRICS:
            frame[f"Δ {k}"] = [cell_delta(rows[(rows.method == m) & (rows.metric == k)].iloc[0])
                               for m in frame.index]
        n = int(table["paired_seeds"].max())
        out += [f"Paired by seed, Δ = method − {baseline} on the same seed (same diffusion model for the replay "
                f"methods): mean [95% Student-t interval] over {n} seeds, * where the interval excludes 0, "
                f"(seeds where the method's value is higher / seeds; a |Δ| ≤ 1e-6 is a tie, counted apart). Lower forgetting is better.\n",
                markdown(frame)]
    frame = pd.DataFrame(index=pd.Index(method_order(table.method), name="method"))
    for k in METRICS:
        frame[k] = [cell_abs(table[(table.method == m) & (table.metric == k)].iloc[0]) for m in frame.index]
    frame["seeds"] = [int(table[table.method == m].seeds.iloc[0]) for m in frame.index]
    out += ["Absolute values, mean ± standard deviation over seeds:\n", markdown(frame)]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.compare", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="mnist5k", choices=PRESETS)
    ap.add_argument("--methods", nargs="*", default=method_order(), choices=list(METHODS),
                    help="the methods to run (none: only tabulate the --include runs)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    ap.add_argument("--workdir", default="compare-work", help="the scratch repository (kept: reruns reuse it)")
    ap.add_argument("--out", default="results/compare")
    ap.add_argument("--cache-dir", default=str(ROOT / ".dvc" / "cache"),
                    help="DVC cache (and run cache) the scratch repository uses; default: the project's")
    ap.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE", dest="sets",
                    help="params of the preset changed for every run (dotted keys, YAML values)")
    ap.add_argument("--include", nargs="+", default=[], metavar="RUNS_JSON",
                    help="earlier comparisons' runs.json (same preset): their runs join the table, not rerun")
    args = ap.parse_args(argv)
    methods = method_order(args.methods)
    if not methods and not args.include:
        ap.error("--methods: none given, and no --include runs to tabulate")
    try:
        sets = parse_sets(args.sets, args.preset)
        runs = load_included(args.include, args.preset, args.sets)
    except ValueError as e:
        ap.error(str(e))
    clash = sorted({(r["method"], r["seed"]) for r in runs} & {(m, s) for m in methods for s in args.seeds})
    if clash:
        ap.error("--include already holds " + ", ".join(f"{m} seed {s}" for m, s in clash)
                 + ": leave them out of --methods/--seeds, or out of --include")
    workdir, out = Path(args.workdir).resolve(), Path(args.out)
    if methods:
        scratch_repo(workdir, Path(args.cache_dir).resolve())
    for seed in args.seeds:
        for method in methods:
            r = reproduce(workdir, args.preset, method, seed, sets)
            print(f"{method:9s} seed {seed}: {r['final_average_accuracy']:.3f} final average accuracy, "
                  f"{r['wall_s']:.0f} s, ran {len(r['ran'])} stages, reused {len(r['restored'])}"
                  + (f" ({', '.join(n for n in r['restored'] if n.startswith('diffusion'))})" if r["restored"] else ""),
                  flush=True)
            runs.append(r)
    problems = check_sharing(runs)
    table = summarize(runs)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "runs.json", {"preset": args.preset, "set": sorted(args.sets), "runs": runs,
                                          "sharing_problems": problems,
                                          "included": args.include})
    for name, frame in (("runs.csv", pd.DataFrame(runs).drop(columns=["ran", "restored", "accuracy_matrix"])),
                        ("paired.csv", paired_rows(runs)), ("summary.csv", table)):
        with atomic_path(out / name) as tmp:
            frame.to_csv(tmp, index=False, float_format="%.6g")
    text = report_markdown(table)
    atomic_write_text(out / "summary.md", text)
    print(text)
    if problems:
        print("a diffusion stage trained more than once for one seed:\n" + "\n".join(problems), file=sys.stderr)
        return 1
    print("every diffusion and rehearsal stage trained once per seed; the other methods restored it from DVC's run cache")
    return 0


if __name__ == "__main__":
    sys.exit(main())
