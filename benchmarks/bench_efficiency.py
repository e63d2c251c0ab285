"""How close the hot loops run to what this CPU can do: arithmetic counted by torch's FlopCounterMode,
divided by measured time, against the machine's own ceiling: a large 3x3 convolution, the fastest
thing it does (a large matrix product is shown too), same threads. If a step already runs near the
ceiling, no rewrite with the same arithmetic can make it much faster — only less arithmetic or
cheaper number formats can.

The ceiling is measured in a child process whose C allocator keeps freed memory instead of handing
it back to the system (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_): with glibc's defaults each
call's large buffers are fresh pages, and the page faults cost up to a third of the convolution's
throughput (measured: 269–355 against 402–462 GFLOP/s on the development machine) — a cost of the
allocator, not of the CPU. The loops run in this process with the defaults, as the stages do.
To see the difference: `python benchmarks/bench_efficiency.py --ceilings-only`, with and without
`MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=1073741824` in front.

    python benchmarks/bench_efficiency.py                     # 2 threads, fp32 and bf16 ceilings
    python benchmarks/bench_efficiency.py --json results/bench/efficiency.json
    python benchmarks/bench_efficiency.py --compile            # also torch.compile's step (~1 min to compile)

Measured: the default run's diffusion training step (params.yaml's UNet, batch 64, 16x16), its
guided DDIM step (replay batch 100, guided by the small CNN), and configuration A's training step
(DESIGN.md: the 32x32 CIFAR-sized UNet, batch 32) — the loops the run spends its time in.
Run it on an idle machine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from bench_core import config_a  # this folder: the script's own directory is on sys.path
from guide.diffusion import NoiseSchedule, epsilon_loss
from guide.guidance import ClassGuidance
from guide.models import UNet, build_classifier
from guide.samplers import predict
from params import preset
from pipeline.plan import median_time

DEFAULT = preset("mnist5k")  # the default run's params.yaml (16x16 single-channel digits, 10 classes)


def timed(fn, repeats: int, warmup: int = 3) -> float:
    """Median seconds of `fn()` over `repeats` calls after `warmup` calls."""
    return median_time(fn, repeats, warmup)


def flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def measure(name: str, fn, repeats: int, count=None) -> dict:
    n = flops(count or fn)
    s = timed(fn, repeats)
    return {"what": name, "gflop": n / 1e9, "s": s, "gflop_per_s": n / 1e9 / s}


def ceilings(repeats: int) -> list[dict]:
    out = []
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
        out.append(measure(f"matmul 2048^3, {str(dtype)[6:]}", lambda: a @ b, repeats))
        x = torch.randn(64, 128, 32, 32, dtype=dtype)
        w = torch.randn(128, 128, 3, 3, dtype=dtype)
        out.append(measure(f"conv3x3 64x128x32x32 -> 128, {str(dtype)[6:]}",
                           lambda: F.conv2d(x, w, padding=1), repeats))
    return out


def default_unet(**overrides) -> UNet:
    """The default run's UNet, as its diffusion stages build it, with `overrides` of diffusion.unet."""
    return UNet(image_size=DEFAULT.data.image_size, in_channels=1, out_channels=1, num_classes=10,
                **(DEFAULT.diffusion.unet.model_dump() | overrides))


def train_step(model: UNet, batch: int, channels: int, size: int, compile_: bool = False):
    schedule = NoiseSchedule.make("linear", 1000)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(batch, channels, size, size), torch.randint(0, 10, (batch,))
    model.train()
    net = torch.compile(model) if compile_ else model

    def step():
        loss = epsilon_loss(net, schedule, x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def guided_step(model: UNet):
    # one DDIM step of the default run's replay batch (100 images, DDIM-10, scale 0.1, the small CNN)
    n, size, r = DEFAULT.replay.batch_size, DEFAULT.data.image_size, DEFAULT.replay
    schedule = NoiseSchedule.make(DEFAULT.diffusion.schedule, DEFAULT.diffusion.num_timesteps).respace(r.respacing)
    model.eval().requires_grad_(False)
    cls = build_classifier(DEFAULT.classifier.arch, 10, 1, size).eval().requires_grad_(False)
    x, y = torch.randn(n, 1, size, size), torch.randint(0, 8, (n,))
    t = torch.full((n,), 5, dtype=torch.long)
    guidance = ClassGuidance(cls, "new", torch.full((n,), DEFAULT.guidance.scale), num_seen=10, current=range(8, 10))

    def count():  # the same arithmetic; FlopCounterMode cannot follow torch.autograd.grad
        xg = x.clone().requires_grad_(True)
        eps = model(xg, schedule.model_timesteps(t), y)
        guidance(schedule.predict_x0(xg, t, eps).clamp(-1, 1), y).sum().backward()
    return lambda: predict(model, schedule, x, t, y, guidance), count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument("--compile", action="store_true", help="also the default training step under torch.compile")
    ap.add_argument("--ceilings-only", action="store_true",
                    help="only the ceilings, in this process, as JSON (what the child process runs)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.ceilings_only:
        print(json.dumps(ceilings(args.repeats)))
        return
    keep_memory = {"MALLOC_MMAP_THRESHOLD_": str(2**30), "MALLOC_TRIM_THRESHOLD_": str(2**30)}
    child = subprocess.run([sys.executable, __file__, "--ceilings-only", "--threads", str(args.threads),
                            "--repeats", str(args.repeats)], env={**os.environ, **keep_memory},
                           capture_output=True, text=True, check=True)
    rows = json.loads(child.stdout.splitlines()[-1])
    rows.append(measure("default run: diffusion training step (batch 64, fp32)",
                        train_step(default_unet(), 64, 1, 16), args.repeats))
    rows.append(measure("default run: the same with dropout 0 (what dropout's masks cost)",
                        train_step(default_unet(dropout=0.0), 64, 1, 16), args.repeats))
    if args.compile:
        # compile cold, as a fresh machine (or a fresh stage process without a warm cache) would
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-")
        step = train_step(default_unet(), 64, 1, 16, compile_=True)
        t0 = time.perf_counter()
        step()
        first = time.perf_counter() - t0
        eager = train_step(default_unet(), 64, 1, 16)  # counts the same arithmetic without recompiling
        rows.append(measure("default run: diffusion training step, torch.compile", step, args.repeats, eager)
                    | {"first_call_s": first})
    rows.append(measure("default run: diffusion training step (batch 64, bf16 autocast)",
                        train_step(default_unet(precision="bf16"), 64, 1, 16), args.repeats))
    step, count = guided_step(default_unet())
    rows.append(measure("default run: guided DDIM step (100 images, fp32)", step, args.repeats, count))
    rows.append(measure("configuration A: diffusion training step (batch 32, fp32)",
                        train_step(config_a(), 32, 3, 32), max(5, args.repeats // 3)))
    fp32_ceiling = next(r["gflop_per_s"] for r in rows if r["what"].startswith("conv3x3") and "float32" in r["what"])
    for r in rows:
        r["of_fp32_ceiling"] = r["gflop_per_s"] / fp32_ceiling
        print(f"{r['what']:<66} {r['gflop']:8.2f} GFLOP {r['s'] * 1e3:9.1f} ms "
              f"{r['gflop_per_s']:7.1f} GFLOP/s  {r['of_fp32_ceiling']:5.2f} of the fp32 ceiling"
              + (f"  (first call, compiling: {r['first_call_s']:.1f} s)" if "first_call_s" in r else ""))
    if args.json:
        meta = {"date": date.today().isoformat(), "machine": platform.machine(), "processor": platform.processor(),
                "threads": args.threads, "torch": torch.__version__}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
