"""Which unlabelled images to label next (``pixelwise suggest``): per-image uncertainty, optionally with diversity.

Strategies (each image's score is a mean over its pixels; higher = label it sooner):
- ``entropy``: pixel entropy of the class probabilities, divided by log K (0 certain, 1 uniform);
- ``margin``: 1 - (top probability - second), the smallest-margin rule;
- ``tta-disagreement``: how often the predictions of the image and of its horizontal and vertical flips (flipped
  back) disagree: 1 - the share of the majority class among the three, scaled to 0-1;
- ``diverse``: entropy, chosen greedily by score x distance to the nearest image already chosen (k-center greedy
  weighted by uncertainty) on a cheap embedding, the class-probability means over a 4x4 grid, so K near-duplicates
  are not all chosen;
- ``random``: a seeded random order (the baseline a strategy has to beat).
No torch: everything goes through ``Segmenter.probabilities`` (PyTorch or ONNX Runtime backend).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pixelwise.data.io import read_image
from pixelwise.errors import DataError, PixelwiseError
from pixelwise.progress import track

STRATEGIES = ("entropy", "margin", "tta-disagreement", "diverse", "random")
GRID = 4  # the embedding's grid side
MAP_SIDE = 160  # uncertainty maps kept per image for the page, at most this many pixels a side


def entropy_map(probs: np.ndarray) -> np.ndarray:
    p = np.clip(probs, 1e-8, 1.0)
    return -(p * np.log(p)).sum(axis=0) / np.log(max(probs.shape[0], 2))


def margin_map(probs: np.ndarray) -> np.ndarray:
    if probs.shape[0] < 2:
        return np.zeros(probs.shape[1:], np.float32)
    top = np.partition(probs, -2, axis=0)[-2:]
    return 1.0 - (top[1] - top[0])


def disagreement_map(variants: Sequence[np.ndarray]) -> np.ndarray:
    """1 - (share of the majority class among the variants' argmaxes), scaled so that all different = 1."""
    labels = np.stack([v.argmax(axis=0) for v in variants])
    n = len(variants)
    majority = np.max([(labels == labels[i]).sum(axis=0) for i in range(n)], axis=0)
    return (n - majority) / max(n - 1, 1)


def embedding(probs: np.ndarray) -> np.ndarray:
    """Class-probability means over a GRID x GRID grid, L2-normalised: (K * GRID * GRID,)."""
    k, h, w = probs.shape
    ys, xs = np.linspace(0, h, GRID + 1).astype(int), np.linspace(0, w, GRID + 1).astype(int)
    cells = [probs[:, ys[i] : max(ys[i + 1], ys[i] + 1), xs[j] : max(xs[j + 1], xs[j] + 1)].mean(axis=(1, 2))
             for i in range(GRID) for j in range(GRID)]
    v = np.concatenate(cells)
    return v / max(float(np.linalg.norm(v)), 1e-12)


def greedy_diverse(scores: np.ndarray, embeddings: np.ndarray, count: int) -> list[int]:
    """Indices in the order chosen: the most uncertain first, then each time the image maximising
    score x (distance to the nearest chosen one); a near-duplicate of a chosen image has distance ~0."""
    n = len(scores)
    if n == 0 or count <= 0:
        return []
    chosen = [int(np.argmax(scores))]
    nearest = np.linalg.norm(embeddings - embeddings[chosen[0]], axis=1)
    while len(chosen) < min(count, n):
        value = scores * nearest
        value[chosen] = -1.0
        best = int(np.argmax(value))
        chosen.append(best)
        nearest = np.minimum(nearest, np.linalg.norm(embeddings - embeddings[best], axis=1))
    return chosen


@dataclass
class Scored:
    path: Path
    score: float
    embedding: np.ndarray
    uncertainty: np.ndarray  # (h, w) float 0-1, at most MAP_SIDE a side


def _small(a: np.ndarray) -> np.ndarray:
    step = max(1, int(np.ceil(max(a.shape) / MAP_SIDE)))
    return np.asarray(a[::step, ::step], np.float32)


def flipped(backend: Any, axis: int) -> Any:
    """``backend`` on each (N, C, h, w) batch flipped along ``axis`` (3: left-right, 2: up-down), its probabilities
    flipped back. Run on the tiles of the unflipped pass, the variants differ by the flip alone, never by where the
    tiles of a flipped image would fall (tiling would otherwise count as disagreement)."""
    def probs(batch: np.ndarray) -> np.ndarray:
        # copies, not views: torch.from_numpy refuses the negative strides of a flipped array
        return np.flip(backend(np.flip(batch, axis=axis).copy()), axis=axis).copy()

    return probs


def score_image(seg: Any, image: np.ndarray, strategy: str, **kwargs: Any) -> tuple[float, np.ndarray, np.ndarray]:
    """(score, embedding, uncertainty map) of one image under ``strategy`` (``random`` scores by entropy too:
    only the order differs)."""
    probs = seg.probabilities(image, **kwargs)
    if strategy == "margin":
        unc = margin_map(probs)
    elif strategy == "tta-disagreement":
        # horizontal, vertical flip on the very tiles of ``probs`` (a large image is tiled): the flips alone differ
        img, tile, overlap = seg._image(image), kwargs.get("tile"), kwargs.get("overlap", 0.25)
        variants = [probs, *(seg._probs_fn(tile, overlap, flipped(seg.backend, axis))(img) for axis in (3, 2))]
        unc = disagreement_map(variants)
    else:
        unc = entropy_map(probs)
    return float(unc.mean()), embedding(probs), _small(unc)


def score_files(seg: Any, files: list[Path], strategy: str, **kwargs: Any) -> tuple[list[Scored], list[str]]:
    """Every readable file scored; the unreadable ones as messages."""
    if strategy not in STRATEGIES:
        raise PixelwiseError(f"--strategy {strategy}: choose one of {', '.join(STRATEGIES)}")
    scored, failed = [], []
    for path in track(files, total=len(files), label="Scoring"):
        try:
            image = read_image(path, seg.spec)
        except DataError as e:
            failed.append(str(e))
            continue
        score, emb, unc = score_image(seg, image, strategy, **kwargs)
        scored.append(Scored(path, score, emb, unc))
    return scored, failed


def rank(scored: list[Scored], strategy: str, count: int, seed: int = 0) -> list[Scored]:
    """The ``count`` images to label first, in order."""
    if strategy == "random":
        order = np.random.default_rng(seed).permutation(len(scored))[:count].tolist()
    elif strategy == "diverse":
        order = greedy_diverse(np.array([s.score for s in scored]), np.stack([s.embedding for s in scored])
                               if scored else np.zeros((0, 1)), count)
    else:  # ties broken by file name, so the order is reproducible
        order = sorted(range(len(scored)), key=lambda i: (-scored[i].score, str(scored[i].path)))[:count]
    return [scored[i] for i in order]


def suggest(seg: Any, files: list[Path], count: int, strategy: str = "entropy", seed: int = 0, **kwargs: Any
            ) -> tuple[list[Scored], list[str]]:
    """Score ``files`` with ``seg`` and return the ``count`` to label first, and the files that failed."""
    scored, failed = score_files(seg, files, strategy, **kwargs)
    return rank(scored, strategy, count, seed), failed
