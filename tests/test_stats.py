"""Paired statistics over seeds (pipeline.stats) and the comparison table built on them."""
import math

import pytest

from pipeline.compare import paired_rows, report_markdown, summarize
from pipeline.stats import paired_ci, paired_differences


def test_paired_ci_of_a_known_sample():
    # differences 1..5: mean 3, sd √2.5, se √0.5; t(0.975, 4) = 2.776445
    ci = paired_ci([1, 2, 3, 4, 5])
    assert ci.n == 5 and ci.mean == 3 and ci.wins == 5
    assert ci.std == pytest.approx(math.sqrt(2.5))
    assert ci.high - ci.mean == pytest.approx(2.776445 * math.sqrt(0.5), rel=1e-6)
    assert ci.low == pytest.approx(3 - 1.963243, abs=1e-5) and ci.significant


def test_an_interval_that_covers_zero_is_not_significant():
    ci = paired_ci([0.02, -0.03, 0.01, -0.01, 0.0])
    assert ci.low < 0 < ci.high and not ci.significant and ci.wins == 2
    assert math.isnan(paired_ci([0.1]).low) and not paired_ci([0.1]).significant


def test_pairing_removes_the_variance_shared_by_a_seed():
    """guide = gr + 0.02 on every seed, while seeds differ by 0.2: unpaired the difference is lost in
    the spread; paired it is exact."""
    runs = []
    for seed, level in enumerate([0.40, 0.60, 0.50, 0.70, 0.45]):
        runs.append({"method": "gr", "seed": seed, "final_average_accuracy": level,
                     "average_incremental_accuracy": level, "forgetting": 1 - level})
        runs.append({"method": "guide", "seed": seed, "final_average_accuracy": level + 0.02,
                     "average_incremental_accuracy": level - 0.01, "forgetting": 1 - level})
    diffs = paired_differences({(r["method"], r["seed"]): r["final_average_accuracy"] for r in runs}, "gr")
    assert set(diffs) == {"guide"} and all(d == pytest.approx(0.02) for d in diffs["guide"].values())
    table = summarize(runs).set_index(["method", "metric"])
    final = table.loc[("guide", "final_average_accuracy")]
    assert final.delta == pytest.approx(0.02) and final.delta_low == pytest.approx(0.02)
    assert final.significant and final.higher_seeds == 5 and final.paired_seeds == 5
    assert final["std"] > 0.1  # the unpaired spread dwarfs the effect
    assert table.loc[("guide", "average_incremental_accuracy")].delta == pytest.approx(-0.01)
    assert len(paired_rows(runs)) == 3 * 5  # (guide, seed, metric)
    md = report_markdown(summarize(runs))
    first_row = md.split("\n| guide |")[1].split("\n")[0]
    assert first_row.strip().startswith("+0.020 [+0.020, +0.020] * (5/5)")


def _runs_json(path, preset, runs):
    import json
    path.write_text(json.dumps({"preset": preset, "runs": runs}))
    return str(path)


def test_included_runs_join_the_table(tmp_path):
    from pipeline.compare import load_included
    gr = [{"method": "gr", "seed": s, "final_average_accuracy": 0.5 + s / 10} for s in range(3)]
    joint = [{"method": "joint", "seed": s, "final_average_accuracy": 0.6 + s / 10} for s in range(3)]
    runs = load_included([_runs_json(tmp_path / "a.json", "mnist5k", gr),
                          _runs_json(tmp_path / "b.json", "mnist5k", joint)], "mnist5k")
    assert runs == gr + joint
    diffs = paired_differences({(r["method"], r["seed"]): r["final_average_accuracy"] for r in runs}, "gr")
    assert all(d == pytest.approx(0.1) for d in diffs["joint"].values()) and len(diffs["joint"]) == 3


@pytest.mark.parametrize("case", ["other preset", "duplicate", "missing", "not json"])
def test_a_bad_include_names_the_file(tmp_path, case):
    from pipeline.compare import load_included
    gr = [{"method": "gr", "seed": 0, "final_average_accuracy": 0.5}]
    good = _runs_json(tmp_path / "good.json", "mnist5k", gr)
    bad = {"other preset": lambda: _runs_json(tmp_path / "bad.json", "smoke", []),
           "duplicate": lambda: _runs_json(tmp_path / "bad.json", "mnist5k", gr),
           "missing": lambda: str(tmp_path / "bad.json"),
           "not json": lambda: (tmp_path / "bad.json").write_text("{") and str(tmp_path / "bad.json")}[case]()
    with pytest.raises(ValueError, match="bad.json"):
        load_included([good, bad], "mnist5k")


def test_compare_refuses_a_run_it_would_repeat_before_touching_anything(tmp_path):
    import subprocess
    import sys
    from pathlib import Path
    included = _runs_json(tmp_path / "runs.json", "smoke", [{"method": "gr", "seed": 0}])
    r = subprocess.run([sys.executable, "-m", "pipeline.compare", "--preset", "smoke", "--methods", "gr", "joint",
                        "--seeds", "0", "--include", included, "--workdir", str(tmp_path / "work"),
                        "--out", str(tmp_path / "out")], cwd=Path(__file__).resolve().parents[1],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "gr seed 0" in r.stderr, r.stderr
    assert not (tmp_path / "work").exists() and not (tmp_path / "out").exists()


def test_compare_with_no_methods_tabulates_the_included_runs_alone(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    def run(method, seed, final):
        return {"method": method, "seed": seed, "final_average_accuracy": final, "average_incremental_accuracy": final,
                "forgetting": 1 - final, "ran": [], "restored": [], "accuracy_matrix": [[final]]}
    a = _runs_json(tmp_path / "a.json", "smoke", [run("gr", 0, 0.50), run("gr", 1, 0.60)])
    b = _runs_json(tmp_path / "b.json", "smoke", [run("joint", 0, 0.58), run("joint", 1, 0.69)])
    r = subprocess.run([sys.executable, "-m", "pipeline.compare", "--preset", "smoke", "--methods", "--include", a, b,
                        "--workdir", str(tmp_path / "work"), "--out", str(tmp_path / "out")],
                       cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "work").exists()  # nothing ran, so no scratch repository
    record = json.loads((tmp_path / "out" / "runs.json").read_text())
    assert len(record["runs"]) == 4 and record["included"] == [a, b]
    assert "| joint | +0.085 [" in (tmp_path / "out" / "summary.md").read_text()  # (0.08 + 0.09) / 2


def test_a_difference_within_float_noise_is_a_tie_counted_apart():
    ci = paired_ci([0.01, 5e-7, -3e-7, 0.0, -0.02])
    assert (ci.wins, ci.ties, ci.n) == (1, 3, 5) and ci.count == "1/5, 3 tied"
    assert paired_ci([0.01, 0.02]).count == "2/2"  # no ties: nothing added
    runs = [{"method": m, "seed": s, "final_average_accuracy": 0.5 + (1e-7 if m == "guide" and s else 0),
             "average_incremental_accuracy": 0.5, "forgetting": 0.1} for s in range(3) for m in ("gr", "guide")]
    runs[1]["final_average_accuracy"] = 0.6  # guide, seed 0: really higher
    md = report_markdown(summarize(runs))
    assert "(1/3, 2 tied)" in md.split("\n| guide |")[1].split("\n")[0]
