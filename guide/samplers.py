"""DDPM and DDIM ancestral samplers, written as plain functions of (model, schedule, noise, labels).

`model(x, t, y)` is the ε-network; t are the timesteps it was trained with (the sampler maps a
respaced schedule's indices through `schedule.model_timesteps`). `guidance(x0_hat, y)` is optional:
it returns a per-sample objective [N] (already multiplied by the guidance scale) whose gradient with
respect to x_t steers sampling — the gradient flows back through the ε-network, because x̂₀ is a
function of x_t. The sampler does not know what guides it.

Memory stays flat in the number of steps: each step's autograd graph is built, differentiated once
and dropped before the next step (the reference keeps every step's graph alive).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from guide.diffusion import NoiseSchedule, _gather

Guidance = Callable[[Tensor, Tensor], Tensor]  # (x̂₀, y) -> scaled objective per sample, [N]
Callback = Callable[[int, int], None]  # (steps done, steps in all)
SAMPLERS = ("ddim", "ddpm")


def predict(model, schedule: NoiseSchedule, x: Tensor, t: Tensor, y: Tensor | None,
            guidance: Guidance | None = None, clip: bool = True) -> tuple[Tensor, Tensor, Tensor | None]:
    """ε, x̂₀ (clipped to [−1, 1] when `clip`) and, with guidance, ∇_{x_t} of the guidance objective."""
    if guidance is None:
        with torch.no_grad():
            eps = model(x, schedule.model_timesteps(t), y)[:, : x.shape[1]]
            x0 = schedule.predict_x0(x, t, eps)
            return eps, (x0.clamp(-1, 1) if clip else x0), None
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        eps = model(xg, schedule.model_timesteps(t), y)[:, : x.shape[1]]
        x0 = schedule.predict_x0(xg, t, eps)
        x0 = x0.clamp(-1, 1) if clip else x0
        (grad,) = torch.autograd.grad(guidance(x0, y).sum(), xg)
    return eps.detach(), x0.detach(), grad


def _noise_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(x.shape, generator=generator, device="cpu").to(x.device, x.dtype)


def ddim_sample(model, schedule: NoiseSchedule, noise: Tensor, y: Tensor | None, *,
                guidance: Guidance | None = None, eta: float = 0.0, clip: bool = True,
                generator: torch.Generator | None = None, callback: Callback | None = None) -> Tensor:
    """DDIM (Song et al.) over every step of `schedule`; guidance shifts the score:
    ε̂ = ε − √(1−ᾱ_t)·∇ log p. With η = 0 the result is a deterministic function of the noise."""
    x = noise
    ac, acp = schedule.alphas_cumprod, schedule.alphas_cumprod_prev
    n = schedule.num_steps
    for i in reversed(range(n)):
        t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
        _, x0, grad = predict(model, schedule, x, t, y, guidance, clip)
        eps = schedule.eps_from_x0(x, t, x0)  # re-derived from the (clipped) x̂₀, as the reference does
        if grad is not None:
            eps = eps - _gather((1 - ac).sqrt(), t, x) * grad
            x0 = schedule.predict_x0(x, t, eps)
        a, a_prev = _gather(ac, t, x), _gather(acp, t, x)
        sigma = eta * ((1 - a_prev) / (1 - a)).sqrt() * (1 - a / a_prev).sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).sqrt() * eps
        if i > 0 and eta > 0:
            x = x + sigma * _noise_like(x, generator)
        if callback is not None:
            callback(n - i, n)
    return x


def ddpm_sample(model, schedule: NoiseSchedule, noise: Tensor, y: Tensor | None, *,
                guidance: Guidance | None = None, variance: str = "fixed_large", clip: bool = True,
                generator: torch.Generator | None = None, callback: Callback | None = None) -> Tensor:
    """Ancestral DDPM sampling; guidance shifts the mean: μ̂ = μ + Σ·∇ log p."""
    x = noise
    var = schedule.model_variance(variance)
    n = schedule.num_steps
    for i in reversed(range(n)):
        t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
        _, x0, grad = predict(model, schedule, x, t, y, guidance, clip)
        mean = schedule.q_posterior_mean(x0, x, t)
        v = _gather(var, t, x)
        if grad is not None:
            mean = mean + v * grad
        x = mean + v.sqrt() * _noise_like(x, generator) if i > 0 else mean
        if callback is not None:
            callback(n - i, n)
    return x


def skip(schedule: NoiseSchedule, shape: tuple[int, ...], generator: torch.Generator | None, *,
         sampler: str = "ddim", eta: float = 0.0) -> None:
    """Advance `generator` past one `sample` call on noise of `shape` without sampling: the draws
    the sampler makes between steps (DDPM always, DDIM when η > 0). A rank that leaves a batch to
    another rank calls this so its next batch starts from the generator state one process has there."""
    if sampler == "ddpm" or (sampler == "ddim" and eta > 0):
        for _ in range(schedule.num_steps - 1):
            torch.randn(shape, generator=generator, device="cpu")


def sample(model, schedule: NoiseSchedule, noise: Tensor, y: Tensor | None, *, sampler: str = "ddim",
           **kwargs) -> Tensor:
    """Dispatch on the sampler's name: "ddim" or "ddpm" (respace the schedule first for fewer steps)."""
    if sampler == "ddim":
        return ddim_sample(model, schedule, noise, y, **kwargs)
    if sampler == "ddpm":
        kwargs.pop("eta", None)
        return ddpm_sample(model, schedule, noise, y, **kwargs)
    raise ValueError(f"sampler {sampler!r}: expected 'ddim' or 'ddpm'")
