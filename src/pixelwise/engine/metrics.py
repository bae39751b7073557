"""Segmentation metrics, all from one confusion matrix (rows: ground truth, columns: prediction)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from pixelwise.counts import count_bins
from pixelwise.data.classes import IGNORE


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K, K) int64 counts over the pixels whose target is not void.

    Args:
        pred: (...,) predicted class indices.
        target: (...,) true class indices; IGNORE (255) pixels are left out.
    """
    k = num_classes
    # Void pixels counted in one extra bin, the first, and dropped: no boolean indexing (a nonzero and a copy per
    # batch); a target of K or more falls outside the bins, an error rather than a pixel counted nowhere.
    cell = torch.where(target != IGNORE, target.long() * k + pred.long() + 1, 0)
    return count_bins(cell, k * k + 1)[1:].view(k, k)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1), np.nan)


def metrics_from_confusion(cm: np.ndarray | torch.Tensor, names: list[str]) -> dict[str, Any]:
    """Pixel accuracy, mean accuracy, mIoU, frequency-weighted IoU and per-class IoU, precision, recall, F1, support.

    A class with no ground-truth and no predicted pixels has undefined (NaN -> null) IoU and is left out of
    the means; a class that is predicted but absent from the ground truth gets IoU 0.
    """
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    gt, pr = cm.sum(axis=1), cm.sum(axis=0)
    fp, fn = pr - tp, gt - tp
    iou = _ratio(tp, tp + fp + fn)
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    total = cm.sum()
    freq = gt / total if total > 0 else np.zeros_like(gt)

    def clean(x: float) -> float | None:
        return None if np.isnan(x) else float(x)

    return {
        "miou": clean(np.nanmean(iou)) if not np.isnan(iou).all() else None,
        "pixel_accuracy": clean(tp.sum() / total) if total > 0 else None,
        "mean_accuracy": clean(np.nanmean(recall)) if not np.isnan(recall).all() else None,
        "fw_iou": clean(np.nansum(freq * np.nan_to_num(iou))) if total > 0 else None,
        "labelled_pixels": int(total),
        "classes": {
            name: {
                "iou": clean(iou[i]),
                "precision": clean(precision[i]),
                "recall": clean(recall[i]),
                "f1": clean(f1[i]),
                "support": int(gt[i]),
            }
            for i, name in enumerate(names)
        },
    }
