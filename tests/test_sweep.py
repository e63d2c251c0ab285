"""The guidance-scale sweep (pipeline.sweep): gathering queued experiments into paired differences,
and, on the smoke preset, 2 scales of one seed queued and run with DVC, the seed's diffusion branch
trained once."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from params import dump_params, preset
import pipeline.sweep as sweep
from pipeline.sweep import (aggregate, compare_rows, fixed_params, flatten, live_workers, load_included,
                            merge_rows, queue_commands, select, sharing_problems, start_and_wait)

ROOT = Path(__file__).resolve().parents[1]


def _row(seed, scale, final, scale_max=None, ran=()):
    mech = {f"{v}_{k}": 0.5 for v in ("guided", "unguided") for k in
            ("oracle_label_prob", "oracle_accuracy", "current_mass", "current_pred_fraction")}
    return {"name": f"s{scale}-{seed}", "seed": seed, "scale": scale, "scale_max": scale_max,
            "point": f"{scale:g}" if scale_max is None else f"U[{scale:g}, {scale_max:g}]",
            "mean_scale": scale if scale_max is None else (scale + scale_max) / 2, "final_average_accuracy": final,
            "average_incremental_accuracy": final, "forgetting": 1 - final, "ran": list(ran), **mech}


def test_aggregate_pairs_each_point_with_scale_zero_on_the_same_seed():
    rows = [_row(0, 0.0, 0.50), _row(1, 0.0, 0.70), _row(2, 0.0, 0.60),
            _row(0, 0.5, 0.53), _row(1, 0.5, 0.73), _row(2, 0.5, 0.63),
            _row(0, 0.0, 0.40, scale_max=1.0), _row(1, 0.0, 0.75, scale_max=1.0)]
    table = aggregate(rows).set_index("point")
    assert list(table.index) == ["0", "0.5", "U[0, 1]"]  # by mean scale
    assert table.loc["0.5", "delta_final_average_accuracy"] == pytest.approx(0.03)
    assert table.loc["0.5", "delta_final_average_accuracy_low"] == pytest.approx(0.03)  # no spread once paired
    assert table.loc["U[0, 1]", "delta_final_average_accuracy_seeds"] == 2
    assert table.loc["U[0, 1]", "delta_final_average_accuracy"] == pytest.approx((-0.10 + 0.05) / 2)
    assert table.loc["0", "delta_final_average_accuracy"] == 0


def test_a_diffusion_stage_trained_twice_for_one_seed_is_reported():
    ok = [_row(0, 0.0, 0.5, ran=["diffusion-t0", "classifier-t1"]), _row(0, 1.0, 0.5, ran=["classifier-t1"]),
          _row(1, 0.0, 0.5, ran=["diffusion-t0"])]
    assert sharing_problems(ok) == []
    bad = ok + [_row(1, 1.0, 0.5, ran=["diffusion-t0"])]
    assert sharing_problems(bad) == ["seed 1: diffusion-t0 trained in s0.0-1, s1.0-1"]


def test_select_keeps_only_experiments_that_differ_in_the_swept_keys():
    base = {"guidance.scale": 0.1, "guidance.scale_max": None, "run.seed": 0, "diffusion.steps_first": 700}
    exps = [{"name": "a", "params": {**base, "guidance.scale": 0.0, "run.seed": 3}},
            {"name": "b", "params": {**base, "diffusion.steps_first": 1000}},
            {"name": "c", "params": {**base, "guidance.scale": 0.0, "run.seed": 3}}]
    assert [e["name"] for e in select(exps, base)] == ["a"]  # b changed another key; c repeats a's point


def _runs_json(path, rows, **extra):
    path.write_text(json.dumps({"title": "mnist5k/5, guide", "runs": rows, **extra}))
    return str(path)


def test_included_seeds_join_the_pairing(tmp_path):
    """Seeds 0-1 from an earlier gather, seed 2 gathered now: scale 0.5 is paired over all three."""
    fixed = {"data.dataset": "mnist5k", "classifier.lr_first": 0.1}
    earlier = [_row(0, 0.0, 0.50), _row(1, 0.0, 0.70), _row(0, 0.5, 0.53), _row(1, 0.5, 0.72)]
    rows = merge_rows([_row(2, 0.5, 0.64), _row(2, 0.0, 0.60)],
                      load_included([_runs_json(tmp_path / "a.json", earlier, fixed_params=fixed)], fixed,
                                    "mnist5k/5, guide"))
    assert [(r["scale"], r["seed"]) for r in rows] == [(0.0, 0), (0.0, 1), (0.0, 2), (0.5, 0), (0.5, 1), (0.5, 2)]
    half = aggregate(rows).set_index("point").loc["0.5"]
    assert half["delta_final_average_accuracy_seeds"] == 3
    assert half["delta_final_average_accuracy"] == pytest.approx((0.03 + 0.02 + 0.04) / 3)
    with pytest.raises(ValueError, match="point 0.5 seed 1"):
        merge_rows([_row(1, 0.5, 0.7)], earlier)


def test_an_include_of_another_sweep_is_refused_with_its_name(tmp_path):
    fixed = {"data.dataset": "mnist5k", "classifier.lr_first": 0.1}
    other = _runs_json(tmp_path / "other.json", [_row(0, 0.0, 0.5)],
                       fixed_params={**fixed, "classifier.lr_first": 0.05})
    with pytest.raises(ValueError, match=r"other.json.*classifier.lr_first"):
        load_included([other], fixed, "mnist5k/5, guide")
    old = _runs_json(tmp_path / "old.json", [_row(0, 0.0, 0.5)])  # no fixed_params: the title decides
    assert len(load_included([old], fixed, "mnist5k/5, guide")) == 1
    with pytest.raises(ValueError, match="old.json"):
        load_included([old], fixed, "fashion_mnist/5, guide")
    with pytest.raises(ValueError, match=r"old.json.*point 0 seed 0"):
        load_included([old, old], fixed, "mnist5k/5, guide")
    (tmp_path / "bad.json").write_text("[]")
    with pytest.raises(ValueError, match="bad.json"):
        load_included([str(tmp_path / "bad.json")], fixed, "mnist5k/5, guide")


def _compare_json(path, runs, preset_name="mnist5k", sets=()):
    def run(method, seed, final, mech):
        return {"method": method, "seed": seed, "final_average_accuracy": final, "average_incremental_accuracy": final,
                "forgetting": 1 - final, "oracle_test_accuracy": 0.9,
                **{f"replay_{v}_{k}": mech for v in ("guided", "unguided") for k in
                   ("oracle_label_prob", "oracle_accuracy", "current_mass", "current_pred_fraction")}}
    path.write_text(json.dumps({"preset": preset_name, "set": list(sets), "runs": [run(*r) for r in runs]}))
    return str(path)


def test_a_comparisons_guide_joins_at_its_scale_only_where_its_gr_is_the_sweeps_scale_zero(tmp_path):
    """mnist5k's guide is scale 0.1. Seed 0: the comparison's gr equals the sweep's own scale 0 (which
    stays) and its guide pairs with it. Seed 1: the sweep has no run, so the comparison's pair joins
    whole. Seed 2: the sweep ran 0.1 itself, so the comparison's runs of that seed are not used (its gr
    differs there, and that is no error)."""
    fixed = fixed_params(flatten(preset("mnist5k", run={"method": "guide"}).model_dump(mode="json")))
    own = [_row(0, 0.0, 0.60), _row(0, 0.5, 0.55), _row(2, 0.0, 0.50), _row(2, 0.1, 0.52)]
    good = _compare_json(tmp_path / "c.json", [("guide", 0, 0.63, 0.5), ("gr", 0, 0.60, 0.5),
                                              ("guide", 1, 0.70, 0.5), ("gr", 1, 0.68, 0.5),
                                              ("guide", 2, 0.90, 0.5), ("gr", 2, 0.40, 0.5)])
    joined = compare_rows([good], fixed, own)
    assert sorted((r["point"], r["seed"]) for r in joined) == [("0", 1), ("0.1", 0), ("0.1", 1)]
    table = aggregate(merge_rows(own, joined)).set_index("point")
    assert table.loc["0.1", "delta_final_average_accuracy"] == pytest.approx((0.03 + 0.02 + 0.02) / 3)
    assert table.loc["0.1", "delta_final_average_accuracy_seeds"] == 3
    other_gr = _compare_json(tmp_path / "d.json", [("guide", 0, 0.63, 0.5), ("gr", 0, 0.61, 0.5)])
    with pytest.raises(ValueError, match=r"d.json: seed 0: its gr is not this sweep's scale 0 \(final_average_accuracy"):
        compare_rows([other_gr], fixed, own)
    other_replay = _compare_json(tmp_path / "e.json", [("guide", 0, 0.63, 0.5), ("gr", 0, 0.60, 0.4)])
    with pytest.raises(ValueError, match="seed 0.*unguided_oracle_label_prob"):
        compare_rows([other_replay], fixed, own)
    unpaired = _compare_json(tmp_path / "u.json", [("guide", 1, 0.63, 0.5)])
    with pytest.raises(ValueError, match="u.json: seed 1: no gr run"):
        compare_rows([unpaired], fixed, own)
    changed = _compare_json(tmp_path / "f.json", [("gr", 1, 0.6, 0.5)], sets=["classifier.steps_first=300"])
    with pytest.raises(ValueError, match=r"f.json: a comparison of other params \(classifier.steps_first"):
        compare_rows([changed], fixed, own)
    fashion = _compare_json(tmp_path / "g.json", [("gr", 1, 0.6, 0.5)], preset_name="fashion_mnist5")
    with pytest.raises(ValueError, match=r"g.json: a comparison of other params \(data.dataset"):
        compare_rows([fashion], fixed, own)
    with pytest.raises(ValueError, match=r"h.json: point 0.1 seed 1 is already in .*c.json"):
        compare_rows([good, _compare_json(tmp_path / "h.json", [("guide", 1, 0.7, 0.5), ("gr", 1, 0.68, 0.5)])],
                     fixed, own)


def test_queue_commands_are_dvc_grids_over_seeds():
    cmds = queue_commands([(0.0, None), (0.0, 0.5)], [0, 1, 2])
    assert cmds[0] == ["exp", "run", "--queue", "-S", "guidance.scale=0", "-S", "guidance.scale_max=null",
                       "-S", "run.seed=0,1,2"]
    assert "guidance.scale_max=0.5" in cmds[1]


def workers_in(repo: Path) -> list[int]:
    """Pids of the DVC queue workers working in `repo`."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and b"queue-worker" in (proc / "cmdline").read_bytes() \
                    and Path(os.readlink(proc / "cwd")).resolve() == repo.resolve():
                found.append(int(proc.name))
        except OSError:
            pass
    return found


