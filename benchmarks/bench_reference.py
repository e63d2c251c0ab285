"""The reference implementation's figures for `bench_core.py`'s three measurements, on the same
configuration A (32×32×3, UNet 64 channels, 2 residual blocks, multipliers 1,2,2, attention at 16,
10 classes, concat_time_1hot; ResNet-18; DDIM-20; batch 32), so the two print side by side.

It imports the reference's own modules from a checkout of cywinski/guide (never vendored here):

    git clone https://github.com/cywinski/guide /somewhere/guide     # or any snapshot of it
    pip install --target /somewhere/deps blobfile                    # the reference's dist_util needs it
    PYTHONPATH=/somewhere/deps WANDB_MODE=disabled \
        python benchmarks/bench_reference.py --reference /somewhere/guide [--only guided]

What is timed, as the reference runs it: a training step is `training_losses` (uniform t) → backward
→ AdamW → `update_ema`; unguided sampling is `ddim_sample_loop` with no gradient; guided sampling is
`ddim_sample_loop(compute_grads=True)` with GUIDE's steering function (target: the most probable
current-task class under the classifier applied to x̂₀; gradient of its log-probability over the
classes seen, per-sample scale 0.5), which is what the reference's replay does for a task whose
current classes are 8 and 9. Run one measurement per process to read its peak memory.
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import resource
import sys
import time
from pathlib import Path
from types import SimpleNamespace


def load_reference(path: Path):
    """The reference's `guide` package, imported from `path` (this project's `guide` kept out)."""
    if not (path / "guide" / "gaussian_diffusion.py").is_file():
        raise SystemExit(f"--reference {path}: no guide/gaussian_diffusion.py there (a cywinski/guide checkout?)")
    os.environ.setdefault("WANDB_MODE", "disabled")
    here = Path(__file__).resolve().parents[1]
    sys.path[:] = [str(path)] + [p for p in sys.path if Path(p or ".").resolve() != here]
    for name in [m for m in sys.modules if m == "guide" or m.startswith("guide.")]:
        del sys.modules[name]
    import guide  # noqa: F401  (the reference's)
    if Path(guide.__file__).resolve().parent != (path / "guide").resolve():
        raise SystemExit(f"imported {guide.__file__}, not the reference under {path}")
    from guide import script_args, script_util
    from guide.nn import update_ema
    from guide.resnet import ResNet
    return script_args, script_util, update_ema, ResNet


def make(path: Path):
    script_args, script_util, update_ema, ResNet = load_reference(path)
    args = script_args.model_and_diffusion_defaults()
    args.update(num_channels=64, num_res_blocks=2, channel_mult="1,2,2", attention_resolutions="16",
                model_num_classes=10, image_size=32, in_channels=3, embedding_kind="concat_time_1hot",
                dropout=0.1, diffusion_steps=1000, noise_schedule="linear")
    wanted = inspect.signature(script_util.create_model_and_diffusion).parameters
    unet_args = {k: v for k, v in args.items() if k in wanted}

    def unet_and_diffusion(respacing: str = ""):
        return script_util.create_model_and_diffusion(**(unet_args | {"timestep_respacing": respacing}))

    def classifier():
        opts = SimpleNamespace(**script_args.all_training_defaults() | script_args.classifier_defaults())
        opts.depth, opts.model_num_classes, opts.in_channels, opts.noised = 18, 10, 3, False
        return ResNet(opts)

    return unet_and_diffusion, classifier, update_ema


def bench_train(torch, unet_and_diffusion, update_ema, repeats: int) -> dict:
    model, diffusion = unet_and_diffusion()
    model.train()
    ema = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4)
    x, y = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        t = torch.randint(0, diffusion.num_timesteps, (32,))
        terms, _ = diffusion.training_losses(model, x, t, task_id=0, model_kwargs={"y": y})
        loss = terms["loss"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        update_ema(ema, model.parameters(), rate=0.9999)
        if i:
            times.append(time.perf_counter() - t0)
    return {"diffusion_train_step_s": sum(times) / len(times)}


def bench_sampling(torch, unet_and_diffusion, classifier, guided: bool) -> dict:
    import torch.nn.functional as F

    model, diffusion = unet_and_diffusion("ddim20")
    model.eval()  # parameters keep requires_grad, as the reference's replay model does (its attention
    # blocks always checkpoint, and their backward differentiates the parameters too)
    noise, y = torch.randn(32, 3, 32, 32), torch.arange(32) % 8
    scales = torch.full((32,), 0.5)
    cls = classifier().eval() if guided else None
    lo, hi = 8, 10  # the current task's classes; 10 classes seen

    def guide_to_current(x, t, pred_xstart, y=None):
        with torch.enable_grad():
            logits = cls(pred_xstart, t)[:, :hi]
            target = F.softmax(logits[:, lo:hi], dim=-1).argmax(dim=-1) + lo
            objective = -F.cross_entropy(logits, target, reduction="none")
            grad = torch.autograd.grad(objective.sum(), x)[0]
            return grad * scales.view(-1, 1, 1, 1)

    t0 = time.perf_counter()
    diffusion.ddim_sample_loop(model, (32, 3, 32, 32), noise=noise, clip_denoised=True,
                               model_kwargs={"y": y}, cond_fn=guide_to_current if guided else None, device=torch.device("cpu"),
                               compute_grads=guided)
    dt = time.perf_counter() - t0
    key = "guided" if guided else "unguided"
    return {f"{key}_ddim20_32_images_s": dt, f"{key}_images_per_s": 32 / dt}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", type=Path, required=True, help="a checkout of cywinski/guide")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", choices=["train", "guided", "unguided"])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    unet_and_diffusion, classifier, update_ema = make(args.reference.resolve())
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    out = {"implementation": "reference", "threads": args.threads, "torch": torch.__version__}
    if args.only in (None, "train"):
        out |= bench_train(torch, unet_and_diffusion, update_ema, args.repeats)
    if args.only in (None, "unguided"):
        out |= bench_sampling(torch, unet_and_diffusion, classifier, False)
    if args.only in (None, "guided"):
        out |= bench_sampling(torch, unet_and_diffusion, classifier, True)
    out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
