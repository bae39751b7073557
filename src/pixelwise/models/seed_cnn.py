"""``seed_cnn``: the small CNN of pixelwise's original description, made fully convolutional (FCN style).

Three blocks of 3x3 convolution (32, 64, 128 filters) + ReLU + 2x2 max pooling, a 1x1 classifier at 1/8
resolution, then upsampling back to the input size: bilinear, or learned (a transposed convolution
initialised to bilinear, as in FCN). The baseline every other model must beat.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def bilinear_kernel(channels: int, factor: int) -> torch.Tensor:
    """Weights (C, 1, 2f, 2f) that make a grouped ConvTranspose2d with stride f a bilinear upsampler."""
    size = 2 * factor
    center = (size - 1) / 2
    og = torch.arange(size, dtype=torch.float32)
    filt = 1 - (og - center).abs() / factor
    return (filt[:, None] * filt[None, :]).expand(channels, 1, size, size).clone()


class LearnedUpsample(nn.Module):
    """Per-class transposed convolution by ``factor``, starting as bilinear interpolation and trained from there."""

    def __init__(self, channels: int, factor: int) -> None:
        super().__init__()
        self.factor = factor
        self.up = nn.ConvTranspose2d(channels, channels, 2 * factor, stride=factor, padding=factor // 2,
                                     groups=channels, bias=False)
        with torch.no_grad():
            self.up.weight.copy_(bilinear_kernel(channels, factor))

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        y = self.up(x)
        if y.shape[-2:] != size:  # inputs not divisible by the stride: resample the last few pixels
            y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
        return y


class SeedCNN(nn.Module):
    """(N, in_channels, H, W) -> logits (N, classes, H, W)."""

    def __init__(self, in_channels: int = 3, classes: int = 2, filters: tuple[int, ...] = (32, 64, 128),
                 upsampling: str = "learned") -> None:
        super().__init__()
        if upsampling not in ("learned", "bilinear"):
            raise ValueError(f"upsampling must be 'learned' or 'bilinear', got '{upsampling}'")
        layers: list[nn.Module] = []
        prev = in_channels
        for width in filters:
            layers += [nn.Conv2d(prev, width, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            prev = width
        self.encoder = nn.Sequential(*layers)
        self.classifier = nn.Conv2d(prev, classes, 1)
        self.stride = 2 ** len(filters)
        self.upsample = LearnedUpsample(classes, self.stride) if upsampling == "learned" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        logits = self.classifier(self.encoder(x))
        if self.upsample is not None:
            return self.upsample(logits, size)
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
