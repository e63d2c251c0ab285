"""The run's plan (pipeline.plan) and the whole run's time left (pipeline.repro, the stages' bars)."""
import collections
import json
import sys
from pathlib import Path

import pytest
from guide.io import load_shard
from params import dump_params, load_params, preset
from pipeline.graph import build_graph
from pipeline.plan import Work, stage_work
from pipeline.repro import Tracker
from stages import common

from test_pipeline import RUNNING, repo, sh, smoke_origin  # noqa: F401  (the shared smoke repository)

ROOT = Path(__file__).resolve().parents[1]


def test_work_counts_batches_with_a_smaller_last_one():
    w = Work()
    w.sample(250, 10, True, 100)
    assert list(zip(w.sampling, w.batches)) == [((100, 10, True), 2), ((50, 10, True), 1)]
    assert w.describe() == "250 guided images × 10 steps"


def test_the_default_plan_counts_what_the_default_stages_compute():
    p = load_params(ROOT / "params.yaml")
    works = {s.name: stage_work(s, p) for s in build_graph(p)}
    assert works["diffusion-t0"].diffusion_steps == p.diffusion.steps_first
    assert works["diffusion-t1"].diffusion_steps == p.diffusion.steps_later
    assert works["oracle"].oracle_steps == p.oracle.steps
    # task 2: B//3 real and 2·(B//3) replay images per step, the replay regenerated every `interval`
    # steps, guided (and, for the probe, unguided from the same noise), plus the replay grid both ways
    chunks = -(-p.classifier.steps_later // p.classifier.interval)
    w = works["classifier-t2"]
    guided = sum(n * c for (n, _, g), c in zip(w.sampling, w.batches) if g)
    unguided = sum(n * c for (n, _, g), c in zip(w.sampling, w.batches) if not g)
    assert guided == unguided == chunks * (p.classifier.batch_size // 3) * 2 + p.evaluate.grid_images
    assert works["classifier-t0"].sampling == [] and works["report"].describe() == "bookkeeping"


@pytest.mark.slow
def test_the_plan_counts_the_images_the_smoke_stages_wrote(repo):
    path, _, _ = repo
    p = load_params(path / "params.yaml")
    checked = 0
    for st in build_graph(p):
        w = stage_work(st, p)
        images = {g: sum(n * c for (n, _, gg), c in zip(w.sampling, w.batches) if gg == g) for g in (True, False)}
        if st.kind in ("rehearsal", "replay"):
            shard = load_shard(path / st.outs[0])
            grid = p.evaluate.grid_images if st.kind == "replay" and st.args[-1] == "--round 0" else 0
            drawn = images[False] if st.kind == "rehearsal" else images[True] - grid
            assert len(shard["images"]) == drawn, st.name
            checked += 1
    assert checked == 3  # rehearsal-t1 and the two replay rounds of task 1


def test_the_tracker_rescales_what_is_left_by_the_finished_stages(tmp_path):
    now = [0.0]
    t = Tracker({"a": 10.0, "b": 20.0, "c": 30.0}, tmp_path / "p.json", clock_=lambda: now[0])
    assert t.start("a") == "[run] a: stage 1/3 · 0:00 so far · ≈1:00 left"
    now[0] = 130.0  # a took 130 s against 10 projected: the rest is scaled by (130 + 60) / (10 + 60)
    scale = (130 + Tracker.PRIOR_S) / (10 + Tracker.PRIOR_S)
    assert t.start("b") == f"[run] b: stage 2/3 · 2:10 so far · ≈{round(50 * scale) // 60}:{round(50 * scale) % 60:02d} left"
    state = json.loads((tmp_path / "p.json").read_text())
    assert state["current"] == "b" and state["current_since"] == 130.0
    assert (state["current_left"], state["after"]) == pytest.approx((20 * scale, 30 * scale))
    t.skip("c")  # DVC found it unchanged after all
    now[0] = 160.0
    assert t.finish() == "[run] 2 stages in 2:40 (projected 0:30); by kind, took/projected: a 2:10/0:10, b 0:30/0:20"


def test_a_stage_bar_shows_the_whole_runs_time_left(tmp_path, monkeypatch):
    (tmp_path / "p.json").write_text(json.dumps({"current": "x", "current_left": 100, "current_since": 0,
                                                 "after": 600}))
    monkeypatch.setenv(common.RUN_PROGRESS, str(tmp_path / "p.json"))
    bar = common.progress(10, "x")
    bar.n, bar.start_t, bar.last_print_t = 5, bar._time() - 50, bar._time()  # 5 of 10 steps in 50 s
    bar.set_postfix(loss="0.1", refresh=False)
    assert "loss=0.1, run ≈10:50 left" in str(bar)  # 50 s of its own + 600 s after it
    bar.close()
    monkeypatch.setenv(common.RUN_PROGRESS, str(tmp_path / "missing.json"))
    plain = common.progress(10, "y")
    assert "run ≈" not in str(plain)
    plain.close()


@pytest.mark.slow
def test_repro_plans_the_stages_dvc_runs_and_prints_the_time_left(repo):
    path, env, _ = repo
    text = (path / "params.yaml").read_text()
    assert "evaluate: {batch_size: 500" in text
    (path / "params.yaml").write_text(text.replace("evaluate: {batch_size: 500", "evaluate: {batch_size: 7"))
    r = sh(f"{sys.executable} -m pipeline.repro", path, env=env)
    ran = RUNNING.findall(r.stdout)
    announced = [line.split(":")[0][len("[run] "):] for line in r.stdout.splitlines() if line.startswith("[run] ") and
                 ": stage " in line]
    assert {"evaluate-t0", "evaluate-t1"} <= set(ran) and announced == ran
    first = r.stdout.splitlines()[0]
    assert first.startswith("[run] 3 stages to run, projected "), first  # both evaluations and the report
    assert r.stdout.splitlines()[-1].startswith(f"[run] {len(ran)} stages in ")
    assert sh("dvc status -q", path, env=env, check=False).returncode == 0


def test_plan_prints_every_stage_and_refuses_bad_params_naming_the_file(tmp_path, monkeypatch, capsys):
    import pipeline.plan as plan

    rates = {"stage_start": 2.0, "diffusion_step": 0.5, "classifier_step": 0.1, "oracle_step": 0.1,
             "sample_step": collections.defaultdict(lambda: 0.01)}
    monkeypatch.setattr(plan, "calibrate", lambda p, shapes: rates)  # the measured rates are not the point here
    (tmp_path / "params.yaml").write_text(dump_params(preset("smoke")))
    assert plan.main(["--all", "--params", str(tmp_path / "params.yaml")]) == 0
    rows = [l for l in capsys.readouterr().out.splitlines() if l.startswith("| ") and not l.startswith("| stage")]
    graph = build_graph(preset("smoke"))
    assert [row.split(" | ")[0][2:] for row in rows[:-1]] == [s.name for s in graph]
    p = preset("smoke")
    assert rows[1] == f"| oracle | {p.oracle.steps} oracle steps | 0:{round(2 + 0.1 * p.oracle.steps):02d} |"
    assert rows[-1].startswith(f"| **all {len(graph)}** |")
    assert plan.main(["--params", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err


def test_counted_flops_and_saved_activations_of_a_linear_layer():
    import torch

    from pipeline.plan import _counted

    layer = torch.nn.Linear(8, 4, bias=False)
    x = torch.randn(5, 8)
    flops, saved = _counted(lambda: layer(x).sum().backward())
    assert flops == 2 * (2 * 5 * 8 * 4)  # the product, and the weight's gradient (x needs none)
    assert saved == x.nbytes  # what the weight's gradient needs: the input, once


def test_the_critical_path_is_the_longest_chain_of_dependent_stages():
    from pipeline.plan import critical_path

    graph = {"a": (), "b": ("a",), "c": ("a",), "d": ("b", "c")}
    assert critical_path(graph, {"a": 1, "b": 5, "c": 2, "d": 1}) == (7, ["a", "b", "d"])
    assert critical_path(graph, {"a": 1, "b": 1, "c": 9}) == (10, ["a", "c", "d"])


def test_plan_with_a_gpu_rate_counts_flops_memory_and_the_critical_path(capsys):
    from pipeline.plan import main

    assert main(["--preset", "smoke", "--no-measure", "--gpu-tflops", "0.5"]) == 0
    out = capsys.readouterr().out
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[0][:5] == ["| stage", "work", "FLOPs", "memory (est.)", "at 0.5 TFLOP/s |"]
    units = {"G": 1e9, "T": 1e12, "M": 1e6}
    flops = {r[0][2:]: float(r[2].split()[0]) * units[r[2].split()[1][0]] for r in rows[1:-1] if r[2]}
    assert set(flops) >= {"diffusion-t0", "oracle", "replay-t1-r0", "classifier-t0"} and "evaluate-t0" not in flops
    assert flops["diffusion-t1"] == flops["diffusion-t0"]  # same steps, same network
    assert flops["replay-t1-r0"] > flops["replay-t1-r1"]  # round 0 also draws the replay grid
    assert "critical path by FLOPs" in out and "check-graph → diffusion-t0" in out
    with pytest.raises(SystemExit):
        main(["--preset", "smoke", "--gpu-tflops", "0"])
    assert "--gpu-tflops 0: give a rate above 0" in capsys.readouterr().err


def test_saved_weights_are_not_counted_as_activations():
    import torch

    from pipeline.plan import _counted

    layer = torch.nn.Linear(8, 4, bias=False)
    x = torch.randn(5, 8, requires_grad=True)  # now the input's gradient needs the weight, saved too
    _, saved = _counted(lambda: layer(x).sum().backward())
    _, without = _counted(lambda: layer(x).sum().backward(), layer)
    assert saved == x.nbytes + layer.weight.nbytes and without == x.nbytes
