"""bf16 against fp32 on the default run, paired by seed: bf16 − fp32 per seed, and the mean with its
95% Student-t interval (pipeline.stats.paired_ci), for the final metrics and the oracle's reading of
the replay.

    python benchmarks/bf16_paired.py            # reads results/bf16/seed*/metrics and the fp32 runs
                                                # of results/compare/mnist5k/runs.csv (method guide)

fp32 is the `guide` arm of `make compare` on MNIST-5k (the default run's params, seeds 0-4); bf16 is
`diffusion.unet.precision: bf16` on the same params, one cold run per seed (results/bf16/README.md).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

from pipeline.stats import paired_ci

ROOT = Path(__file__).resolve().parents[1]

METRICS = {  # name in the table: (runs.csv column, path in summary.json)
    "final average accuracy": ("final_average_accuracy", ("final_average_accuracy",)),
    "average incremental accuracy": ("average_incremental_accuracy", ("average_incremental_accuracy",)),
    "forgetting": ("forgetting", ("forgetting",)),
    "oracle accuracy, guided replay": ("replay_guided_oracle_accuracy", ("replay", "guided", "oracle_accuracy")),
    "oracle accuracy, unguided twin": ("replay_unguided_oracle_accuracy", ("replay", "unguided", "oracle_accuracy")),
}


def main() -> None:
    fp32 = {int(r["seed"]): r for r in csv.DictReader(open(ROOT / "results/compare/mnist5k/runs.csv"))
            if r["method"] == "guide"}
    bf16 = {}
    for folder in sorted((ROOT / "results/bf16").glob("seed*")):
        summary = json.loads((folder / "metrics/summary.json").read_text())
        bf16[int(summary["seed"])] = summary
    seeds = sorted(set(fp32) & set(bf16))
    print(f"bf16 − fp32, paired over seeds {seeds}: mean [95% Student-t interval] (seeds where bf16 is higher; a |Δ| ≤ 1e-6 is a tie, counted apart)\n")
    print("| metric | " + " | ".join(f"seed {s}" for s in seeds) + " | mean [95% interval] |")
    print("|---" * (len(seeds) + 2) + "|")
    for name, (column, path) in METRICS.items():
        diffs = []
        for s in seeds:
            value = bf16[s]
            for key in path:
                value = value[key]
            diffs.append(float(value) - float(fp32[s][column]))
        p = paired_ci(diffs)
        cells = " | ".join(f"{d:+.3f}" for d in diffs)
        print(f"| {name} | {cells} | {p} ({p.count}){' *' if p.significant else ''} |")


if __name__ == "__main__":
    main()
