"""Networks used by GUIDE: the diffusion UNet and the continual classifiers."""

from __future__ import annotations

import torch.nn as nn

from .resnet import PreActResNet18, SmallCNN, resnet18
from .unet import CIFAR10_REFERENCE_UNET, UNet

CLASSIFIER_ARCHS = ("resnet18", "small_cnn")

__all__ = [
    "CIFAR10_REFERENCE_UNET",
    "CLASSIFIER_ARCHS",
    "PreActResNet18",
    "SmallCNN",
    "UNet",
    "build_classifier",
    "resnet18",
]


def build_classifier(arch: str, num_classes: int, in_channels: int, image_size: int,
                     width: int | None = None) -> nn.Module:
    """Create a classifier producing logits [N, num_classes] for [N, in_channels, image_size, image_size] inputs;
    `width`: channels of its first stage (None: the architecture's own, resnet18 64, small_cnn 32)."""
    if image_size < 4:
        raise ValueError(f"image_size {image_size} is too small for a conv classifier")
    if arch == "resnet18":
        return resnet18(num_classes, in_channels=in_channels, width=width or 64)
    if arch == "small_cnn":
        return SmallCNN(num_classes, in_channels=in_channels, width=width or 32)
    raise ValueError(f"unknown classifier arch {arch!r}; expected one of {CLASSIFIER_ARCHS}")
