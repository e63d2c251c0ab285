"""Batch augmentation for the classifier, in plain torch, with the semantics of the kornia 0.7.1
pipeline the reference uses (dataloaders/base.py, CIFAR10/CIFAR100):

    ImageSequential(Denormalize(0.5, 0.5), RandomCrop((32, 32), padding=4), RandomRotation(30),
                    RandomHorizontalFlip(), ColorJiggle(0.1, 0.1, 0.1, 0.1),
                    RandomErasing(scale=(0.1, 0.5)), Normalize(0.5, 0.5))

applied to a whole batch, every image drawing its own parameters (kornia's same_on_batch=False):

* crop: pad 4 pixels of 0 on every side (constant mode), then a size×size window at an offset drawn
  uniformly from the 9×9 possible ones; always applied.
* rotation: with p = 0.5 per image, by an angle ~ U[−30°, 30°] about the pixel centre
  ((W−1)/2, (H−1)/2), bilinear, align_corners=True, 0 outside the image.
* horizontal flip: p = 0.5 per image.
* colour jiggle, always applied (p = 1), factors per image: brightness b ~ U[0.9, 1.1] adds b − 1;
  contrast c ~ U[0.9, 1.1] multiplies the pixels by c (no mean subtraction); each clamps to [0, 1];
  saturation s ~ U[0.9, 1.1] scales the HSV saturation (clamped to [0, 1]); hue h ~ U[−0.1, 0.1]
  turns the HSV hue by h·360°. The four run in one random order drawn per batch, not per image.
* erasing: with p = 0.5 per image, a rectangle of area a·H·W, a ~ U[0.1, 0.5], and aspect ratio
  r = height/width drawn from U[0.3, 1] or U[1, 3.3], each half the time; height round(√(aH W r))
  and width round(√(aHW/r)), each clamped to [1, side]; top-left corner uniform over the positions
  that keep it inside; filled with 0 (black, in [0, 1] terms).

The draws come from torch's global generator (on the CPU, float32) in kornia's order, op by op: seed
it (the stages do) for repeatable runs. Kinds (`AUGMENTATIONS`):

* "reference": the pipeline above (on images of `channels` ≠ 3, where HSV is undefined, the colour
  jiggle keeps only brightness and contrast).
* "digits", our recipe for grey MNIST-like images (the reference has no MNIST): the same ops and
  semantics minus the horizontal flip (a mirrored digit is another glyph) and with a brightness/
  contrast-only jiggle, ColorJiggle(0.1, 0.1).
* "none": no augmentation (`make_augmentation` returns None).

Each op is a frozen dataclass holding its parameters; `augmentation_ops` lists a kind's ops, which is
exactly what `make_augmentation`'s function runs, and `DIFFUSION_HFLIP` is the diffusion model's
training flip (the reference's `RandomHorizontalFlip()` under --train_aug).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

AUGMENTATIONS = ("reference", "digits", "none")


def _uniform(n: int, low: float, high: float) -> Tensor:
    """n draws of U[low, high) in float32 on the CPU, as torch.distributions.Uniform.rsample makes them."""
    low_t, high_t = torch.tensor(low, dtype=torch.float32), torch.tensor(high, dtype=torch.float32)
    return low_t + torch.rand(n, dtype=torch.float32) * (high_t - low_t)


def _coin(n: int, p: float, generator: torch.Generator | None = None) -> Tensor:
    """n Bernoulli(p) draws as a bool mask (the same stream as torch.bernoulli at probability p)."""
    if p >= 1:
        return torch.ones(n, dtype=torch.bool)
    if p <= 0:
        return torch.zeros(n, dtype=torch.bool)
    return torch.rand(n, generator=generator) < p


@dataclass(frozen=True)
class Crop:
    """Pad `padding` pixels of `fill` on each side, then take a size×size window at a uniform offset."""
    size: int
    padding: int = 4
    fill: float = 0.0
    padding_mode: str = "constant"
    p: float = 1.0

    def __call__(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        padded = F.pad(x, [self.padding] * 4, mode=self.padding_mode, value=self.fill)
        hp, wp = padded.shape[-2:]
        # kornia's CropGenerator: x offsets first, then y, each floor(U[0, 1)·(positions))
        x0 = (torch.rand(n) * float(max(wp - self.size + 1, 0))).floor().long().to(x.device)
        y0 = (torch.rand(n) * float(max(hp - self.size + 1, 0))).floor().long().to(x.device)
        steps = torch.arange(self.size, device=x.device)
        rows = (y0[:, None] + steps)[:, None, :, None].expand(n, x.shape[1], self.size, wp)
        cols = (x0[:, None] + steps)[:, None, None, :].expand(n, x.shape[1], self.size, self.size)
        return padded.gather(2, rows).gather(3, cols)


@dataclass(frozen=True)
class Rotation:
    """With probability p per image, rotate by U[−degrees, degrees] about the pixel centre."""
    degrees: float = 30.0
    p: float = 0.5
    interpolation: str = "bilinear"
    fill: float = 0.0

    def __call__(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        chosen = _coin(n, self.p)
        angles = _uniform(int(chosen.sum()), -self.degrees, self.degrees)
        if not len(angles):
            return x
        rad = torch.deg2rad(angles.to(torch.float64))
        cos, sin = rad.cos(), rad.sin()
        # kornia maps a source pixel u to c + R(u − c), R = [[cos, sin], [−sin, cos]] in (x, y) pixel
        # coordinates; grid_sample wants the inverse map in align_corners=True normalised coordinates,
        # where a pixel offset d from the centre is d·2/(side − 1):
        # θ = S Rᵀ S⁻¹, S = diag(2/(W−1), 2/(H−1)).
        sx, sy = 2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)
        theta = torch.zeros(len(angles), 2, 3, dtype=torch.float64)
        theta[:, 0, 0], theta[:, 0, 1] = cos, -sin * sx / sy
        theta[:, 1, 0], theta[:, 1, 1] = sin * sy / sx, cos
        sub = x[chosen.to(x.device)]
        grid = F.affine_grid(theta.to(device=x.device, dtype=x.dtype), list(sub.shape), align_corners=True)
        turned = F.grid_sample(sub, grid, mode=self.interpolation, padding_mode="zeros", align_corners=True)
        if self.fill:
            inside = F.grid_sample(torch.ones_like(sub[:, :1]), grid, mode=self.interpolation,
                                   padding_mode="zeros", align_corners=True)
            turned = turned + self.fill * (1 - inside)
        out = x.clone()
        out[chosen.to(x.device)] = turned
        return out


@dataclass(frozen=True)
class HFlip:
    """Mirror left–right with probability p per image."""
    p: float = 0.5

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        flip = _coin(len(x), self.p, generator).to(x.device)
        return torch.where(flip[:, None, None, None], x.flip(-1), x)


def _rgb_to_hsv(rgb: Tensor, eps: float = 1e-8) -> tuple[Tensor, Tensor, Tensor]:
    """Hue in radians [0, 2π), saturation (max − min)/(max + eps), value max; channels on dim 1."""
    r, g, b = rgb.unbind(1)
    v = torch.maximum(torch.maximum(r, g), b)
    delta = v - torch.minimum(torch.minimum(r, g), b)
    s = delta / (v + eps)
    safe = torch.where(delta == 0, torch.ones_like(delta), delta)
    # hue in sixths of the circle, from the sector of the largest channel (the first of ties):
    # red around 0, green around 2, blue around 4
    red, green = r == v, g == v
    sixths = torch.where(red, g - b, torch.where(green, b - r + 2 * safe, r - g + 4 * safe)) / safe / 6
    return (sixths - sixths.floor()) * (2 * math.pi), s, v


def _hsv_to_rgb(h: Tensor, s: Tensor, v: Tensor) -> Tensor:
    """The inverse of _rgb_to_hsv, channels stacked on dim 1: channel n ∈ (5, 3, 1) for (r, g, b)
    is v·(1 − s·clamp(min(k, 4 − k), 0, 1)) with k = (n + 6h/2π) mod 6, the six-sector formula."""
    h6 = h * (6 / (2 * math.pi))
    k = torch.stack([h6 + 5, h6 + 3, h6 + 1], 1)
    k = k - 6 * (k / 6).floor()
    return v[:, None] * (1 - s[:, None] * torch.minimum(k, 4 - k).clamp(0, 1))


@dataclass(frozen=True)
class ColorJiggle:
    """kornia's ColorJiggle: per-image factors, ops in one random order per batch (see the module
    docstring). A strength of 0 leaves that op out (on images of channels ≠ 3 only brightness and
    contrast can be non-zero)."""
    brightness: float = 0.1
    contrast: float = 0.1
    saturation: float = 0.1
    hue: float = 0.1
    p: float = 1.0

    def __call__(self, x: Tensor) -> Tensor:
        n = len(x)
        chosen = _coin(n, self.p)
        k = int(chosen.sum())
        # kornia's draw order: brightness, contrast, hue, saturation, then the permutation of the four
        b = _uniform(k, 1 - self.brightness, 1 + self.brightness)
        c = _uniform(k, 1 - self.contrast, 1 + self.contrast)
        hue = _uniform(k, -self.hue, self.hue)
        s = _uniform(k, 1 - self.saturation, 1 + self.saturation)
        order = torch.randperm(4, dtype=torch.float32).long().tolist()
        if not k:
            return x
        col = lambda t: t.to(device=x.device, dtype=x.dtype)[:, None, None, None]  # noqa: E731
        y = x if k == n else x[chosen.to(x.device)]
        for op in order:
            if op == 0 and self.brightness:
                y = (y + (col(b) - 1)).clamp(0, 1)
            elif op == 1 and self.contrast:
                y = (y * col(c)).clamp(0, 1)
            elif op == 2 and self.saturation:
                h_, s_, v_ = _rgb_to_hsv(y)
                y = _hsv_to_rgb(h_, (s_ * col(s)[:, 0]).clamp(0, 1), v_)
            elif op == 3 and self.hue:
                h_, s_, v_ = _rgb_to_hsv(y)
                y = _hsv_to_rgb(torch.fmod(h_ + col(hue)[:, 0] * (2 * math.pi), 2 * math.pi), s_, v_)
        if k == n:
            return y
        out = x.clone()
        out[chosen.to(x.device)] = y
        return out


@dataclass(frozen=True)
class Erasing:
    """With probability p per image, set a random rectangle to `value` (see the module docstring)."""
    scale: tuple[float, float] = (0.1, 0.5)
    ratio: tuple[float, float] = (0.3, 3.3)
    value: float = 0.0
    p: float = 0.5

    def __call__(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        chosen = _coin(n, self.p)
        k = int(chosen.sum())
        area = _uniform(k, *self.scale) * (h * w)
        r0, r1 = self.ratio
        if r0 < 1 < r1:  # U[r0, 1] or U[1, r1], each half the time
            below, above = _uniform(k, r0, 1.0), _uniform(k, 1.0, r1)
            ratio = torch.where(torch.rand(k).round().bool(), below, above)
        else:
            ratio = _uniform(k, r0, r1)
        one = torch.tensor(1.0)
        heights = torch.minimum(torch.maximum(((area * ratio) ** 0.5).round(), one), torch.tensor(float(h)))
        widths = torch.minimum(torch.maximum(((area / ratio) ** 0.5).round(), one), torch.tensor(float(w)))
        xs = (torch.rand(k) * (w - widths + 1)).floor()
        ys = (torch.rand(k) * (h - heights + 1)).floor()
        if not k:
            return x
        where = chosen.to(x.device)
        dev = lambda t: t.to(x.device)[:, None]  # noqa: E731
        rows, cols = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
        in_rows = (rows >= dev(ys)) & (rows < dev(ys + heights))
        in_cols = (cols >= dev(xs)) & (cols < dev(xs + widths))
        box = torch.zeros(n, h, w, dtype=torch.bool, device=x.device)
        box[where] = in_rows[:, :, None] & in_cols[:, None, :]
        return x.masked_fill(box[:, None], self.value)


Op = Crop | Rotation | HFlip | ColorJiggle | Erasing

DIFFUSION_HFLIP = HFlip(p=0.5)  # guide.continual.train_diffusion's flip (the reference's, under --train_aug)


def augmentation_ops(kind: str, channels: int, image_size: int) -> tuple[Op, ...]:
    """The ops `make_augmentation(kind, …)` applies, in order, to a batch in [0, 1]."""
    if kind not in AUGMENTATIONS:
        raise ValueError(f"augmentation {kind!r}: expected one of {AUGMENTATIONS}")
    if kind == "none":
        return ()
    hsv = channels == 3 and kind == "reference"
    jiggle = ColorJiggle(0.1, 0.1, 0.1 if hsv else 0.0, 0.1 if hsv else 0.0)
    flip = (HFlip(0.5),) if kind == "reference" else ()
    return (Crop(image_size, padding=4), Rotation(30.0), *flip, jiggle, Erasing(scale=(0.1, 0.5)))


def make_augmentation(kind: str, channels: int, image_size: int):
    """A function mapping a batch in [−1, 1] to an augmented batch in [−1, 1] (None for "none").
    Randomness comes from torch's global generator: seed it (the stages do) for repeatable runs."""
    ops = augmentation_ops(kind, channels, image_size)
    if not ops:
        return None

    def augment(x: Tensor) -> Tensor:
        y = x * 0.5 + 0.5  # kornia's Denormalize(0.5, 0.5)
        for op in ops:
            y = op(y)
        # every op keeps [0, 1] (the clamp only guards rounding); Normalize(0.5, 0.5)
        return (y.clamp(0, 1) - 0.5) / 0.5

    return augment
