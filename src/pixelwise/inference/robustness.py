"""Robustness: a run evaluated on corrupted copies of a split (``corruptions``), and on another dataset.

For every corruption x severity the images are corrupted (deterministically per image name, corruption and
severity), predicted, and scored against their truth (moved alike by ``elastic_transform``) with one confusion
matrix; relative robustness is corrupted mIoU / clean mIoU. ``--data OTHER`` adds the domain-shift gap: the same
model on the same split of another dataset, read with the run's class table.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from pixelwise.data.classes import IGNORE
from pixelwise.data.pixels import model_input
from pixelwise.errors import PixelwiseError
from pixelwise.inference.corruptions import CORRUPTIONS, check_corruptions, corrupt
from pixelwise.inference.evaluation import RunSplit
from pixelwise.progress import track


def _confusion(pred: np.ndarray, truth: np.ndarray, k: int) -> np.ndarray:
    keep = truth != IGNORE
    return np.bincount(truth[keep].astype(np.int64) * k + pred[keep], minlength=k * k).reshape(k, k)


def _miou(cm: np.ndarray, names: list[str]) -> float | None:
    from pixelwise.engine.metrics import metrics_from_confusion

    return metrics_from_confusion(cm, names)["miou"]


def pick(n: int, limit: int | None) -> list[int]:
    """Indices of the images used: all, or ``limit`` evenly spread ones."""
    if limit is None or limit >= n:
        return list(range(n))
    return sorted(set(np.linspace(0, n - 1, num=limit).round().astype(int).tolist()))


def split_miou(rs: RunSplit, indices: list[int], batch_size: int = 4) -> float | None:
    """mIoU of the run's model on ``indices`` of its split, uncorrupted."""
    k = rs.segmenter.table.num_classes
    cm = np.zeros((k, k), np.int64)
    for start in range(0, len(indices), batch_size):
        chunk = [rs.dataset.load(i) for i in indices[start : start + batch_size]]
        preds = rs.segmenter.predict([model_input(im) for im, _ in chunk], batch_size=batch_size)
        for (_, truth), pred in zip(chunk, preds, strict=True):
            cm += _confusion(pred, truth, k)
    return _miou(cm, rs.segmenter.table.names)


def robustness(rs: RunSplit, corruptions: list[str] | None = None, severities: list[int] = (1, 3, 5),
               limit: int | None = None, batch_size: int = 4, other: RunSplit | None = None) -> dict[str, Any]:
    """mIoU per corruption x severity on ``rs``'s split (``limit``: that many images, evenly spread), clean mIoU,
    relative robustness, and with ``other`` the domain-shift gap."""
    names = list(corruptions or CORRUPTIONS)
    severities = sorted(set(int(s) for s in severities))
    check_corruptions(names, severities)
    seg, k = rs.segmenter, rs.segmenter.table.num_classes
    if (rs.dataset.spec.dtype or "uint8") != "uint8":
        raise PixelwiseError(f"robustness: the run's images are {rs.dataset.spec.dtype}; corruptions are defined for "
                             "8-bit images only")
    indices = pick(len(rs.dataset), limit)
    if not indices:
        raise PixelwiseError(f"robustness: the '{rs.split}' split has no images")
    start = time.perf_counter()
    items = []
    for i in indices:
        image, truth = rs.dataset.load(i)
        items.append((Path(rs.dataset.pairs[i].image).name, model_input(image), truth))
    clean = np.zeros((k, k), np.int64)
    for (_, _image, truth), pred in zip(items, seg.predict([im for _, im, _ in items], batch_size=batch_size),
                                       strict=True):
        clean += _confusion(pred, truth, k)
    clean_miou = _miou(clean, seg.table.names)
    table: dict[str, dict[str, dict[str, float | None]]] = {}
    jobs = [(c, s) for c in names for s in severities]
    for name, severity in track(jobs, len(jobs), "Corrupting and predicting"):
        cm = np.zeros((k, k), np.int64)
        pairs = [corrupt(image, name, severity, key, truth) for key, image, truth in items]
        preds = seg.predict([im for im, _ in pairs], batch_size=batch_size)
        for (_, truth), pred in zip(pairs, preds, strict=True):
            cm += _confusion(pred, truth, k)
        miou = _miou(cm, seg.table.names)
        rel = miou / clean_miou if miou is not None and clean_miou else None
        table.setdefault(name, {})[str(severity)] = {"miou": miou, "relative": rel}
    rels = [v["relative"] for row in table.values() for v in row.values() if v["relative"] is not None]
    result: dict[str, Any] = {
        "split": rs.split, "images": len(indices), "of_images": len(rs.dataset), "clean_miou": clean_miou,
        "corruptions": names, "severities": severities, "table": table,
        "mean_corrupted_miou": float(np.mean([v["miou"] for row in table.values() for v in row.values()
                                               if v["miou"] is not None])) if table else None,
        "mean_relative": float(np.mean(rels)) if rels else None,
    }
    if other is not None:
        other_miou = split_miou(other, pick(len(other.dataset), limit), batch_size)
        result["domain_shift"] = {"data": str(other.dataset.pairs[0].image.parent) if len(other.dataset) else None,
                                  "split": other.split, "miou": other_miou,
                                  "gap": clean_miou - other_miou if clean_miou is not None and other_miou is not None
                                  else None}
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result
