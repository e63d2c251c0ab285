"""Fixed cost of starting a stage: a fresh interpreter importing `stages.<kind>` (everything the
stage loads before its first line of work), against a bare `import torch` in the same session.
Medians over --repeats fresh processes, run one after another; run it on an idle machine.

    python benchmarks/bench_startup.py                 # every stage kind, 5 repeats
    python benchmarks/bench_startup.py --repeats 9 --json startup.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("check_graph", "diffusion", "rehearsal", "oracle", "classifier", "replay", "evaluate", "report")


def seconds(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
    return time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    seconds("import torch")  # warm the file cache once
    codes = {"torch": "import torch", **{k: f"import stages.{k}" for k in KINDS}}
    median = {}
    for _ in range(args.repeats):  # interleaved, so drift in the machine's load hits every row alike
        for name, code in codes.items():
            median.setdefault(name, []).append(seconds(code))
    median = {k: statistics.median(v) for k, v in median.items()}
    base = median["torch"]
    print(f"{'import':14s} {'median s':>9s} {'above torch':>12s}")
    for name, s in median.items():
        print(f"{name:14s} {s:9.2f} {s - base:+12.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"repeats": args.repeats, "median_s": median}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
