"""Images of any type and channel count as 8-bit RGB pictures (previews, report panels, overlays). No torch.

8-bit gray and colour images are shown as they are. Anything else (16-bit, signed, float, more than 3 channels)
shows three channels (the first three, or a chosen triple such as bands 4, 3, 2 for false colour) or one as gray,
each stretched between its 1st and 99th percentile: a 12-bit micrograph would otherwise look black, and float
reflectance in 0..1 a single gray.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

STRETCH_PERCENTILES = (1.0, 99.0)


def pick_bands(image: np.ndarray, bands: Sequence[int] | None = None) -> np.ndarray:
    """(H, W, 1 or 3) channels to show: ``bands`` (1-based, 1 or 3 of them), else the first three (first one
    when there are two)."""
    if image.ndim == 2:
        image = image[:, :, None]
    if bands is not None:
        if len(bands) not in (1, 3) or min(bands) < 1 or max(bands) > image.shape[2]:
            raise ValueError(f"bands to show: 1 or 3 channel numbers from 1 to {image.shape[2]}, got {list(bands)}")
        return image[:, :, [b - 1 for b in bands]]
    return image[:, :, :3] if image.shape[2] >= 3 else image[:, :, :1]


def stretch_limits(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (low, high): the 1st and 99th percentiles of the finite values."""
    flat = image.reshape(-1, image.shape[-1]).astype(np.float64)
    if flat.shape[0] > 1_000_000:  # percentiles of a regular subsample: a gigapixel raster needs no full sort
        flat = flat[:: flat.shape[0] // 1_000_000]
    low, high = np.nanpercentile(np.where(np.isfinite(flat), flat, np.nan), STRETCH_PERCENTILES, axis=0)
    return np.nan_to_num(low), np.nan_to_num(high)


def display_rgb(image: np.ndarray, bands: Sequence[int] | None = None,
                limits: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """(H, W, 3) uint8 of an (H, W[, C]) image of any type; ``limits`` fixes the stretch (e.g. the original's, so
    an augmented copy shows its brightness change)."""
    shown = pick_bands(image, bands)
    if shown.dtype != np.uint8 or limits is not None:
        low, high = limits if limits is not None else stretch_limits(shown)
        scaled = (shown.astype(np.float32) - low) / np.maximum(high - low, 1e-12)
        shown = (np.nan_to_num(scaled).clip(0, 1) * 255).round().astype(np.uint8)
    return np.ascontiguousarray(np.repeat(shown, 3, axis=2) if shown.shape[2] == 1 else shown)
