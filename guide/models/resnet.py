"""Classifiers trained continually by GUIDE on real + replayed samples.

``PreActResNet18`` mirrors the GUIDE reference classifier (the "imagenet-style"
ResNet-18 of the Continual-Learning-Benchmark code base with ``preact=True``):
every convolution -- including the stem and the 1x1 shortcut projections -- is
wrapped as BatchNorm(in) -> ReLU -> Conv, there is no max-pool, and the head is
BatchNorm1d -> ReLU -> Linear without bias.  With 10 classes and RGB input this
has exactly 11,173,062 parameters.

``SmallCNN`` is a cheap conv net for 28x28 / 16x16 grey images (CPU smoke runs).

All classifiers map images in [-1, 1] of shape [N, C, H, W] to logits [N, K].
"""

from __future__ import annotations

import torch
import torch.nn as nn

BN_EPS = 1e-6  # reference classifier_defaults: bn_eps=1e-6


class PreActConv(nn.Sequential):
    """BatchNorm over the input channels -> ReLU -> bias-free convolution."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1):
        super().__init__(
            nn.BatchNorm2d(in_channels, eps=BN_EPS),
            nn.ReLU(inplace=False),
            nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
        )


class PreActBlock(nn.Module):
    """Two pre-activated 3x3 convs plus a (pre-activated 1x1) shortcut; no post-activation."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = PreActConv(in_channels, out_channels, 3, stride)
        self.conv2 = PreActConv(out_channels, out_channels, 3)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = PreActConv(in_channels, out_channels, 1, stride)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x)) + self.shortcut(x)


class PreActResNet18(nn.Module):
    """Pre-activation ResNet-18 for small images (3x3 stride-1 stem, stages [2,2,2,2], widths 64..512;
    `width` scales them: width, 2·width, 4·width, 8·width)."""

    stage_blocks = (2, 2, 2, 2)

    def __init__(self, num_classes: int, in_channels: int = 3, width: int = 64):
        super().__init__()
        self.num_classes = num_classes
        self.stage_widths = tuple(width * m for m in (1, 2, 4, 8))
        self.stem = PreActConv(in_channels, self.stage_widths[0], 3)  # BN on the raw input, as in the reference
        stages = []
        ch = self.stage_widths[0]
        for i, (w, n) in enumerate(zip(self.stage_widths, self.stage_blocks)):
            blocks = [PreActBlock(ch, w, stride=1 if i == 0 else 2)]
            blocks += [PreActBlock(w, w) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            ch = w
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)  # any input size (28, 32, 64, ...)
        self.head = nn.Sequential(
            nn.BatchNorm1d(ch, eps=BN_EPS),
            nn.ReLU(inplace=False),
            nn.Linear(ch, num_classes, bias=False),
        )
        self.feature_dim = ch

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled penultimate features [N, 512]."""
        return self.pool(self.stages(self.stem(x))).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def resnet18(num_classes: int, in_channels: int = 3, width: int = 64) -> PreActResNet18:
    """The GUIDE reference classifier (pre-activation ResNet-18; the reference's width is 64)."""
    return PreActResNet18(num_classes, in_channels, width)


class SmallCNN(nn.Module):
    """Three conv-BN-ReLU blocks (two with 2x max-pool), global average pool, linear head."""

    def __init__(self, num_classes: int, in_channels: int = 1, width: int = 32):
        super().__init__()
        self.num_classes = num_classes

        def block(cin: int, cout: int, pool: bool) -> list[nn.Module]:
            layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
            return layers + [nn.MaxPool2d(2)] if pool else layers

        self.body = nn.Sequential(
            *block(in_channels, width, pool=True),  # 28 -> 14 (16 -> 8)
            *block(width, 2 * width, pool=True),  # 14 -> 7 (8 -> 4)
            *block(2 * width, 4 * width, pool=False),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.feature_dim = 4 * width
        self.head = nn.Linear(4 * width, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))
