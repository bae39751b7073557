"""Test-time augmentation: predict flipped and rescaled copies, map each back, average the probabilities."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np

FLIPS = ("h", "v")


def _flip(a: np.ndarray, flip: str | None, h_axis: int, w_axis: int) -> np.ndarray:
    if flip == "h":
        return np.flip(a, axis=w_axis)
    if flip == "v":
        return np.flip(a, axis=h_axis)
    return a


def _resize_probs(probs: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(K, h, w) -> (K, H, W) bilinear; ``size`` is (H, W)."""
    h, w = size
    return np.stack([cv2.resize(p, (w, h), interpolation=cv2.INTER_LINEAR) for p in probs])


def tta_probs(
    probs_of: Callable[[np.ndarray], np.ndarray],
    image: np.ndarray,
    flips: Sequence[str] = FLIPS,
    scales: Sequence[float] = (1.0,),
) -> np.ndarray:
    """Mean probabilities over the identity, each flip, at each scale; every output is mapped back first.

    Args:
        probs_of: (H, W, C) uint8 image -> (K, H, W) probabilities (whole image or sliding window).
        image: (H, W, C) uint8.
        flips: any of "h" (left-right), "v" (up-down).
        scales: image scale factors, e.g. (0.75, 1.0, 1.25); probabilities are resized back bilinearly.
    """
    unknown = [f for f in flips if f not in FLIPS]
    if unknown or not scales or any(s <= 0 for s in scales):
        raise ValueError(f"flips must be among {FLIPS} (got {list(flips)}) and scales positive (got {list(scales)})")
    h, w = image.shape[:2]
    total: np.ndarray | None = None
    count = 0
    for scale in scales:
        scaled = image
        if scale != 1.0:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            scaled = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
            if scaled.ndim == 2:
                scaled = scaled[:, :, None]
        for flip in (None, *flips):
            # A copy, not np.ascontiguousarray: a flipped side 1 pixel long keeps its negative stride (numpy
            # counts the array as contiguous), and torch.from_numpy refuses negative strides.
            out = probs_of(_flip(scaled, flip, 0, 1).copy() if flip else np.ascontiguousarray(scaled))
            out = _flip(out, flip, 1, 2)
            if out.shape[1:] != (h, w):
                out = _resize_probs(np.ascontiguousarray(out), (h, w))
            total = out.astype(np.float32) if total is None else total + out
            count += 1
    assert total is not None
    return total / count
