"""Sliding-window inference with Gaussian-weighted blending, in numpy (shared by the PyTorch and ONNX backends).

Tiles overlap by ``overlap`` of their side; each tile's probabilities are weighted by a Gaussian centred on the
tile (as in nnU-Net: a network sees less context at a tile's border, so its centre is trusted more), summed and
divided by the summed weights. Rows are finished band by band and handed out as soon as no later tile can touch
them, so memory is bounded by (classes x 2 tile heights x image width) and the tile batch, not by the image.
Tiles are sliced from the image one at a time, so the image may be a window reader over a file on disk
(``inference.geo.WindowReader``): then the image is never in memory either.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

import numpy as np

ProbsFn = Callable[[np.ndarray], np.ndarray]  # uint8 or float32 (N, C, h, w) -> float32 probabilities (N, K, h, w)


class TileSource(Protocol):
    """An (H, W, C) image, or anything that slices like one (``image[y0:y1, x0:x1]`` -> (h, w, C) array)."""

    shape: tuple[int, ...]

    def __getitem__(self, key: tuple[slice, slice]) -> np.ndarray: ...


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Start offsets of tiles of ``tile`` pixels covering ``length``; the last tile ends at the border."""
    if length <= tile:
        return [0]
    stride = max(1, int(tile * (1.0 - overlap)))
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def gaussian_window(height: int, width: int, sigma_scale: float = 0.125, floor: float = 1e-3) -> np.ndarray:
    """(height, width) float32 weights: a Gaussian with sigma = side x ``sigma_scale``, peak 1.

    The floor (at least ``floor`` per axis) keeps image-border pixels, which only the edges of tiles see, from
    being divided by ~0. It is applied to each axis before their product, not to the product: along an image
    border every tile has its own edge rows there, and a floor on the product would give the tile whose corner
    is there the same weight as the tile whose centre column is, letting the corner's poor context through.
    """
    def axis(n: int) -> np.ndarray:
        d = np.arange(n, dtype=np.float64) - (n - 1) / 2
        g = np.exp(-(d**2) / (2 * max(n * sigma_scale, 1e-6) ** 2))
        return np.maximum(g / g.max(), floor)

    return np.outer(axis(height), axis(width)).astype(np.float32)


def sliding_window(
    probs_fn: ProbsFn,
    image: TileSource,
    tile: tuple[int, int],
    overlap: float = 0.25,
    batch_size: int = 4,
) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield finished row blocks ``(y0, y1, probs)`` with probs (K, y1 - y0, W) float32, top to bottom.

    Args:
        probs_fn: the backend: a (N, C, h, w) batch of tiles -> (N, K, h, w) probabilities.
        image: (H, W, C) model input (uint8 or float32), or a ``TileSource`` reading tiles from disk.
        tile: (tile height, tile width); a side longer than the image's is cut to it.
        overlap: fraction of a tile shared with its neighbour, in [0, 1).
    """
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    h, w = image.shape[:2]
    th, tw = min(tile[0], h), min(tile[1], w)
    ys, xs = tile_starts(h, th, overlap), tile_starts(w, tw, overlap)
    weight = gaussian_window(th, tw)
    acc: np.ndarray | None = None  # sums for rows [base, base + acc height)
    wsum = np.zeros((0, w), dtype=np.float32)
    base = 0
    for i, y in enumerate(ys):
        needed = y + th - base
        for start in range(0, len(xs), batch_size):
            row_xs = xs[start : start + batch_size]
            batch = np.stack([image[y : y + th, x : x + tw].transpose(2, 0, 1) for x in row_xs])
            probs = probs_fn(batch)
            if acc is None:
                acc = np.zeros((probs.shape[1], 0, w), dtype=np.float32)
            if acc.shape[1] < needed:  # grow the window down to this band's last row
                grow = needed - acc.shape[1]
                acc = np.concatenate([acc, np.zeros((acc.shape[0], grow, w), np.float32)], axis=1)
                wsum = np.concatenate([wsum, np.zeros((grow, w), np.float32)], axis=0)
            for p, x in zip(probs, row_xs, strict=True):
                acc[:, y - base : y - base + th, x : x + tw] += p * weight
                wsum[y - base : y - base + th, x : x + tw] += weight
        done = ys[i + 1] if i + 1 < len(ys) else h  # no later tile starts above this row
        assert acc is not None
        rows = done - base
        yield base, done, acc[:, :rows] / wsum[:rows]
        acc, wsum, base = acc[:, rows:], wsum[rows:], done


def sliding_window_probs(probs_fn: ProbsFn, image: np.ndarray, tile: tuple[int, int], overlap: float = 0.25,
                         batch_size: int = 4) -> np.ndarray:
    """The whole (K, H, W) probability map from ``sliding_window`` (memory: K x H x W floats)."""
    return np.concatenate([p for _, _, p in sliding_window(probs_fn, image, tile, overlap, batch_size)], axis=1)


def sliding_window_mask(probs_fn: ProbsFn, image: np.ndarray, tile: tuple[int, int], overlap: float = 0.25,
                        batch_size: int = 4) -> np.ndarray:
    """(H, W) uint8 class indices, argmax taken block by block: memory stays bounded for very large images."""
    out = np.empty(image.shape[:2], dtype=np.uint8)
    for y0, y1, probs in sliding_window(probs_fn, image, tile, overlap, batch_size):
        out[y0:y1] = probs.argmax(axis=0)
    return out
