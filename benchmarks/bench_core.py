"""Time and memory of the core on the CPU, on DESIGN.md's configuration A (32×32×3, UNet 64 channels,
2 residual blocks, multipliers 1,2,2, attention at 16, 10 classes, concat_time_1hot; ResNet-18;
DDIM-20; batch 32), so the numbers compare with the reference's figures in DESIGN.md §4.

    python benchmarks/bench_core.py                 # all three, 2 threads
    python benchmarks/bench_core.py --only guided   # one measurement (peak memory is per process)
    python benchmarks/bench_core.py --precision bf16  # the UNet under bf16 autocast

`benchmarks/core_vs_reference.py` runs each measurement in its own process, here and in the
reference implementation (`bench_reference.py`), and prints the ratios.

Peak resident memory is the process's high-water mark (ru_maxrss), so run one measurement per
process to read it for that measurement alone.
"""
from __future__ import annotations

import argparse
import json
import resource
import time

import torch

from guide.diffusion import EMA, NoiseSchedule, epsilon_loss
from guide.guidance import ClassGuidance
from guide.models import UNet, resnet18
from guide.samplers import ddim_sample


def config_a(precision: str = "fp32") -> UNet:
    return UNet(image_size=32, in_channels=3, model_channels=64, out_channels=3, num_res_blocks=2,
                attention_resolutions=(16,), channel_mult=(1, 2, 2), num_classes=10, dropout=0.1,
                precision=precision)


def bench_train(repeats: int, precision: str) -> dict:
    model = config_a(precision).train()
    ema, opt = EMA(model), torch.optim.AdamW(model.parameters(), lr=2e-4)
    s = NoiseSchedule.make("linear", 1000)
    x, y = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        loss = epsilon_loss(model, s, x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema.update(model)
        if i:  # the first step warms up
            times.append(time.perf_counter() - t0)
    return {"diffusion_train_step_s": sum(times) / len(times)}


def bench_sampling(guided: bool, precision: str) -> dict:
    model = config_a(precision).eval().requires_grad_(False)
    s = NoiseSchedule.make("linear", 1000).respace("ddim20")
    noise, y = torch.randn(32, 3, 32, 32), torch.arange(32) % 8
    guidance = None
    if guided:
        cls = resnet18(10).eval().requires_grad_(False)
        guidance = ClassGuidance(cls, "new", torch.full((32,), 0.5), num_seen=10, current=range(8, 10))
    t0 = time.perf_counter()
    ddim_sample(model, s, noise, y, guidance=guidance)
    dt = time.perf_counter() - t0
    key = "guided" if guided else "unguided"
    return {f"{key}_ddim20_32_images_s": dt, f"{key}_images_per_s": 32 / dt}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", choices=["train", "guided", "unguided"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="the UNet's (diffusion.unet.precision)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    out = {"implementation": "this project", "precision": args.precision, "threads": args.threads,
           "torch": torch.__version__}
    if args.only in (None, "train"):
        out |= bench_train(args.repeats, args.precision)
    if args.only in (None, "unguided"):
        out |= bench_sampling(False, args.precision)
    if args.only in (None, "guided"):
        out |= bench_sampling(True, args.precision)
    out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
