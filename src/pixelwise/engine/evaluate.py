"""Evaluation: one confusion matrix over a dataset, then every metric from it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pixelwise.data.build import eval_loader
from pixelwise.engine.distributed import Dist, all_reduce_sum, broadcast_buffers, current
from pixelwise.engine.metrics import confusion_matrix, metrics_from_confusion
from pixelwise.engine.runtime import Runtime
from pixelwise.inference.padding import forward_padded


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
) -> dict[str, Any]:
    """Metrics of ``model`` on whole images of ``dataset`` (void pixels excluded), plus loss and images/s.

    Args:
        sizes: (height, width) of each image, to batch equal sizes together.
        names: class names, in class-index order.
        criterion: if given, its mean over batches is reported as ``loss``.
        distributed: under torchrun, each rank evaluates every world-th image and the confusion matrix (with
            the loss sums) is all-reduced once, so every rank returns the metrics of the whole dataset.
    """
    shard = current() if distributed else Dist()
    if shard.enabled:  # evaluate the model rank 0 saves: its BatchNorm statistics, not each rank's own
        broadcast_buffers(model)
    was_training = model.training
    model.eval()
    k = len(names)
    cm = torch.zeros(k, k, dtype=torch.int64, device=runtime.device)
    loss_sum, batches, images = torch.zeros((), device=runtime.device), 0, 0
    start = time.perf_counter()
    for x, y in eval_loader(dataset, sizes, batch_size, workers, shard.rank, shard.world):
        x, y = x.to(runtime.device, non_blocking=True), y.to(runtime.device, non_blocking=True)
        logits = forward_padded(model, x, runtime)
        if criterion is not None:
            loss_sum += criterion(logits, y)
        cm += confusion_matrix(logits.argmax(dim=1), y, k)
        batches += 1
        images += x.shape[0]
    if shard.enabled:  # one collective: confusion matrix, loss sum, batch and image counts (exact in float64)
        packed = torch.cat([cm.flatten().double(), loss_sum.double().reshape(1),
                            torch.tensor([batches, images], dtype=torch.float64, device=cm.device)])
        all_reduce_sum(packed)
        cm = packed[: k * k].round().long().reshape(k, k)
        loss_sum, batches, images = packed[k * k], int(packed[k * k + 1]), int(packed[k * k + 2])
    elapsed = time.perf_counter() - start
    model.train(was_training)
    result = metrics_from_confusion(cm.cpu(), names)
    result["loss"] = float(loss_sum) / max(batches, 1) if criterion is not None else None
    result["images"] = images
    result["images_per_second"] = images / elapsed if elapsed > 0 else None
    result["confusion_matrix"] = cm.cpu().tolist()
    return result


def evaluate_run(
    run_dir: Path, split: str = "val", data_root: Path | None = None, data_format: str | None = None,
    batch_size: int | None = None, device: str = "auto",
) -> dict[str, Any]:
    """Evaluate a run's best weights on ``split`` of its own data (or of ``data_root``), with its class table."""
    from pixelwise.data.build import build_eval_dataset, default_workers
    from pixelwise.inference.predictor import Segmenter, load_run_config

    cfg = load_run_config(run_dir)
    data_cfg = cfg.data if data_format is None else cfg.data.model_copy(update={"format": data_format})
    seg = Segmenter.load(run_dir, device=device)
    dataset, sizes = build_eval_dataset(data_cfg, split, seg.table, seg.channels, root=data_root)
    result = evaluate(seg.model, dataset, sizes, seg.table.names, seg.runtime, batch_size or cfg.train.eval_batch_size,
                      default_workers(cfg.data.num_workers))
    result["split"] = split
    result["run"] = str(run_dir)
    return result
