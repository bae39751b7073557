"""Per-channel statistics of the data, and the normalisation they give (z-score with robust clipping). No torch.

The checks keep a fixed-size random sample of every image's pixels (``sample_pixels``: a few thousand per image,
about a million per channel over a dataset). Pooled over the training images, the sample's 0.5th and 99.5th
percentiles per channel are the clipping bounds, and the clipped sample's mean and standard deviation the
z-score, as nnU-Net normalises CT. The numbers are written into the run's config.yaml (``model.mean``, ``std``,
``clip``) and applied inside the model (``models.factory.Normalized``), so training, evaluation, prediction and
the ONNX graph use exactly the same ones. Clipping first keeps a few saturated or dead pixels from stretching
the scale, so the classes' intensity differences keep their share of the network's input range.

Only valid pixels count: not NaN or infinite (before ``data.nan_fill``), not a raster's declared nodata value or
outside GDAL's internal mask, not void in the mask. The checks say which (``valid``, (H, W, C) or broadcastable);
a sampled pixel's entry is NaN in a channel where it is invalid, so each channel's statistics are its own valid
pixels', as GDAL's band statistics are.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from pixelwise.errors import DataError

SAMPLE_BUDGET = 1_000_000  # pixels per channel pooled over a dataset: percentiles to ~0.01% of the pixels
CLIP_PERCENTILES = (0.5, 99.5)
REPORT_PERCENTILES = (0.5, 1.0, 50.0, 99.0, 99.5)


def samples_per_image(images: int) -> int:
    """How many pixels to sample from each of ``images`` images (64 to 4096)."""
    return int(np.clip(SAMPLE_BUDGET // max(images, 1), 64, 4096))


def sample_pixels(image: np.ndarray, count: int, seed: int, valid: np.ndarray | None = None) -> np.ndarray:
    """(n, C) pixels of an (H, W, C) image, in its own type: all of them, or ``count`` drawn with ``seed``.

    With ``valid`` ((H, W, C) booleans, or (H, W, 1) for every channel alike) only pixels valid in some channel are
    drawn, and where a drawn pixel's channel is invalid its entry is NaN (the samples are then float32, exact for
    the integers pixelwise reads)."""
    if valid is None:
        flat = image.reshape(-1, image.shape[-1])
        if flat.shape[0] <= count:
            return flat.copy()
        return flat[np.random.default_rng(seed).integers(0, flat.shape[0], count)]
    rows, cols = _positions(valid.any(axis=2), count, seed)
    out, keep = image[rows, cols], np.broadcast_to(valid[rows, cols], (len(rows), image.shape[2]))
    if keep.all():
        return out
    out = out.astype(np.float32)
    out[~keep] = np.nan
    return out


def _positions(where: np.ndarray, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of ``count`` pixels drawn (with replacement) among the True ones of ``where`` (H, W), or of
    all of them when there are no more; beyond ``where`` it takes memory for the rows and the draws only."""
    per_row = np.count_nonzero(where, axis=1)
    ends = np.cumsum(per_row)
    if int(ends[-1]) <= count:
        return np.nonzero(where)
    ranks = np.sort(np.random.default_rng(seed).integers(0, int(ends[-1]), count))
    rows = np.searchsorted(ends, ranks, side="right")
    cols = ranks - (ends[rows] - per_row[rows])  # the draw's rank within its row
    starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    for start, stop in zip(starts, np.r_[starts[1:], len(rows)], strict=True):
        cols[start:stop] = np.flatnonzero(where[rows[start]])[cols[start:stop]]
    return rows, cols


def _valid_channels(image: np.ndarray, valid: np.ndarray) -> Iterator[np.ndarray]:
    """Each channel's valid pixels of an (H, W, C) image, one channel at a time (a column is faster to reduce)."""
    flat = image.reshape(-1, image.shape[-1])
    ok = np.broadcast_to(valid, image.shape).reshape(flat.shape)
    for c in range(flat.shape[1]):
        yield flat[:, c][ok[:, c]]


