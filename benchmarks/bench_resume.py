"""What a diffusion stage's resume state costs: its size and the time to write it (stages/resume.py's
Resume.save: torch.save to a temporary file, then a rename), at a preset's UNet size.

    python benchmarks/bench_resume.py --preset demo cifar10_5 [--repeats 3]

The state is what the diffusion stage saves (stages/diffusion.py): the live weights, the EMA, AdamW's
state after one step, the step, the generators and the curve; the file goes to a temporary folder
beside `.resume/` (same filesystem). Prints one markdown row per preset.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from guide.diffusion import EMA  # noqa: E402
from params import preset  # noqa: E402
from pipeline.plan import build_unet, median_time  # noqa: E402
from stages.resume import Resume  # noqa: E402


def state_of(name: str) -> tuple[dict, int]:
    p = preset(name)
    model = build_unet(p)
    opt = torch.optim.AdamW(model.parameters(), lr=p.diffusion.lr)
    for q in model.parameters():  # one step's worth of optimiser state, without a forward pass
        q.grad = torch.zeros_like(q)
    opt.step()
    ema = EMA(model, p.diffusion.ema_decay)
    gen = torch.Generator().manual_seed(0)
    state = {"step": 1, "optimizer": opt.state_dict(), "generator": gen.get_state(),
             "rng": torch.get_rng_state(), "model": model.state_dict(), "ema": ema.state_dict(),
             "curve": {"rows": []}}
    return state, sum(q.numel() for q in model.parameters())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", nargs="+", default=["demo", "cifar10_5"])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    print("| preset | UNet parameters | state size | write (median of %d) |" % args.repeats)
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory(dir=".") as folder:
        for name in args.preset:
            state, params = state_of(name)
            resume = Resume("diffusion", 0, 0, preset(name), every=1, folder=folder)
            resume.path = Path(folder) / f"bench-{name}.pt"  # no dvc.yaml entry needed to time the write
            seconds = median_time(lambda: resume.save(state), args.repeats)
            size = os.path.getsize(resume.path)
            print(f"| {name} | {params / 1e6:.2f} M | {size / 1e6:.1f} MB | {seconds:.2f} s |")
            resume.path.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
