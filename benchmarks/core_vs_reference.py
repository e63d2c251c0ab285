"""The core against the reference implementation, side by side in one session: each of the three
measurements (diffusion training step, unguided DDIM-20, guided DDIM-20; configuration A, batch 32)
runs in its own fresh process — so its peak memory is its own — once in `bench_core.py` per
precision asked for and once in `bench_reference.py`, interleaved over --repeats rounds, and the
medians print as a table of seconds, ratios (reference ÷ ours: above 1 is faster here) and peak memory.

    PYTHONPATH=/somewhere/deps python benchmarks/core_vs_reference.py --reference /somewhere/guide \\
        --precision fp32 bf16 --repeats 2 --json results/bench/core.json

(`bench_reference.py` says how to get the reference checkout and its `blobfile` dependency.)
Run it on an idle machine: another process on the cores changes every figure.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
MEASURES = {"train": "diffusion_train_step_s", "unguided": "unguided_ddim20_32_images_s",
            "guided": "guided_ddim20_32_images_s"}


def run(script: str, only: str, extra: list[str]) -> dict:
    out = subprocess.run([sys.executable, str(HERE / script), "--only", only, *extra],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out[out.index("{"):])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", type=Path, required=True, help="a checkout of cywinski/guide")
    ap.add_argument("--precision", nargs="+", choices=["fp32", "bf16"], default=["fp32"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1, help="rounds of every measurement (medians)")
    ap.add_argument("--json", type=Path, help="also write every figure here")
    args = ap.parse_args()
    common = ["--threads", str(args.threads)]
    rows = {name: {m: [] for m in MEASURES} for name in ["reference", *args.precision]}
    for _ in range(args.repeats):
        for only in MEASURES:
            rows["reference"][only].append(run("bench_reference.py", only, common + ["--reference", str(args.reference)]))
            for prec in args.precision:
                rows[prec][only].append(run("bench_core.py", only, common + ["--precision", prec]))

    def median(name: str, only: str, key: str) -> float:
        return statistics.median(r[key] for r in rows[name][only])

    table = {}
    for name in rows:
        table[name] = {only: {"s": median(name, only, key), "peak_rss_gb": median(name, only, "peak_rss_gb")}
                       for only, key in MEASURES.items()}
    print(f"configuration A, batch 32, {args.threads} threads, medians of {args.repeats}; "
          f"ratio = reference s ÷ this s; memory = peak resident set of the process")
    print(f"{'':10s} {'':16s} " + " ".join(f"{m:>22s}" for m in MEASURES))
    for name, cells in table.items():
        label = "reference" if name == "reference" else f"ours {name}"
        secs = " ".join(f"{c['s']:9.2f} s {table['reference'][m]['s'] / c['s']:5.2f}×    " for m, c in cells.items())
        print(f"{label:27s} {secs}")
        mem = " ".join(f"{c['peak_rss_gb']:9.2f} GB {c['peak_rss_gb'] / table['reference'][m]['peak_rss_gb']:5.2f}   "
                       for m, c in cells.items())
        print(f"{'':27s} {mem}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        meta = {"date": date.today().isoformat(), "machine": platform.processor() or platform.machine(),
                "threads": args.threads, "repeats": args.repeats}
        args.json.write_text(json.dumps({"meta": meta, "median": table, "runs": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
