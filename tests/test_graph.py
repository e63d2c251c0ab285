"""The task graph unrolled from params, and the dvc.yaml rendered from it."""
import subprocess
import sys
from pathlib import Path

import pytest

from params import preset
from pipeline.graph import build_graph
from pipeline.render import render

ROOT = Path(__file__).resolve().parents[1]


def names(p):
    return [s.name for s in build_graph(p)]


def test_committed_dvc_yaml_is_current():
    r = subprocess.run([sys.executable, "-m", "pipeline.render", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_committed_dvc_lock_records_the_code_as_it_is():
    """The committed results (dvc.lock, metrics/) were made by the code in the repository: every code
    dependency's md5 in dvc.lock is the file's (an edit to guide/, params/ or stages/ after the default
    run must be followed by a rerun, or — for an edit that changes no output — `dvc commit`)."""
    import hashlib

    import yaml

    lock = yaml.safe_load((ROOT / "dvc.lock").read_text())
    stale = sorted({d["path"] for st in lock["stages"].values() for d in st.get("deps", [])
                    if d["path"].startswith(("guide/", "params/", "stages/"))
                    and hashlib.md5((ROOT / d["path"]).read_bytes()).hexdigest() != d["md5"]})
    assert stale == [], f"dvc.lock predates these files: {stale}"


def test_check_fails_and_shows_the_difference_when_stale(tmp_path):
    stale = tmp_path / "dvc.yaml"
    stale.write_text((ROOT / "dvc.yaml").read_text().replace("evaluate-t4", "evaluate-t9"))
    r = subprocess.run([sys.executable, "-m", "pipeline.render", "--check", "--output", str(stale)], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 1 and "-  evaluate-t9:" in r.stdout and "+  evaluate-t4:" in r.stdout
    assert "python -m pipeline.render" in r.stderr


def test_smoke_guide_graph():
    assert names(preset("smoke")) == [
        "check-graph", "oracle", "diffusion-t0", "rehearsal-t1", "diffusion-t1", "classifier-t0", "evaluate-t0",
        "replay-t1-r0", "classifier-t1-r0", "replay-t1-r1", "classifier-t1-r1", "evaluate-t1", "report"]


def test_graph_is_topological_and_each_output_has_one_producer():
    for method in ("guide", "gr", "ddgr", "finetune", "joint"):
        stages = build_graph(preset("mnist5k", run={"method": method}))
        made: dict[str, str] = {}
        for st in stages:
            for d in st.deps:
                if d.startswith("artifacts/"):
                    assert d in made, f"{method}: {st.name} needs {d} before anything makes it"
            for o in st.outputs:
                assert o not in made, f"{o} made twice"
                made[o] = st.name
            assert set(st.upstream) <= {made[d] for d in st.deps if d in made}


def test_methods_with_generated_replay_share_the_diffusion_branch():
    def branch(method):
        return {s.name: (s.cmd, s.deps, s.params, s.outs) for s in build_graph(preset("mnist5k", run={"method": method}))
                if s.kind in ("diffusion", "rehearsal")}

    assert branch("guide") == branch("gr") == branch("ddgr") and len(branch("guide")) > 0
    assert branch("finetune") == branch("joint") == {}


def test_rounds_and_online_mode_shape_the_classifier_branch():
    p = preset("smoke", replay={"rounds": 4})
    assert [n for n in names(p) if n.startswith(("replay", "classifier"))] == [
        "classifier-t0", *[f"{k}-t1-r{r}" for r in range(4) for k in ("replay", "classifier")]]
    online = preset("smoke", guidance={"mode": "online"}, replay={"rounds": 1})
    assert not [n for n in names(online) if n.startswith("replay")] and "classifier-t1" in names(online)


def test_a_guidance_change_touches_only_replay_stages_params():
    """Which stages read the guidance group: exactly the replay stages (the classifier reruns
    through its replay shard)."""
    stages = build_graph(preset("smoke"))
    readers = {s.name for s in stages if "guidance" in s.params}
    assert readers == {"replay-t1-r0", "replay-t1-r1"}
    online = build_graph(preset("mnist5k"))  # the default: replay regenerated inside the classifier stage
    assert {s.name for s in online if "guidance" in s.params} == {f"classifier-t{t}" for t in range(1, 5)}


def test_every_replay_is_measured_by_the_oracle_and_reported():
    for p in (preset("smoke"), preset("mnist5k"), preset("mnist5k", run={"method": "gr"})):
        stages = {s.name: s for s in build_graph(p)}
        makers = [s for s in stages.values() if any(o.startswith("artifacts/replay/") for o in s.outs)]
        measured = [o for s in makers for o in s.outs if o.startswith("metrics/replay/")]
        assert makers and all("artifacts/oracle.pt" in s.deps for s in makers) and len(measured) == len(makers)
        assert set(measured) <= set(stages["report"].deps) and "metrics/oracle.json" in stages["report"].deps
    assert "oracle" not in names(preset("mnist5k", run={"method": "joint"}))


def test_dvc_shows_one_metrics_file_the_summary():
    """`dvc exp show` and `dvc metrics show` list the summary alone (its headline keys first); the
    per-shard replay measurements and the oracle's accuracy are uncached outputs the summary averages."""
    for p in (preset("smoke"), preset("mnist5k")):
        assert [m for s in build_graph(p) for m in s.metrics] == ["metrics/summary.json"]


def test_render_is_deterministic():
    p = preset("smoke")
    assert render(build_graph(p)) == render(build_graph(p))


def test_inprocess_targets_run_with_what_they_need_and_nothing_else():
    from pipeline.inprocess import needed

    stages = build_graph(preset("smoke"))
    assert [s.name for s in needed(stages, ["rehearsal-t1", "classifier-t1-r0"])] == [
        "check-graph", "oracle", "diffusion-t0", "rehearsal-t1", "classifier-t0", "replay-t1-r0", "classifier-t1-r0"]
    assert needed(stages, []) == stages
    with pytest.raises(ValueError, match="no stage classifier-t9"):
        needed(stages, ["classifier-t9"])
