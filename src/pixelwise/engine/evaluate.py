"""Evaluation: one confusion matrix over a dataset, then every metric from it."""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import nn

from pixelwise.counts import count_bins
from pixelwise.data.build import eval_loader
from pixelwise.data.classes import IGNORE
from pixelwise.engine.distributed import Dist, all_reduce_sum, broadcast_buffers, current
from pixelwise.engine.fold import fold_batch_norms
from pixelwise.engine.metrics import confusion_matrix, metrics_from_confusion
from pixelwise.engine.padding import forward_padded
from pixelwise.engine.runtime import Runtime


def per_image_confusion(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, K, K) int64 confusion matrix of each image, in one scatter; their sum is the batch's ``confusion_matrix``.

    Args:
        pred, target: (N, H, W) class indices; IGNORE (255) target pixels are left out. Any other target of K or
            more is an error (it falls outside every bin), as in ``confusion_matrix``, not a pixel counted in the
            next image's matrix.
    """
    n, k = pred.shape[0], num_classes
    image = torch.arange(n, device=pred.device).view(n, 1, 1)
    # bin 0 takes the void pixels, so no boolean mask (which would wait for the GPU to size its result)
    cell = torch.where(target < k, (image * k + target.long()) * k + pred.long() + 1, n * k * k + 1)
    flat = torch.where(target == IGNORE, 0, cell)
    return count_bins(flat, n * k * k + 1)[1:].view(n, k, k)


def per_image_scores(cms: torch.Tensor) -> list[tuple[float | None, float | None]]:
    """(mIoU, pixel accuracy) of each image from its (K, K) confusion matrix (``per_image_confusion``); mIoU over
    the classes present in its truth or prediction, None where an image has nothing labelled."""
    cms = cms.double()
    tp = cms.diagonal(dim1=1, dim2=2)
    union = cms.sum(dim=1) + cms.sum(dim=2) - tp
    present = union > 0
    iou = torch.where(present, tp / union.clamp(min=1), torch.zeros_like(tp))
    labelled = cms.sum(dim=(1, 2))
    nan = torch.full_like(labelled, math.nan)
    miou = torch.where(present.any(dim=1), iou.sum(dim=1) / present.sum(dim=1).clamp(min=1), nan)
    accuracy = torch.where(labelled > 0, tp.sum(dim=1) / labelled.clamp(min=1), nan)
    rows = torch.stack([miou, accuracy], dim=1).tolist()  # the batch's one read from the device
    return [(None if math.isnan(m) else m, None if math.isnan(a) else a) for m, a in rows]


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    dataset: torch.utils.data.Dataset,
    sizes: list[tuple[int, int]],
    names: list[str],
    runtime: Runtime,
    batch_size: int = 4,
    workers: int = 0,
    criterion: nn.Module | None = None,
    distributed: bool = False,
    per_image: bool = False,
) -> dict[str, Any]:
    """Metrics of ``model`` on whole images of ``dataset`` (void pixels excluded), plus loss and images/s.

    Args:
        sizes: (height, width) of each image, to batch equal sizes together.
        names: class names, in class-index order.
        criterion: if given, its mean over images is reported as ``loss``: each batch's value weighted by its
            number of images, so a per-pixel loss (cross-entropy, focal) does not depend on ``batch_size`` where
            the images have as many labelled pixels each. A batch's loss is still one value over its pixels, so with
            void pixels, and for Dice-like terms (dice, jaccard, tversky: one ratio over the whole batch), the
            batch size still changes it a little; no batching makes those exactly independent of it.
        distributed: under torchrun, each rank evaluates every world-th image and the confusion matrix (with
            the loss sums) is all-reduced once, so every rank returns the metrics of the whole dataset.
        per_image: also return ``per_image``: {index, miou, pixel_accuracy} per image, in dataset order
            (not with ``distributed``).
    """
    assert not (per_image and distributed), "per-image scores are gathered on one process"
    shard = current() if distributed else Dist()
    if shard.enabled:  # evaluate the model rank 0 saves: its BatchNorm statistics, not each rank's own
        broadcast_buffers(model)
    was_training = model.training
    model.eval()
    net = fold_batch_norms(model, runtime.channels_last, runtime.amp_dtype)  # BatchNorm in the convolutions, or model
    k = len(names)
    cm = torch.zeros(k, k, dtype=torch.int64, device=runtime.device)
    loss_sum, images = torch.zeros((), device=runtime.device), 0
    scores: dict[int, tuple[float | None, float | None]] = {}
    start = time.perf_counter()
    if getattr(dataset, "fully_cached", False):
        # Decoded images in memory: a batch is a copy. Starting worker processes for every evaluation cost more
        # than it saved (H200, 32 CamVid val frames: 114 images/s with 8 workers, 549 with none).
        workers = 0
    loader = eval_loader(dataset, sizes, batch_size, workers, shard.rank, shard.world)
    for (x, y), indices in zip(loader, loader.batch_sampler, strict=True):
        x, y = x.to(runtime.device, non_blocking=True), y.to(runtime.device, non_blocking=True)
        logits = forward_padded(net, x, runtime)
        if criterion is not None:
            loss_sum += criterion(logits, y) * x.shape[0]  # a mean over the batch: weighted by its images
        pred = logits.argmax(dim=1)
        if per_image:  # one scatter serves both: the batch's matrix is the sum of its images'
            cms = per_image_confusion(pred, y, k)
            cm += cms.sum(dim=0)
            scores.update(zip(indices, per_image_scores(cms), strict=True))
        else:
            cm += confusion_matrix(pred, y, k)
        images += x.shape[0]
    if shard.enabled:  # one collective: confusion matrix, loss sum and image count (exact in float64)
        packed = torch.cat([cm.flatten().double(), loss_sum.double().reshape(1),
                            torch.tensor([images], dtype=torch.float64, device=cm.device)])
        all_reduce_sum(packed)
        cm = packed[: k * k].round().long().reshape(k, k)
        loss_sum, images = packed[k * k], int(packed[k * k + 1])
    cm = cm.cpu()  # on a GPU this waits for the queued work, so the time below includes it
    elapsed = time.perf_counter() - start
    model.train(was_training)
    result = metrics_from_confusion(cm, names)
    result["loss"] = float(loss_sum) / max(images, 1) if criterion is not None else None
    result["images"] = images
    result["images_per_second"] = images / elapsed if elapsed > 0 else None
    result["confusion_matrix"] = cm.tolist()
    if per_image:
        result["per_image"] = [{"index": i, "miou": scores[i][0], "pixel_accuracy": scores[i][1]}
                               for i in sorted(scores)]
    return result