def valid_extent(image: np.ndarray, valid: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per channel of an (H, W, C) image: the minimum and maximum of its valid pixels (NaN for a channel without
    any) and how many there are; ``valid`` None: every pixel, the bounds in the image's type."""
    if valid is None:
        flat = image.reshape(-1, image.shape[-1])
        return flat.min(axis=0), flat.max(axis=0), np.full(flat.shape[1], flat.shape[0], np.int64)
    low, high, counts = np.full(image.shape[-1], np.nan), np.full(image.shape[-1], np.nan), []
    for c, col in enumerate(_valid_channels(image, valid)):
        counts.append(col.size)
        if col.size:
            low[c], high[c] = col.min(), col.max()
    return low, high, np.array(counts, np.int64)


def valid_moments(image: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """(3, C): per channel, the mean and mean of squares of an (H, W, C) image's valid pixels (0 without any), and
    how many there are (the weight of the image's moments among the dataset's)."""
    if valid is None:
        x = image.reshape(-1, image.shape[-1]).astype(np.float64)
        return np.stack([x.mean(axis=0), (x**2).mean(axis=0), np.full(x.shape[1], float(x.shape[0]))])
    out = np.zeros((3, image.shape[-1]))
    for c, col in enumerate(_valid_channels(image, valid)):
        x = col.astype(np.float64)
        out[:, c] = (x.mean(), (x**2).mean(), x.size) if x.size else (0.0, 0.0, 0.0)
    return out


def _valid_columns(samples: np.ndarray) -> tuple[np.ndarray, bool]:
    """The samples as float64 and whether some entries are NaN (invalid there); a channel with no valid entry at all
    is a DataError naming it."""
    x = samples.astype(np.float64)
    gaps = samples.dtype.kind == "f" and bool(np.isnan(x).any())
    empty = [c + 1 for c in range(x.shape[1]) if not x.shape[0] or (gaps and np.isnan(x[:, c]).all())]
    if empty:
        which = f"channel {empty[0]} has" if len(empty) == 1 else f"channels {', '.join(map(str, empty))} have"
        raise DataError(f"{which} no valid pixel in the images the statistics come from (counted after data.bands): "
                        "every one is NaN, the raster's declared nodata value (or outside GDAL's internal mask) or "
                        "void in its mask, so nothing says how to normalise it; leave it out with data.bands, or fix "
                        "the files")
    return x, gaps


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
    99.5th percentiles per channel; NaN entries (invalid pixels) are left out."""
    x, gaps = _valid_columns(samples)
    percentile, mean, spread = (np.nanpercentile, np.nanmean, np.nanstd) if gaps else (np.percentile, np.mean, np.std)
    if clip is None:
        low, high = percentile(x, CLIP_PERCENTILES, axis=0)
    else:
        low, high = np.asarray(clip, dtype=np.float64).T
    clipped = np.clip(x, low, high)
    std = spread(clipped, axis=0)
    std = np.where(std > 0, std, 1.0)  # a constant channel is shifted to 0, not divided by 0
    return ZScore(_sig(mean(clipped, axis=0)), _sig(std), list(zip(_sig(low), _sig(high), strict=True)))


def bits_used(dtype: str, low: float, high: float) -> int | None:
    """Bits an integer channel actually spans (12 for 0..4095 in uint16; 12 for -1024..3071 in int16)."""
    if np.dtype(dtype).kind not in "ui":
        return None
    span = int(high) - min(int(low), 0)
    return max(int(span).bit_length(), 1)


def channel_report(dtype: str, low: np.ndarray, high: np.ndarray, samples: np.ndarray) -> list[dict[str, Any]]:
    """Per channel: value range over every valid pixel, the bits an integer channel uses, percentiles, mean and std
    of the sample's valid entries (``pixelwise check``)."""
    x, gaps = _valid_columns(samples)
    percentile, mean, spread = (np.nanpercentile, np.nanmean, np.nanstd) if gaps else (np.percentile, np.mean, np.std)
    pct = percentile(x, REPORT_PERCENTILES, axis=0)
    out = []
    for c in range(x.shape[1]):
        out.append({"channel": c + 1, "min": float(low[c]), "max": float(high[c]),
                    "bits_used": bits_used(dtype, low[c], high[c]),
                    "percentiles": {f"{p:g}": float(f"{v:.7g}") for p, v in zip(REPORT_PERCENTILES, pct[:, c],
                                                                                   strict=True)},
                    "mean": float(f"{mean(x[:, c]):.7g}"), "std": float(f"{spread(x[:, c]):.7g}")})
    return out
