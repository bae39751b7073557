"""Forward passes on images of any size: pad to the network stride, run, crop back."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pixelwise.engine.runtime import Runtime
from pixelwise.geometry import pad_amounts


def pad_to_multiple(images: torch.Tensor, multiple: int, min_size: int = 0) -> torch.Tensor:
    """Pad (N, C, H, W) at the bottom and right so H and W are multiples of ``multiple`` and at least ``min_size``."""
    ph, pw, reflect = pad_amounts(*images.shape[-2:], multiple, min_size)
    if ph == 0 and pw == 0:
        return images
    return F.pad(images.float(), (0, pw, 0, ph), mode="reflect" if reflect else "replicate")


def forward_padded(model: nn.Module, images: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    """Logits (N, K, H, W) in float32 for uint8 images (N, C, H, W) of any H, W.

    Args:
        model: a network taking 0-255 input (``models.Normalized``), with ``pad_multiple``.
        images: uint8 or 0-255 float, already on ``runtime.device``.
    """
    h, w = images.shape[-2:]
    x = pad_to_multiple(images, getattr(model, "pad_multiple", 32), getattr(model, "min_size", 0))
    if runtime.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with runtime.autocast():
        logits = model(x)
    return logits[..., :h, :w].float()
