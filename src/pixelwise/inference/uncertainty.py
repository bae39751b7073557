"""Per-pixel uncertainty, and how well it predicts the model's errors.

Three maps, each 0 (certain) to 1, and one score per image (the map's mean):
- ``entropy``: predictive entropy of the class probabilities / log K (``suggest.entropy_map``);
- ``tta``: disagreement between the predictions of the image and of its flips (``suggest.disagreement_map``), each
  computed as the probabilities are: a large image is tiled, and every flipped pass runs on the same tiles;
- ``mc-dropout``: the variance of the predicted class's probability over passes with dropout left on
  (Gal & Ghahramani, 2016), scaled by its maximum 1/4; only for models with dropout layers (PyTorch backend).
``ErrorAuroc`` answers whether to believe the maps: the AUROC of pixel uncertainty as a detector of misclassified
pixels (0.5: no better than chance, 1: every error is more uncertain than every correct pixel), from histograms
accumulated image by image so a whole split never sits in memory.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pixelwise.data.classes import IGNORE
from pixelwise.errors import PixelwiseError
from pixelwise.inference.suggest import disagreement_map, entropy_map, flipped

METHODS = ("entropy", "tta", "mc-dropout")
HIST_BINS = 2000
MC_PASSES = 8
OVERLAP = 0.25  # of the tiles of a large image (``Segmenter.probabilities``' default)


def check_methods(methods: list[str]) -> list[str]:
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise PixelwiseError(f"uncertainty method(s) {', '.join(unknown)}: choose among {', '.join(METHODS)}")
    return methods


def dropout_layers(model: Any) -> list[Any]:
    """The dropout modules of a PyTorch network (empty: MC-dropout does not apply)."""
    from torch import nn

    return [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0]


def mc_dropout_map(seg: Any, img: np.ndarray, passes: int = MC_PASSES, seed: int = 0) -> np.ndarray:
    """Variance over ``passes`` dropout-on passes of the probability of the class predicted on average, x4 (0-1).
    ``img``: model input (``Segmenter._image``)."""
    import torch

    if not hasattr(seg.backend, "model"):
        raise PixelwiseError("mc-dropout needs the PyTorch backend (a run directory), not an ONNX model")
    layers = dropout_layers(seg.model)
    if not layers:
        raise PixelwiseError("mc-dropout: this model has no dropout layers (use entropy or tta)")
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        for m in layers:
            m.train()
        runs = np.stack([seg.backend(img.transpose(2, 0, 1)[None])[0] for _ in range(passes)])
    finally:
        for m in layers:
            m.eval()
        torch.random.set_rng_state(gen_state)
    mean = runs.mean(axis=0)
    top = mean.argmax(axis=0)
    chosen = np.take_along_axis(runs, top[None, None].repeat(passes, 0), axis=1)[:, 0]
    return np.clip(chosen.var(axis=0) * 4.0, 0.0, 1.0)


def uncertainty_maps(seg: Any, image: np.ndarray, methods: list[str] = ("entropy",), probs: np.ndarray | None = None
                     ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(probabilities (K, H, W), {method: (H, W) map in 0-1}) of one image (an array or a file). ``probs``: its
    probabilities if already computed, as here (automatic tiling, ``OVERLAP``): the tta variants are tiled alike."""
    img = seg._image(image)
    if probs is None:
        probs = seg._probabilities(img, None, OVERLAP, False, (1.0,), ())
    maps: dict[str, np.ndarray] = {}
    for method in check_methods(list(methods)):
        if method == "entropy":
            maps[method] = entropy_map(probs)
        elif method == "tta":
            # horizontal, vertical flip: the same tiling decision and tiles as ``probs``, each tile flipped
            variants = [probs, *(seg._probs_fn(None, OVERLAP, flipped(seg.backend, axis))(img) for axis in (3, 2))]
            maps[method] = disagreement_map(variants).astype(np.float32)
        else:
            maps[method] = mc_dropout_map(seg, img)
    return probs, maps


class ErrorAuroc:
    """AUROC of an uncertainty map (0-1) as a detector of wrong pixels, from per-outcome histograms."""

    def __init__(self, bins: int = HIST_BINS) -> None:
        self.bins = bins
        self.wrong = np.zeros(bins, np.int64)
        self.right = np.zeros(bins, np.int64)

    def update(self, unc: np.ndarray, pred: np.ndarray, truth: np.ndarray) -> None:
        keep = truth != IGNORE
        b = np.clip((unc[keep] * self.bins).astype(np.int64), 0, self.bins - 1)
        wrong = pred[keep] != truth[keep]
        self.wrong += np.bincount(b[wrong], minlength=self.bins)
        self.right += np.bincount(b[~wrong], minlength=self.bins)

    def auroc(self) -> float | None:
        """P(uncertainty of a wrong pixel > that of a right one), ties counted half; None without both kinds."""
        nw, nr = self.wrong.sum(), self.right.sum()
        if nw == 0 or nr == 0:
            return None
        right_below = np.cumsum(self.right) - self.right  # right pixels in lower bins
        return float((self.wrong * (right_below + 0.5 * self.right)).sum() / (nw * nr))

    def summary(self) -> dict[str, Any]:
        return {"auroc": self.auroc(), "wrong_pixels": int(self.wrong.sum()), "right_pixels": int(self.right.sum()),
                "mean_wrong": self._mean(self.wrong), "mean_right": self._mean(self.right)}

    def _mean(self, hist: np.ndarray) -> float | None:
        n = hist.sum()
        return float((hist * (np.arange(self.bins) + 0.5) / self.bins).sum() / n) if n else None


def mc_dropout_available(seg: Any) -> str | None:
    """None when MC-dropout applies to ``seg``, else why not."""
    if not hasattr(seg.backend, "model"):
        return "an ONNX model (MC-dropout needs the PyTorch network)"
    if not dropout_layers(seg.model):
        return "the model has no dropout layers"
    return None
