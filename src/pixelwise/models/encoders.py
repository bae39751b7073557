"""Helpers on smp/timm encoders."""

from __future__ import annotations

from torch import nn


def prune_unused_stages(encoder: nn.Module, depth: int) -> None:
    """Drop ResNet-style stages beyond ``depth``: smp keeps them although forward never runs them.

    (layer1 is depth 2 ... layer4 is depth 5; timm ``tu-`` encoders are already cut by timm.)
    """
    for stage in range(max(depth, 1), 5):
        if isinstance(getattr(encoder, f"layer{stage}", None), nn.Module):
            delattr(encoder, f"layer{stage}")
