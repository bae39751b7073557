"""Your own ``torch.utils.data.Dataset`` as training or validation data.

The contract: ``dataset[i]`` gives ``(image, mask)``, the image a (C, H, W) tensor or array (uint8 pixels, or float
values the network should see as they are), the mask an (H, W) integer array of class indices 0..K-1 with 255 for
void (ignored by losses and metrics). Training images must share one size per batch (crop them in the dataset);
validation images may differ in size: they are grouped by size into batches, which is why the validation set
is read once when training starts.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from pixelwise.data.build import DataBundle
from pixelwise.data.checks import DataSummary
from pixelwise.data.classes import IGNORE, ClassTable
from pixelwise.errors import PixelwiseError


def _check_mask(mask: torch.Tensor, where: str, num_classes: int) -> None:
    """Integer class indices 0..K-1 or void: anything else would be wrapped by the cast to uint8, or left out of
    the metrics, without a word."""
    if mask.is_floating_point() or mask.dtype == torch.bool or mask.is_complex():
        raise PixelwiseError(f"{where}: masks must hold integer class indices, got {mask.dtype}")
    bad = (mask < 0) | ((mask >= num_classes) & (mask != IGNORE))
    if bad.any():
        raise PixelwiseError(f"{where}'s mask holds {torch.unique(mask[bad]).tolist()[:5]}, outside the "
                             f"{num_classes} classes (0..{num_classes - 1}, {IGNORE} = void)")


def _pair(item: Any, where: str, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One item as (image tensor, mask tensor), refused by name unless it is a (C, H, W) image and its (H, W) mask of
    class indices."""
    try:
        image, mask = item
    except (TypeError, ValueError):
        raise PixelwiseError(f"{where} must be a pair (image CxHxW, mask HxW)") from None
    image, mask = torch.as_tensor(np.asarray(image)), torch.as_tensor(np.asarray(mask))
    if image.ndim != 3 or mask.ndim != 2 or tuple(image.shape[1:]) != tuple(mask.shape):
        raise PixelwiseError(f"{where} gives an image of shape {tuple(image.shape)} and a mask of shape "
                             f"{tuple(mask.shape)}; expected (C, H, W) and (H, W)")
    _check_mask(mask, where, num_classes)
    return image, mask


class _AsTensors(Dataset):
    """Items as (image tensor, uint8 mask tensor), whatever array types the user's dataset returns; every item is
    checked as it is read (``_pair``; the image's channels and type against the first training item's), not only
    the first: a later item that differed would otherwise fail deep inside torch, or its mask be misread."""

    def __init__(self, dataset: Dataset, name: str, num_classes: int, like: torch.Tensor) -> None:
        self.dataset, self.name, self.num_classes = dataset, name, num_classes
        self.channels, self.dtype = int(like.shape[0]), like.dtype

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(index, tuple):  # pixelwise's EpochSampler yields (epoch, index)
            index = index[1]
        where = f"{self.name} dataset[{index}]"
        image, mask = _pair(self.dataset[index], where, self.num_classes)
        if image.shape[0] != self.channels or image.dtype != self.dtype:
            raise PixelwiseError(f"{where} gives a {image.shape[0]}-channel {image.dtype} image; the training "
                                 f"dataset's first item is {self.channels}-channel {self.dtype}")
        return image, mask.to(torch.uint8)


def same_size_collate(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
    """The default collate, after saying in words when a batch's training items differ in size."""
    sizes = sorted({tuple(image.shape[1:]) for image, _ in batch})
    if len(sizes) > 1:
        listed = ", ".join(f"{h}x{w}" for h, w in sizes)
        raise PixelwiseError(f"training dataset: items of one batch differ in size ({listed}); training images "
                             "must share one size per batch: crop them in the dataset, or set train.batch_size: 1")
    return torch.utils.data.default_collate(batch)


def _length(dataset: Dataset, name: str) -> int:
    try:
        size = len(dataset)  # type: ignore[arg-type]
    except TypeError:
        raise PixelwiseError(f"{name} dataset: it has no len(); pixelwise needs a map-style Dataset") from None
    if size == 0:
        raise PixelwiseError(f"{name} dataset: it is empty")
    return size


def custom_bundle(train: Dataset, val: Dataset | None, table: ClassTable | None) -> DataBundle:
    """Wrap user datasets as the trainer's data; ``table`` (``data.classes``) names the classes."""
    if table is None:
        raise PixelwiseError("with your own Dataset, name the classes: classes=['background', 'cell', ...] "
                             "(or data.classes in the config)")
    _length(train, "training")
    image, _ = _pair(train[0], "training dataset[0]", table.num_classes)
    channels = int(image.shape[0])
    notes = [f"training on your dataset ({len(train)} items, {channels} channel(s), {image.dtype})"]  # type: ignore[arg-type]
    val_sizes: list[tuple[int, int]] = []
    checked_val = None
    if val is not None:
        checked_val = _AsTensors(val, "validation", table.num_classes, image)  # read once here: every item checked now
        val_sizes = [tuple(checked_val[i][1].shape) for i in range(_length(val, "validation"))]  # type: ignore[misc]
        notes.append(f"validating on your dataset ({len(val_sizes)} items)")  # type: ignore[arg-type]
    summary = DataSummary(channels=channels, table=table, sizes={}, class_pixels=np.zeros(table.num_classes),
                          void_pixels=0, dtype="uint8" if image.dtype == torch.uint8 else "float32")
    return DataBundle(_AsTensors(train, "training", table.num_classes, image), checked_val,  # type: ignore[arg-type]
                      summary, val_sizes, notes, custom=True, image_dtype=image.dtype)
