"""`python -m pipeline.compare` on the smoke preset: guide and gr for one seed share the diffusion
branch (it trains once), and the table is written; `--set` changes params for every run."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_compare_trains_each_seeds_diffusion_once(tmp_path):
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "WANDB_MODE": "disabled"}  # PATH: tests/conftest.py
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "pipeline.compare", "--preset", "smoke", "--seeds", "0",
                        "--methods", "guide", "gr", "--workdir", str(tmp_path / "work"), "--out", str(out),
                        "--cache-dir", str(tmp_path / "cache"),  # the fewest stages that show the sharing:
                        "--set", "replay.rounds=1", "diffusion.train_last_task=false"],  # 9, not 13
                       cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    record = json.loads((out / "runs.json").read_text())
    assert record["set"] == ["diffusion.train_last_task=false", "replay.rounds=1"]
    runs = {x["method"]: x for x in record["runs"]}
    assert {"diffusion-t0", "oracle", "replay-t1", "classifier-t1"} <= set(runs["guide"]["ran"])
    assert "diffusion-t1" not in runs["guide"]["ran"] + runs["guide"]["restored"]  # --set reached the runs
    assert not [n for n in runs["gr"]["ran"] if n.startswith(("diffusion", "rehearsal"))]
    assert {"diffusion-t0", "oracle"} <= set(runs["gr"]["restored"])
    assert list((tmp_path / "cache").iterdir()), "the run cache went somewhere other than --cache-dir"
    md = (out / "summary.md").read_text()
    tables = [line for line in md.splitlines() if line.startswith("| method |")]
    assert tables[0].startswith("| method | Δ final_average_accuracy")  # the paired table leads
    assert tables[1].startswith("| method | final_average_accuracy")
    paired = md.split(tables[0])[1].split("\n\n")[0]
    assert "| guide |" in paired and "| gr |" not in paired  # gr is the baseline every row is paired with
    assert (out / "summary.csv").exists() and (out / "runs.csv").exists() and (out / "paired.csv").exists()
    assert "replay_unguided_oracle_accuracy" in (out / "runs.csv").read_text().splitlines()[0]

    # a workdir from before an output moved from git to DVC's cache: the next comparison untracks it
    # (or DVC refuses to run its stage: "output 'metrics/oracle.json' is already tracked by SCM")
    from pipeline.compare import scratch_repo

    work = tmp_path / "work"
    subprocess.run("git add -f metrics/oracle.json && git -c user.name=t -c user.email=t@t commit -qm old",
                   shell=True, cwd=work, check=True)
    scratch_repo(work, tmp_path / "cache")
    tracked = subprocess.run(["git", "ls-files"], cwd=work, capture_output=True, text=True, check=True).stdout
    assert "metrics/oracle.json" not in tracked.split() and "params.yaml" in tracked.split()


@pytest.mark.parametrize("pairs,named", [(["diffusion.nope=1"], "diffusion.nope"),
                                         (["replay.rounds=many"], "replay.rounds"),
                                         (["run.seed=3"], "--seeds"), (["steps"], "KEY=VALUE")])
def test_a_bad_set_is_refused_naming_it_before_anything_runs(tmp_path, pairs, named, capsys):
    from pipeline.compare import main

    with pytest.raises(SystemExit) as stop:
        main(["--preset", "smoke", "--methods", "gr", "--workdir", str(tmp_path / "work"),
              "--out", str(tmp_path / "out"), "--set", *pairs])
    assert stop.value.code == 2 and named in capsys.readouterr().err
    assert not (tmp_path / "work").exists() and not (tmp_path / "out").exists()


def test_included_runs_must_have_the_same_set(tmp_path):
    from pipeline.compare import load_included

    runs = tmp_path / "runs.json"
    runs.write_text(json.dumps({"preset": "smoke", "set": ["replay.rounds=1"], "runs": [{"method": "gr", "seed": 0}]}))
    assert len(load_included([str(runs)], "smoke", ["replay.rounds=1"])) == 1
    with pytest.raises(ValueError, match=r"runs.json: runs with --set replay.rounds=1, not \(none\)"):
        load_included([str(runs)], "smoke", [])
