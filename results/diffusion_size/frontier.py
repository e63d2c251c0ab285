"""The frontier of the MNIST-5k run's cost against its accuracy: every measured point of `frontier.sh`
(results/diffusion_size/frontier/NAME/runs.json), the `mnist5k` preset itself (seed 0 of
results/compare/mnist5k-faithful) and the default run (`demo`, the committed metrics/summary.json), with

- the diffusion training TFLOPs of the whole run (FLOPs of one training step at the point's width and
  batch, counted by torch's FlopCounterMode, × its steps),
- the projected cold `dvc repro` time on this machine (`pipeline.plan`: every stage's work timed by
  per-step costs measured here, once per network and batch size; run it on an idle machine),
- the measured final average accuracy and the oracle's recognition of unguided replay.

    python results/diffusion_size/frontier.py      (from the repository root, in the venv)

Writes results/diffusion_size/frontier.md and frontier.png. `--avx2-factor` (default 2.36: the default
diffusion step, 0.495 s on the AVX2 proxy against 0.21 s on Zen 4) converts the projection to the
slower machine for the 20-minute line."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from guide.diffusion import NoiseSchedule, epsilon_loss  # noqa: E402
from guide.models import UNet  # noqa: E402
from pipeline.compare import parse_sets, run_params  # noqa: E402
from pipeline.graph import build_graph  # noqa: E402
from pipeline.plan import calibrate, make_plan, stage_work  # noqa: E402

HERE = Path(__file__).resolve().parent


def points() -> list[dict]:
    out = []
    base = json.loads((ROOT / "results/compare/mnist5k-faithful/runs.json").read_text())
    (seed0,) = [r for r in base["runs"] if r["method"] == "guide" and r["seed"] == 0]
    out.append({"name": "mnist5k (32 ch, 2000/1200)", "set": [], "run": seed0})
    summary = json.loads((ROOT / "metrics/summary.json").read_text())  # the committed default run: demo
    out.append({"name": "**demo** (the default run)", "set": [], "preset": "demo",
                "run": {"final_average_accuracy": summary["final_average_accuracy"],
                        "replay_unguided_oracle_accuracy": summary["replay"]["unguided"]["oracle_accuracy"]}})
    for f in sorted((HERE / "frontier").glob("*/runs.json")):
        d = json.loads(f.read_text())
        (run,) = d["runs"]
        out.append({"name": f.parent.name, "set": d["set"], "run": run})
    for f in sorted((HERE / "frontier").glob("*/point.json")):  # a point measured as the default run then
        d, summary = json.loads(f.read_text()), json.loads((f.parent / "summary.json").read_text())
        out.append({"name": f.parent.name, "set": d["set"], "run": {
            "final_average_accuracy": summary["final_average_accuracy"],
            "replay_unguided_oracle_accuracy": summary["replay"]["unguided"]["oracle_accuracy"]}})
    return out


def train_flops(p) -> float:
    u = p.diffusion.unet
    net = UNet(image_size=p.data.image_size, in_channels=1, out_channels=1, num_classes=10, **u.model_dump())
    b = p.diffusion.batch_size
    x, y = torch.randn(b, 1, p.data.image_size, p.data.image_size), torch.randint(0, 10, (b,))
    with FlopCounterMode(display=False) as counter:
        epsilon_loss(net, NoiseSchedule.make(p.diffusion.schedule, p.diffusion.num_timesteps), x, y).backward()
    steps = p.diffusion.steps_first + p.diffusion.steps_later * (p.data.num_tasks - (1 if p.diffusion.train_last_task else 2))
    return counter.get_total_flops() * steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--avx2-factor", type=float, default=2.36)
    ap.add_argument("--budget-min", type=float, default=20.0, help="the AVX2 machine's budget for `make demo`")
    args = ap.parse_args()
    torch.set_num_threads(2)
    rows = []
    pts = [(pt, run_params(pt.get("preset", "mnist5k"), "guide", 0, parse_sets(pt["set"], "mnist5k"))) for pt in points()]
    # one calibration per network and batch configuration, shared by the points that have it, so
    # points differing only in step counts are projected with the same per-step costs
    def config(p):
        return json.dumps([p.diffusion.unet.model_dump(), p.diffusion.batch_size, p.classifier.arch,
                           p.classifier.batch_size, p.oracle.batch_size], sort_keys=True)
    shapes: dict[str, set] = {}
    for _, p in pts:
        for st in build_graph(p):
            shapes.setdefault(config(p), set()).update(stage_work(st, p).sampling)
    rates = {key: calibrate(next(p for _, p in pts if config(p) == key), shape, repeats=7)
             for key, shape in shapes.items()}
    for pt, p in pts:
        plan = make_plan(p, rates=rates[config(p)])
        r = pt["run"]
        rows.append({"name": pt["name"], "set": " ".join(pt["set"]) or f"(the {pt.get('preset', 'mnist5k')} preset)",
                     "tflops": train_flops(p) / 1e12, "projected_s": plan.total,
                     "final": r["final_average_accuracy"], "replay": r["replay_unguided_oracle_accuracy"]})
        print(rows[-1], flush=True)
    rows.sort(key=lambda r: r["projected_s"])
    budget = args.budget_min * 60 / args.avx2_factor
    lines = ["| point | `--set` | diffusion training TFLOPs | projected cold run, this machine | projected, AVX2 (×"
             f"{args.avx2_factor}) | final average accuracy | unguided replay recognised |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['set']} | {r['tflops']:.1f} | {r['projected_s'] / 60:.1f} min | "
              f"{r['projected_s'] * args.avx2_factor / 60:.1f} min | {r['final']:.3f} | {r['replay']:.3f} |" for r in rows]
    (HERE / "frontier.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for r in rows:
        ax.scatter(r["projected_s"] / 60, r["final"], color="tab:blue")
        ax.annotate(r["name"].replace("**", ""), (r["projected_s"] / 60, r["final"]), fontsize=7, xytext=(4, -3),
                    textcoords="offset points")
    ax.set_xlim(right=max(r["projected_s"] for r in rows) / 60 * 1.35)
    ax.axvline(budget / 60, color="tab:red", ls="--", lw=1)
    ax.text(budget / 60, ax.get_ylim()[0], f" {args.budget_min:.0f} min on AVX2 (install not counted)", color="tab:red", fontsize=8,
            va="bottom")
    ax.set_xlabel("projected cold `dvc repro`, minutes on this machine (pipeline.plan)")
    ax.set_ylabel("final average accuracy (seed 0)")
    ax.set_title("MNIST-5k/5, guide: cost against accuracy")
    fig.tight_layout()
    fig.savefig(HERE / "frontier.png", dpi=120, metadata={"Software": None})
    print(f"wrote {HERE / 'frontier.md'} and {HERE / 'frontier.png'}")


if __name__ == "__main__":
    main()