def _queue(*statuses):
    return [{"task": f"t{i}", "name": f"e{i}", "status": st} for i, st in enumerate(statuses)]


def test_a_queue_whose_worker_left_is_started_again_and_a_stop_goes_only_to_a_live_worker(monkeypatch):
    # the worker took a stale shutdown and exited after its first task: two tasks wait, no one runs them
    looks = iter([_queue("Running", "Queued", "Queued"), _queue("Success", "Queued", "Queued"),
                  _queue("Success", "Queued", "Queued"), _queue("Success", "Queued", "Queued"),
                  _queue("Success", "Running", "Queued"), _queue("Success", "Success", "Success")])
    # asked only when nothing runs, and at the end: first a worker between two tasks (no restart)
    alive = iter([[11], [], [], []])
    started, sent = [], []
    monkeypatch.setattr(sweep, "dvc", lambda args, root, check=True: sent.append(args))
    rows = start_and_wait(Path("."), 1, poll_s=0, status=lambda root: next(looks),
                          workers=lambda root: next(alive), start=lambda root, jobs: started.append(jobs))
    assert len(started) == 2  # at the start, and once after two looks with tasks waiting and no worker
    assert [r["status"] for r in rows] == ["Success"] * 3
    assert sent == []  # no worker at the end: a stop would stay in the broker for the next one


