"""Calibration: expected calibration error, reliability diagrams, and temperature scaling stored in the run.

A network's top-class probability should be right as often as it says: of the pixels predicted with 0.8
confidence, 80% should be correct. ``CalibrationStats`` accumulates confidence/accuracy bins over a split
(void pixels left out) and gives the ECE (overall, and per predicted class) and the reliability diagram.
``fit_temperature`` finds the T that minimises the negative log-likelihood of softmax(logits / T) on
labelled pixels (Guo et al., 2017); argmax, hence every mask and mIoU, is unchanged by it. The temperature lives
in RUN/calibration.json (written atomically), ``Segmenter`` applies it unless asked not to, and the ONNX export
folds it into the graph. No torch: the logits come from the backend (PyTorch or ONNX Runtime).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pixelwise.atomic import atomic_write_text
from pixelwise.data.classes import IGNORE
from pixelwise.errors import PixelwiseError
from pixelwise.inference.onnx_backend import softmax
from pixelwise.progress import track

CALIBRATION_FILE = "calibration.json"
BINS = 15
T_RANGE = (0.05, 20.0)  # the temperatures searched (log-spaced golden-section search)
PIXELS_PER_IMAGE = 20000  # labelled pixels sampled per image to fit the temperature


class CalibrationStats:
    """Confidence/accuracy bins of the top class, overall and per predicted class, accumulated image by image."""

    def __init__(self, num_classes: int, bins: int = BINS) -> None:
        self.k, self.bins = num_classes, bins
        self.count = np.zeros((num_classes, bins), np.int64)
        self.conf = np.zeros((num_classes, bins), np.float64)
        self.correct = np.zeros((num_classes, bins), np.int64)

    def update(self, probs: np.ndarray, truth: np.ndarray) -> None:
        """``probs``: (K, H, W) probabilities; ``truth``: (H, W) class indices, 255 = void (left out)."""
        keep = truth != IGNORE
        if not keep.any():
            return
        p = probs[:, keep]
        pred = p.argmax(axis=0)
        conf = p.max(axis=0).astype(np.float64)
        right = pred == truth[keep]
        b = np.minimum((conf * self.bins).astype(np.int64), self.bins - 1)
        flat = pred * self.bins + b
        size = self.k * self.bins
        self.count += np.bincount(flat, minlength=size).reshape(self.k, self.bins)
        self.conf += np.bincount(flat, weights=conf, minlength=size).reshape(self.k, self.bins)
        self.correct += np.bincount(flat, weights=right, minlength=size).reshape(self.k, self.bins).astype(np.int64)

    @staticmethod
    def _ece(count: np.ndarray, conf: np.ndarray, correct: np.ndarray) -> float | None:
        total = count.sum()
        if total == 0:
            return None
        n = np.maximum(count, 1)
        return float((count / total * np.abs(correct / n - conf / n)).sum())

    def ece(self) -> float | None:
        return self._ece(self.count.sum(0), self.conf.sum(0), self.correct.sum(0))

    def reliability(self) -> dict[str, list[float | int | None]]:
        """Per bin: its confidence range's centre, mean confidence, accuracy (None where empty) and pixel count."""
        count, conf, correct = self.count.sum(0), self.conf.sum(0), self.correct.sum(0)
        n = np.maximum(count, 1)
        return {"bin_centers": [(i + 0.5) / self.bins for i in range(self.bins)],
                "confidence": [float(c / m) if k else None for c, m, k in zip(conf, n, count, strict=True)],
                "accuracy": [float(c / m) if k else None for c, m, k in zip(correct, n, count, strict=True)],
                "pixels": [int(k) for k in count]}

    def summary(self, names: list[str]) -> dict[str, Any]:
        """ECE overall and per predicted class (top-label ECE), and the reliability diagram's bins."""
        per_class = {name: self._ece(self.count[i], self.conf[i], self.correct[i]) for i, name in enumerate(names)}
        return {"ece": self.ece(), "bins": self.bins, "per_class_ece": per_class, "reliability": self.reliability()}


