"""The GPU check of the scale-out work, prepared to run in one go when a GPU machine is at hand: the
reference's CIFAR-10 UNet (52.5 M parameters) training at the reference batch of 256, and guided
DDIM-50 replay of 256 images steered by ResNet-18, in fp32 and in bf16 (`diffusion.unet.precision`).
It prints one JSON object: steps/s and images/s of training, images/s of guided sampling, and the peak
GPU memory of each, with the device's name and the date.

    python benchmarks/gpu_check.py --json results/bench/gpu.json        # on a CUDA machine
    python benchmarks/gpu_check.py --device cpu --tiny                  # the same code on a tiny config

Nothing in the test suite depends on it. Weights are random: speed and memory do not depend on them.
"""
from __future__ import annotations

import argparse
import datetime
import json
import resource
import time
from pathlib import Path

import torch

from guide.diffusion import EMA, NoiseSchedule, epsilon_loss
from guide.guidance import ClassGuidance
from guide.models import UNet, resnet18
from guide.models.unet import CIFAR10_REFERENCE_UNET
from guide.samplers import ddim_sample

TINY_UNET = dict(CIFAR10_REFERENCE_UNET, model_channels=16, num_res_blocks=1, attention_resolutions=(8,),
                 channel_mult=(1, 2))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1024**3
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # the process's, on the CPU


def unet(config: dict, precision: str, device: torch.device) -> UNet:
    return UNet(**{**config, "precision": precision}).to(device)


def train(config: dict, precision: str, device: torch.device, steps: int, batch: int, warmup: int) -> dict:
    """AdamW steps with the EMA update, on a fixed random batch (the data pipeline is not timed)."""
    model = unet(config, precision, device).train()
    ema, opt = EMA(model), torch.optim.AdamW(model.parameters(), lr=1e-4)
    schedule = NoiseSchedule.make("linear", 1000)
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    _reset_peak(device)
    for i in range(warmup + steps):
        if i == warmup:
            _sync(device)
            t0 = time.perf_counter()
        loss = epsilon_loss(model, schedule, x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.update(model)
    _sync(device)
    dt = time.perf_counter() - t0
    return {"train_steps_per_s": steps / dt, "train_images_per_s": steps * batch / dt,
            "train_peak_gb": _peak_gb(device), "train_last_loss": float(loss)}


def guided_sampling(config: dict, precision: str, device: torch.device, images: int, respacing: str) -> dict:
    """Guided DDIM of `images` images in one batch, GUIDE's guidance toward the current task's classes
    (8, 9) at scale 0.5 by ResNet-18 over 10 seen classes, as the replay stage draws them."""
    model = unet(config, precision, device).eval().requires_grad_(False)
    schedule = NoiseSchedule.make("linear", 1000).respace(respacing)
    classifier = resnet18(10).to(device).eval().requires_grad_(False)
    noise = torch.randn(images, 3, 32, 32, device=device)
    y = (torch.arange(images) % 8).to(device)
    guidance = ClassGuidance(classifier, "new", torch.full((images,), 0.5, device=device), 10, range(8, 10))
    ddim_sample(model, schedule, noise[:2], y[:2],  # warm-up: kernels chosen, memory pools filled
                guidance=ClassGuidance(classifier, "new", torch.full((2,), 0.5, device=device), 10, range(8, 10)))
    _reset_peak(device)
    _sync(device)
    t0 = time.perf_counter()
    out = ddim_sample(model, schedule, noise, y, guidance=guidance)
    _sync(device)
    dt = time.perf_counter() - t0
    assert torch.isfinite(out).all(), "guided sampling produced non-finite images"
    return {"guided_images_per_s": images / dt, "guided_seconds": dt, "guided_peak_gb": _peak_gb(device)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    ap.add_argument("--steps", type=int, default=300, help="timed training steps (after --warmup)")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--batch", type=int, default=256, help="training batch (the reference's: 256)")
    ap.add_argument("--images", type=int, default=256, help="guided replay images, one batch")
    ap.add_argument("--respacing", default="ddim50")
    ap.add_argument("--tiny", action="store_true", help="a tiny UNet, 3 steps of batch 4, 4 images: checks the script")
    ap.add_argument("--json", type=Path, help="also write the result here")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    config = TINY_UNET if args.tiny else CIFAR10_REFERENCE_UNET
    if args.tiny:
        args.steps, args.warmup, args.batch, args.images, args.respacing = 3, 1, 4, 4, "ddim5"
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    out: dict = {"date": datetime.date.today().isoformat(), "device": torch.cuda.get_device_name(device)
                 if device.type == "cuda" else "cpu", "torch": torch.__version__, "unet": "tiny" if args.tiny
                 else "CIFAR10_REFERENCE_UNET", "unet_parameters": sum(p.numel() for p in unet(config, "fp32", "cpu")
                                                                     .parameters()),
                 "batch": args.batch, "steps": args.steps, "images": args.images, "respacing": args.respacing}
    for precision in args.precision:
        out[precision] = {**train(config, precision, device, args.steps, args.batch, args.warmup),
                          **guided_sampling(config, precision, device, args.images, args.respacing)}
        print(precision, json.dumps(out[precision]), flush=True)
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
