"""Batch augmentation with torchvision, applied per image and alike to real and replay images.

The reference recipe ("reference"): random crop with 4 pixels of padding, rotation up to 30°,
horizontal flip, colour jitter 0.1 and random erasing. "digits" drops the flip (a mirrored digit is
another glyph) and the hue/saturation jitter (grey images); "none" turns augmentation off.
"""
from __future__ import annotations

import torch
from torch import Tensor

AUGMENTATIONS = ("reference", "digits", "none")


def make_augmentation(kind: str, channels: int, image_size: int):
    """A function mapping a batch in [−1, 1] to an augmented batch in [−1, 1] (None for "none").
    Randomness comes from torch's global generator: seed it (the stages do) for repeatable runs."""
    if kind == "none":
        return None
    if kind not in AUGMENTATIONS:
        raise ValueError(f"augmentation {kind!r}: expected one of {AUGMENTATIONS}")
    from torchvision.transforms import v2  # imported only when used: torchvision takes seconds to load
    colour = (v2.ColorJitter(0.1, 0.1, 0.1, 0.1) if channels == 3 and kind == "reference"
              else v2.ColorJitter(brightness=0.1, contrast=0.1))
    ops = [v2.RandomCrop(image_size, padding=4), v2.RandomRotation(30)]
    if kind == "reference":
        ops.append(v2.RandomHorizontalFlip())
    ops += [colour, v2.RandomErasing()]
    pipeline = v2.Compose(ops)

    def augment(x: Tensor) -> Tensor:
        unit = (x + 1) / 2
        return torch.stack([pipeline(img) for img in unit]).clamp(0, 1) * 2 - 1

    return augment
