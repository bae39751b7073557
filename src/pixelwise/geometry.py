"""Padding geometry shared by the PyTorch and numpy (ONNX Runtime) forward passes; no torch."""

from __future__ import annotations


def pad_amounts(h: int, w: int, multiple: int, min_size: int = 0) -> tuple[int, int, bool]:
    """Bottom and right padding that makes (h, w) multiples of ``multiple`` and at least ``min_size``.

    Returns (pad_h, pad_w, reflect): reflection keeps image statistics at the border (zeros would look like a
    black frame to the network); it needs the pad to be smaller than the side, else edge replication is used.
    """
    th, tw = max(h, min_size), max(w, min_size)
    ph, pw = th + (-th) % multiple - h, tw + (-tw) % multiple - w
    return ph, pw, ph < h and pw < w
