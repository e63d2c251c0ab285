"""Classifier guidance for replay: small closures handed to the sampler (guided-diffusion's cond_fn).

Each returns s·log p(target | x̂₀) per sample; the sampler differentiates it with respect to x_t.
- `new` (GUIDE): the target is the most probable class of the current task under the current
  classifier, re-chosen at every step; p is the softmax over the classes seen so far.
- `old` (DDGR-style): the target is the conditioned old class y under the previous classifier,
  softmax over the old classes only.
- `none`: no guidance (the `gr` baseline; same as scale 0).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

TARGETS = ("new", "old", "none")


def draw_scales(n: int, scale_min: float, scale_max: float, generator: torch.Generator | None = None) -> Tensor:
    """One guidance scale per sample, s ~ U[scale_min, scale_max]."""
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    return (scale_min + (scale_max - scale_min) * u).float()


class ClassGuidance:
    """s · log p(target | x̂₀) under `classifier`, with p the softmax over the first `num_seen` logits.

    With target "new", the target is argmax over `current` classes of p (recorded in `last_target`);
    with "old", it is the conditioned label y.
    """

    def __init__(self, classifier: nn.Module, target: str, scales: Tensor, num_seen: int,
                 current: range | None = None):
        if target not in ("new", "old"):
            raise ValueError(f"guidance target {target!r}: expected 'new' or 'old'")
        if target == "new" and (current is None or len(current) == 0):
            raise ValueError("guidance target 'new' needs the current task's classes")
        self.classifier, self.target, self.scales = classifier, target, scales
        self.num_seen, self.current = num_seen, current
        self.last_target: Tensor | None = None

    def __call__(self, x0: Tensor, y: Tensor) -> Tensor:
        log_p = F.log_softmax(self.classifier(x0)[:, : self.num_seen].float(), dim=1)
        if self.target == "new":
            lo, hi = self.current.start, self.current.stop
            target = log_p[:, lo:hi].argmax(dim=1).detach() + lo
        else:
            target = y
        self.last_target = target
        return self.scales.to(x0.device) * log_p.gather(1, target[:, None]).squeeze(1)


def make_guidance(target: str, classifier: nn.Module | None, scales: Tensor, num_seen: int,
                  current: range | None = None) -> ClassGuidance | None:
    """The guidance for a replay batch, or None when there is nothing to guide."""
    if target == "none" or classifier is None or bool((scales == 0).all()):
        return None
    return ClassGuidance(classifier, target, scales, num_seen, current)
