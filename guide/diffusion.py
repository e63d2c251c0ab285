"""Gaussian diffusion: the noise schedule, the forward process, the posterior and the ε-MSE loss.

The schedule is its own object, separate from the network (as in diffusers' schedulers). Samplers
live in `guide.samplers` and take the schedule as an argument. Everything is computed in float64
and cast to the image dtype when indexed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

SCHEDULES = ("linear", "cosine")


def linear_betas(num_steps: int) -> Tensor:
    """The reference's linear schedule (guided-diffusion as GUIDE ships it): β runs from
    scale·0.001 to scale·0.02 with scale = 1000/T — note the start, ten times DDPM's 1e-4 — and,
    below 10 steps, from scale·0.01 to scale·0.02 with scale = 100/T. For 10 ≤ T < 20 the last β
    would exceed 1, which no diffusion process allows: refused, as the reference refuses it."""
    if num_steps < 1:
        raise ValueError(f"diffusion.num_timesteps={num_steps}: expected at least 1 step")
    if num_steps < 10:
        scale, start = 100.0 / num_steps, 0.01
    else:
        scale, start = 1000.0 / num_steps, 0.001
    if scale * 0.02 > 1:
        raise ValueError(f"diffusion.num_timesteps={num_steps}: the linear schedule's last β would be "
                         f"{scale * 0.02:.3g} > 1 (it needs T < 10 or T ≥ 20)")
    return torch.linspace(scale * start, scale * 0.02, num_steps, dtype=torch.float64)


def cosine_betas(num_steps: int, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """The improved-DDPM cosine schedule: ᾱ(t) = cos²((t/T + s)/(1 + s)·π/2)."""
    f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    betas = [min(1 - f((i + 1) / num_steps) / f(i / num_steps), max_beta) for i in range(num_steps)]
    return torch.tensor(betas, dtype=torch.float64)


def respaced_timesteps(num_steps: int, spec: str | int | None) -> list[int]:
    """Which of the original timesteps a respaced sampler visits, with the reference's semantics.

    "ddimN": the DDIM stride — the one integer stride k for which range(0, T, k) has N elements
    (1000 steps, "ddim50" → 0, 20, …, 980). "a,b,c": the T steps are cut into equal sections and
    section i gets a, b, c … steps spread evenly over it, ends included ("250" over 1000 → 250 steps
    from 0 to 999). None or "" means every step.
    """
    if spec is None or str(spec) == "" or str(spec) == str(num_steps):
        return list(range(num_steps))
    spec = str(spec)
    if spec.startswith("ddim"):
        wanted = int(spec[len("ddim"):])
        for stride in range(1, num_steps):
            if len(range(0, num_steps, stride)) == wanted:
                return list(range(0, num_steps, stride))
        raise ValueError(f"respacing {spec!r}: no integer stride gives {wanted} steps out of {num_steps}")
    counts = [int(c) for c in spec.split(",")]
    per, extra = divmod(num_steps, len(counts))
    taken, start = [], 0
    for i, count in enumerate(counts):
        size = per + (1 if i < extra else 0)
        if count > size:
            raise ValueError(f"respacing {spec!r}: section of {size} steps cannot hold {count}")
        stride = (size - 1) / (count - 1) if count > 1 else 1
        taken += [start + round(stride * j) for j in range(count)]
        start += size
    return sorted(set(taken))


def _gather(values: Tensor, t: Tensor, like: Tensor) -> Tensor:
    """values[t] shaped to broadcast against `like` ([N] → [N, 1, 1, 1])."""
    out = values.to(like.device)[t].to(like.dtype)
    return out.view(-1, *([1] * (like.dim() - 1)))


@dataclass(frozen=True)
class NoiseSchedule:
    """β₁…β_T plus, for a respaced schedule, the original timestep each step stands for."""

    betas: Tensor  # float64 [T]
    timestep_map: Tensor  # int64 [T]: the timestep value the network is given at step i

    @classmethod
    def make(cls, kind: str = "linear", num_steps: int = 1000) -> "NoiseSchedule":
        if kind == "linear":
            betas = linear_betas(num_steps)
        elif kind == "cosine":
            betas = cosine_betas(num_steps)
        else:
            raise ValueError(f"noise schedule kind {kind!r}: expected 'linear' or 'cosine'")
        return cls(betas, torch.arange(num_steps))

    def respace(self, spec: str | int | None) -> "NoiseSchedule":
        """A shorter schedule over a subset of steps whose ᾱ values match the original ones."""
        keep = respaced_timesteps(self.num_steps, spec)
        kept, new_betas, last = set(keep), [], 1.0
        for i, ac in enumerate(self.alphas_cumprod.tolist()):
            if i in kept:
                new_betas.append(1 - ac / last)
                last = ac
        return NoiseSchedule(torch.tensor(new_betas, dtype=torch.float64), self.timestep_map[keep])

    # --- derived quantities -------------------------------------------------------------------
    @property
    def num_steps(self) -> int:
        return len(self.betas)

    @property
    def alphas_cumprod(self) -> Tensor:
        return torch.cumprod(1 - self.betas, 0)

    @property
    def alphas_cumprod_prev(self) -> Tensor:
        return torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])

    @property
    def posterior_variance(self) -> Tensor:
        """Var q(x_{t−1} | x_t, x_0) = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t)."""
        return self.betas * (1 - self.alphas_cumprod_prev) / (1 - self.alphas_cumprod)

    def model_variance(self, kind: str = "fixed_large") -> Tensor:
        """The reverse-process variance: "fixed_large" (β_t, the reference default; σ₁² = posterior's)
        or "fixed_small" (the posterior variance)."""
        if kind == "fixed_small":
            return self.posterior_variance.clamp(min=1e-20)
        if kind == "fixed_large":
            return torch.cat([self.posterior_variance[1:2], self.betas[1:]])
        raise ValueError(f"model variance {kind!r}: expected 'fixed_large' or 'fixed_small'")

    # --- the forward process and its posterior ------------------------------------------------
    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε."""
        ac = self.alphas_cumprod
        return _gather(ac.sqrt(), t, x0) * x0 + _gather((1 - ac).sqrt(), t, x0) * noise

    def q_posterior_mean(self, x0: Tensor, xt: Tensor, t: Tensor) -> Tensor:
        """Mean of q(x_{t−1} | x_t, x₀) = c₁ x₀ + c₂ x_t."""
        ac, acp = self.alphas_cumprod, self.alphas_cumprod_prev
        c1 = self.betas * acp.sqrt() / (1 - ac)
        c2 = (1 - acp) * (1 - self.betas).sqrt() / (1 - ac)
        return _gather(c1, t, xt) * x0 + _gather(c2, t, xt) * xt

    def predict_x0(self, xt: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """x̂₀ = (x_t − √(1−ᾱ_t) ε) / √ᾱ_t."""
        ac = self.alphas_cumprod
        return _gather((1 / ac).sqrt(), t, xt) * xt - _gather((1 / ac - 1).sqrt(), t, xt) * eps

    def eps_from_x0(self, xt: Tensor, t: Tensor, x0: Tensor) -> Tensor:
        ac = self.alphas_cumprod
        return (_gather((1 / ac).sqrt(), t, xt) * xt - x0) / _gather((1 / ac - 1).sqrt(), t, xt)

    def model_timesteps(self, t: Tensor) -> Tensor:
        """The timestep values the network was trained with, for schedule indices t."""
        return self.timestep_map.to(t.device)[t]


def epsilon_loss(model, schedule: NoiseSchedule, x0: Tensor, y: Tensor | None,
                 generator: torch.Generator | None = None, part: slice = slice(None),
                 terms: list | None = None) -> Tensor:
    """The simple DDPM objective: E_{t, ε} ‖ε − ε_θ(x_t, t, y)‖², t uniform over the schedule.

    `part`: compute it on that slice of the batch only (a data-parallel rank's share); t and ε are
    drawn for the whole batch first, so the ranks' shares together are the one-process batch.
    `terms`: a list to append (t, each sample's loss) to, on the CPU, for the curve by timestep (the
    returned loss is computed as without it)."""
    n = x0.shape[0]
    t = torch.randint(0, schedule.num_steps, (n,), generator=generator, device="cpu").to(x0.device)
    noise = torch.randn(x0.shape, generator=generator, device="cpu").to(x0.device, x0.dtype)
    if part != slice(None):
        x0, t, noise = x0[part], t[part], noise[part]
        y = y[part] if y is not None else None
    xt = schedule.q_sample(x0, t, noise)
    out = model(xt, schedule.model_timesteps(t), y)
    loss = F.mse_loss(out[:, : x0.shape[1]], noise)
    if terms is not None:
        with torch.no_grad():
            each = (out[:, : x0.shape[1]].float() - noise.float()).pow(2).flatten(1).mean(1)
            terms.append((t.cpu(), each.cpu()))
    return loss


class EMA:
    """Exponential moving average of a model's parameters (buffers are copied as they are)."""

    def __init__(self, model: torch.nn.Module, decay: float = 0.9999):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(self.decay).add_(v.detach(), alpha=1 - self.decay)
            else:
                self.shadow[k].copy_(v)

    def state_dict(self) -> dict[str, Tensor]:
        return self.shadow

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.shadow = {k: v.detach().clone() for k, v in state.items()}
