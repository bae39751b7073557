"""Is an image on the scale the model was trained on? A cheap check of its pixels against the run's ``model.clip``.

A run trained on other than 8-bit data stores each channel's training range in ``model.clip`` (the 0.5th and
99.5th percentiles of the training pixels, in the data's units), and the model clips its input to that range
before normalising (``models.factory.Normalized``). The type check cannot see a file of the right type on the
wrong scale: 8-bit values stored as uint16, 12-bit data rescaled to 16 bits, reflectance x 10000 instead of 0-1.
Its pixels then reach the model clipped to one end of the range, and the mask is one class, without an error.

A channel is called off-scale when more than half of the image's valid pixels lie outside its training range
widened by half the range's width on each side. A file like the training images has about 1% of its pixels
outside the range itself (its bounds are the 0.5th-99.5th percentiles); a brighter or darker scene (another
season, another gain) shifts its values by a fraction of the range and stays inside the widened one; a scale
error moves them several widths away. Half of the pixels, not the mean, so that a few hot or dead pixels never
decide. No torch: ONNX prediction uses it too.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

MARGIN = 0.5  # the training range is widened by this fraction of its width on each side
OUTSIDE = 0.5  # a channel is off-scale when more than this share of its valid pixels lie beyond the widened range
SAMPLE = 65536  # pixels looked at, at most (taken evenly from what the caller passes)


def stored_clip(backend: Any) -> list[tuple[float, float]] | None:
    """The per-channel training range [low, high] a ``Segmenter``'s backend clips its input to, or None (8-bit
    models and ``normalization`` other than zscore have none). An ONNX model has it in its metadata, a run's
    network (``Normalized``) as tensors; an ensemble's members were trained on the same data: the first one's."""
    meta = getattr(backend, "meta", None)
    if isinstance(meta, dict):
        return [(float(lo), float(hi)) for lo, hi in meta["clip"]] if meta.get("clip") else None
    model = getattr(backend, "model", None)
    for net in [model, *getattr(model, "members", [])]:
        low, high = getattr(net, "low", None), getattr(net, "high", None)
        if low is not None and high is not None:
            return list(zip(low.flatten().tolist(), high.flatten().tolist(), strict=True))
    return None


def range_warning(path: Path | str, clip: Sequence[Sequence[float]] | None, pixels: np.ndarray,
                  valid: np.ndarray | None = None, bands: Sequence[int] | None = None) -> str | None:
    """A warning naming ``path`` and the channels whose pixels lie mostly outside the training range, or None.

    Args:
        clip: per model channel [low, high], the run's ``model.clip`` (``stored_clip``); None: nothing to check.
        pixels: (..., C) pixels in the data's units as read (before the model's clip and normalisation): an
            image (H, W, C), a window of one, or a sample (N, C). Only ``SAMPLE`` of them are looked at.
        valid: boolean of ``pixels.shape[:-1]``, True where the pixel has data (nodata pixels left out); NaN and
            infinite values are left out per channel either way.
        bands: the file's band numbers of the channels (``data.bands``), named beside them in the text.
    Cost: a few percentiles of at most ``SAMPLE`` values per channel.
    """
    if clip is None:
        return None
    if pixels.shape[-1] != len(clip):
        raise ValueError(f"{len(clip)} channel ranges for pixels of {pixels.shape[-1]} channel(s)")
    flat = pixels.reshape(-1, pixels.shape[-1])
    if valid is not None:
        flat = flat[np.asarray(valid, bool).reshape(-1)]
    flat = flat[:: max(1, len(flat) // SAMPLE)].astype(np.float64)
    found = []
    for c, (low, high) in enumerate(clip):
        values = flat[:, c][np.isfinite(flat[:, c])]
        if not values.size:
            continue
        margin = MARGIN * (high - low)
        outside = float(((values < low - margin) | (values > high + margin)).mean())
        if outside > OUTSIDE:
            p_low, median, p_high = np.percentile(values, [0.5, 50, 99.5])
            name = f"channel {c + 1}" + (f" (band {bands[c]})" if bands else "")
            found.append(f"{name}: trained on {low:g}..{high:g}, this file {p_low:g}..{p_high:g} (median {median:g}, "
                         f"{outside:.0%} of its pixels beyond)")
    if not found:
        return None
    return (f"{path}: pixel values far outside the range the model was trained on (its 0.5th-99.5th percentiles, "
            f"model.clip; the file's likewise): {'; '.join(found)}. The model clips every channel to that range, so "
            "it sees these pixels as nearly constant and the mask is likely one class. Is the file on another scale "
            "(8-bit values stored as 16 bits, 12-bit data rescaled to 16 bits, reflectance x 10000)? Convert it to "
            "the training images' scale; if it is only a scene unlike the training ones, expect a poorer mask")