def test_the_queue_is_stopped_when_done_while_its_worker_lives(monkeypatch):
    looks = iter([_queue("Running"), _queue("Success")])
    sent = []
    monkeypatch.setattr(sweep, "dvc", lambda args, root, check=True: sent.append(args))
    start_and_wait(Path("."), 1, poll_s=0, status=lambda root: next(looks), workers=lambda root: [7],
                   start=lambda root, jobs: None)
    assert sent == [["queue", "stop"]]


def test_live_workers_are_the_recorded_ones_still_running(tmp_path):
    d = tmp_path / ".dvc" / "tmp" / "exps" / "celery"
    d.mkdir(parents=True)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    (d / "dvc-exp-worker-1.json").write_text(json.dumps({"pid": os.getpid(), "returncode": None}))
    (d / "dvc-exp-worker-2.json").write_text(json.dumps({"pid": os.getpid(), "returncode": 0}))  # exited
    (d / "dvc-exp-worker-3.json").write_text(json.dumps({"pid": int(gone), "returncode": None}))  # no process
    (d / "dvc-exp-worker-4.json").write_text("{")  # half-written
    assert live_workers(tmp_path) == [os.getpid()]
    assert live_workers(tmp_path / "nowhere") == []


@pytest.mark.slow
def test_smoke_sweep_runs_queued_experiments_and_trains_each_seeds_diffusion_once(tmp_path):
    repo, out = tmp_path / "repo", tmp_path / "out"
    tracked = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
    for f in tracked:
        if (ROOT / f).is_file() and not f.startswith(("artifacts/", "metrics/", "plots/", "results/")) and f != "dvc.lock":
            (repo / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, repo / f)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1",  # PATH: tests/conftest.py
           "WANDB_MODE": "disabled", "GIT_AUTHOR_NAME": "t",
           "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    # the fewest stages that show the sharing: one seed (pairing over seeds: the tests above), one
    # replay round, no diffusion model for the last task (9 stages, not 13); a look at the queue every 3 s
    (repo / "params.yaml").write_text(dump_params(preset("smoke", replay={"rounds": 1},
                                                         diffusion={"train_last_task": False})))
    subprocess.run("git init -q && python -m pipeline.render && git add -A && git commit -qm smoke", shell=True,
                   cwd=repo, env=env, check=True, capture_output=True)
    r = subprocess.run([sys.executable, "-m", "pipeline.sweep", "run", "--scales", "0", "1", "--ranges",
                        "--seeds", "0", "--out", str(out), "--poll", "3"], cwd=repo, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    status = subprocess.run(["dvc", "queue", "status"], cwd=repo, env=env, capture_output=True, text=True).stdout
    assert status.count("Success") == 2 and "Failed" not in status
    assert "$ dvc queue start -j 1" in r.stdout and " done, " in r.stdout  # it polled while the queue ran
    for _ in range(60):  # and stopped the queue's worker when the queue was done (never left idle)
        if not workers_in(repo):
            break
        time.sleep(0.5)
    assert not workers_in(repo), "a DVC queue worker outlived the sweep"
    record = json.loads((out / "runs.json").read_text())
    assert record["logs_found"] == 2 and record["sharing_problems"] == []
    runs = record["runs"]
    assert sorted(x["scale"] for x in runs) == [0.0, 1.0] and {x["seed"] for x in runs} == {0}
    trained = [x for x in runs if "diffusion-t0" in x["ran"]]
    assert len(trained) == 1  # the other experiment restored it from the run cache
    other = next(x for x in runs if x is not trained[0])
    assert {"diffusion-t0", "oracle"} <= set(other["restored"])
    assert {"replay-t1", "classifier-t1"} <= set(other["ran"])  # one round: no round suffix
    table = pd.read_csv(out / "sweep.csv", dtype={"point": str})
    assert list(table.point) == ["0", "1"] and table.set_index("point").loc["1", "delta_final_average_accuracy_seeds"] == 1
    assert (out / "delta.png").stat().st_size > 0 and (out / "mechanism.png").stat().st_size > 0
    assert "| 1 |" in (out / "sweep.md").read_text()
