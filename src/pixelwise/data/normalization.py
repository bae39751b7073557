"""Per-channel statistics of the data, and the normalisation they give (z-score with robust clipping). No torch.

The checks keep a fixed-size random sample of every image's pixels (``sample_pixels``: a few thousand per image,
about a million per channel over a dataset). Pooled over the training images, the sample's 0.5th and 99.5th
percentiles per channel are the clipping bounds, and the clipped sample's mean and standard deviation the
z-score, as nnU-Net normalises CT. The numbers are written into the run's config.yaml (``model.mean``, ``std``,
``clip``) and applied inside the model (``models.factory.Normalized``), so training, evaluation, prediction and
the ONNX graph use exactly the same ones. Clipping first keeps a few saturated or dead pixels from stretching
the scale, so the classes' intensity differences keep their share of the network's input range.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

SAMPLE_BUDGET = 1_000_000  # pixels per channel pooled over a dataset: percentiles to ~0.01% of the pixels
CLIP_PERCENTILES = (0.5, 99.5)
REPORT_PERCENTILES = (0.5, 1.0, 50.0, 99.0, 99.5)


def samples_per_image(images: int) -> int:
    """How many pixels to sample from each of ``images`` images (64 to 4096)."""
    return int(np.clip(SAMPLE_BUDGET // max(images, 1), 64, 4096))


def sample_pixels(image: np.ndarray, count: int, seed: int) -> np.ndarray:
    """(n, C) pixels of an (H, W, C) image, in its own type: all of them, or ``count`` drawn with ``seed``."""
    flat = image.reshape(-1, image.shape[-1])
    if flat.shape[0] <= count:
        return flat.copy()
    return flat[np.random.default_rng(seed).integers(0, flat.shape[0], count)]


def _sig(values: np.ndarray) -> list[float]:
    return [float(f"{v:.7g}") for v in np.asarray(values, dtype=np.float64).tolist()]


@dataclass(frozen=True)
class ZScore:
    """Per channel: clip to [low, high] (data units), subtract ``mean``, divide by ``std``."""

    mean: list[float]
    std: list[float]
    clip: list[tuple[float, float]]


def zscore(samples: np.ndarray, clip: list[tuple[float, float]] | None = None) -> ZScore:
    """Robust z-score parameters from pooled pixel samples (n, C), clipped to ``clip`` or to their 0.5th and
    99.5th percentiles per channel."""
    x = samples.astype(np.float64)
    if clip is None:
        low, high = np.percentile(x, CLIP_PERCENTILES, axis=0)
    else:
        low, high = np.asarray(clip, dtype=np.float64).T
    clipped = np.clip(x, low, high)
    std = clipped.std(axis=0)
    std = np.where(std > 0, std, 1.0)  # a constant channel is shifted to 0, not divided by 0
    return ZScore(_sig(clipped.mean(axis=0)), _sig(std), list(zip(_sig(low), _sig(high), strict=True)))


def bits_used(dtype: str, low: float, high: float) -> int | None:
    """Bits an integer channel actually spans (12 for 0..4095 in uint16; 12 for -1024..3071 in int16)."""
    if np.dtype(dtype).kind not in "ui":
        return None
    span = int(high) - min(int(low), 0)
    return max(int(span).bit_length(), 1)


def channel_report(dtype: str, low: np.ndarray, high: np.ndarray, samples: np.ndarray) -> list[dict[str, Any]]:
    """Per channel: value range over every pixel, the bits an integer channel uses, percentiles, mean and std
    of the sample (``pixelwise check``)."""
    x = samples.astype(np.float64)
    pct = np.percentile(x, REPORT_PERCENTILES, axis=0)
    out = []
    for c in range(x.shape[1]):
        out.append({"channel": c + 1, "min": float(low[c]), "max": float(high[c]),
                    "bits_used": bits_used(dtype, low[c], high[c]),
                    "percentiles": {f"{p:g}": float(f"{v:.7g}") for p, v in zip(REPORT_PERCENTILES, pct[:, c],
                                                                                   strict=True)},
                    "mean": float(f"{x[:, c].mean():.7g}"), "std": float(f"{x[:, c].std():.7g}")})
    return out
