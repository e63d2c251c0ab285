"""Print the last run's accuracy matrix and final metrics (what `make demo` ends with).

    python -m pipeline.show
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

from guide.metrics import METRICS
from stages import paths


def main() -> int:
    if not Path(paths.SUMMARY).exists():
        print(f"{paths.SUMMARY}: not there yet — run `dvc repro` first", file=sys.stderr)
        return 1
    frame = pd.read_csv(paths.ACCURACY_CSV, index_col=0)
    summary = json.loads(Path(paths.SUMMARY).read_text())
    print(f"accuracy matrix ({summary['method']}, seed {summary['seed']}; row: task, column: after training task)")
    print(frame.to_string(float_format=lambda v: f"{v:.3f}", na_rep="·"))
    for k in METRICS:
        print(f"{k:30s} {summary[k]:.4f}")
    if "replay" in summary:
        r = summary["replay"]
        print(f"replay, guided / unguided twin (every replay shard; oracle test accuracy "
              f"{summary['oracle_test_accuracy']:.3f}):")
        for k, name in (("oracle_accuracy", "oracle recognises the old class"),
                        ("current_mass", "current classifier's mass on the current task"),
                        ("current_pred_fraction", "current classifier predicts a current-task class")):
            print(f"  {name:50s} {r['guided'][k]:.3f} / {r['unguided'][k]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
