"""The default run's UNet at other widths: parameters, diffusion training step and guided DDIM step.

    python benchmarks/bench_width.py [--widths 32 24 16] [--threads 2]

The diffusion budget of the default run is mostly these two steps (training: 6,800 steps; online
guided replay: ~2,800 batched steps of ~50 images over the four classifier stages), so their ratio
across widths is what a narrower UNet would save (results/diffusion_size/frontier.sh measures what it
costs in accuracy)."""
from __future__ import annotations

import argparse

import torch

from bench_efficiency import default_unet, guided_step, timed, train_step  # this folder is on sys.path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--widths", type=int, nargs="+", default=[32, 24, 16], help="diffusion.unet.model_channels")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print("| model_channels | parameters | training step (batch 64) | guided DDIM step (100 images) |\n|---|---|---|---|")
    for width in args.widths:
        model = default_unet(model_channels=width)
        n = sum(p.numel() for p in model.parameters())
        train = timed(train_step(model, 64, 1, 16), args.repeats)
        guided = timed(guided_step(model)[0], max(3, args.repeats // 2))
        print(f"| {width} | {n / 1e6:.2f} M | {train * 1000:.0f} ms | {guided * 1000:.0f} ms |", flush=True)


if __name__ == "__main__":
    main()