def _nll(logits: np.ndarray, labels: np.ndarray, t: float) -> float:
    """Mean negative log-likelihood of softmax(logits / t) at ``labels``; logits (n, K)."""
    z = logits / t
    z = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    return float((log_norm - z[np.arange(len(labels)), labels]).mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising the NLL of (n, K) logits at their labels (a 1-D golden-section search over
    log T, which is convex enough for temperature scaling's one parameter)."""
    if len(labels) == 0:
        raise PixelwiseError("no labelled pixels to fit a temperature on (every pixel is void)")
    logits = logits.astype(np.float64)
    lo, hi = np.log(T_RANGE[0]), np.log(T_RANGE[1])
    g = (np.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = _nll(logits, labels, np.exp(a)), _nll(logits, labels, np.exp(b))
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = _nll(logits, labels, np.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = _nll(logits, labels, np.exp(b))
    return float(np.exp((lo + hi) / 2))


def sample_pixels(logits: np.ndarray, truth: np.ndarray, rng: np.random.Generator,
                  count: int = PIXELS_PER_IMAGE) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``count`` labelled pixels of one image: ((n, K) logits, (n,) labels)."""
    keep = np.flatnonzero(truth.reshape(-1) != IGNORE)
    if len(keep) > count:
        keep = rng.choice(keep, count, replace=False)
    flat = logits.reshape(logits.shape[0], -1)
    return flat[:, keep].T.astype(np.float32), truth.reshape(-1)[keep].astype(np.int64)


def calibration_path(run_dir: Path) -> Path:
    return Path(run_dir) / CALIBRATION_FILE


def read_temperature(run_dir: Path) -> float | None:
    """The run's fitted temperature, or None when it was never calibrated."""
    path = calibration_path(run_dir)
    if not path.is_file():
        return None
    try:
        t = json.loads(path.read_text())["temperature"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PixelwiseError(f"{path}: unreadable ({e}); run `pixelwise calibrate RUN` again, or delete the file "
                             "to predict uncalibrated") from None
    if not isinstance(t, (int, float)) or not T_RANGE[0] <= t <= T_RANGE[1]:
        raise PixelwiseError(f"{path}: temperature {t!r} is not a number in {T_RANGE}; run `pixelwise calibrate "
                             "RUN` again")
    return float(t)


def write_calibration(run_dir: Path, info: dict[str, Any]) -> Path:
    path = calibration_path(run_dir)
    atomic_write_text(path, json.dumps(info, indent=2))
    return path


def split_indices(n: int, fit_fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """A seeded split of ``n`` images into the part the temperature is fitted on and the held-out part."""
    if not 0 < fit_fraction <= 1:
        raise PixelwiseError(f"--fit-fraction {fit_fraction}: give a share in (0, 1]")
    order = np.random.default_rng(seed).permutation(n)
    cut = max(1, int(round(n * fit_fraction))) if n else 0
    return sorted(order[:cut].tolist()), sorted(order[cut:].tolist())


def softmax_t(logits: np.ndarray, t: float, axis: int = 0) -> np.ndarray:
    return softmax(logits / t, axis=axis)


def calibrate_items(logits_of: Any, load: Any, fit: list[int], held_out: list[int], names: list[str],
                    seed: int = 0) -> dict[str, Any]:
    """Fit the temperature on the ``fit`` images, then measure ECE before and after it on the ``held_out`` ones
    (on the fitted ones when nothing is held out). ``load``: index -> (image, truth); ``logits_of``: image ->
    (K, H, W) logits."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for i in track(fit, len(fit), "Fitting the temperature"):
        image, truth = load(i)
        x, y = sample_pixels(np.asarray(logits_of(image), np.float32), truth, rng)
        xs.append(x)
        ys.append(y)
    t = fit_temperature(np.concatenate(xs), np.concatenate(ys))
    before, after = CalibrationStats(len(names)), CalibrationStats(len(names))
    agree = total = 0
    measured = held_out or fit
    for i in track(measured, len(measured), "Measuring calibration"):
        image, truth = load(i)
        logits = np.asarray(logits_of(image), np.float32)
        p1, pt = softmax_t(logits, 1.0), softmax_t(logits, t)
        before.update(p1, truth)
        after.update(pt, truth)
        agree += int((p1.argmax(0) == pt.argmax(0)).sum())
        total += p1[0].size
    return {"temperature": t, "fit_images": len(fit), "eval_images": len(measured),
            "eval_on": "held-out images" if held_out else "the fit images (nothing held out)",
            "before": before.summary(names), "after": after.summary(names),
            "argmax_unchanged": agree / max(total, 1)}
