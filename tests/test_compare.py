"""`python -m pipeline.compare` on the smoke preset: guide and gr for one seed share the diffusion
branch (it trains once), and the table is written."""
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
                        "--cache-dir", str(tmp_path / "cache")],
                       cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    runs = {x["method"]: x for x in json.loads((out / "runs.json").read_text())["runs"]}
    assert {"diffusion-t0", "rehearsal-t1", "diffusion-t1"} <= set(runs["guide"]["ran"])
    assert not [n for n in runs["gr"]["ran"] if n.startswith(("diffusion", "rehearsal"))]
    assert {"diffusion-t0", "diffusion-t1"} <= set(runs["gr"]["restored"])
    assert list((tmp_path / "cache").iterdir()), "the run cache went somewhere other than --cache-dir"
    md = (out / "summary.md").read_text()
    tables = [line for line in md.splitlines() if line.startswith("| method |")]
    assert tables[0].startswith("| method | Δ final_average_accuracy")  # the paired table leads
    assert tables[1].startswith("| method | final_average_accuracy")
    paired = md.split(tables[0])[1].split("\n\n")[0]
    assert "| guide |" in paired and "| gr |" not in paired  # gr is the baseline every row is paired with
    assert (out / "summary.csv").exists() and (out / "runs.csv").exists() and (out / "paired.csv").exists()
    assert "replay_unguided_oracle_accuracy" in (out / "runs.csv").read_text().splitlines()[0]
