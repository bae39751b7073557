"""From a data config to checked datasets and loaders."""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from pixelwise.config import AugmentConfig, DataConfig
from pixelwise.data.checks import DataSummary, check_pairs, crop_warnings
from pixelwise.data.classes import IGNORE, ClassTable
from pixelwise.data.dataset import DecodedCache, SegmentationDataset, set_max_pixels, spec_of
from pixelwise.data.formats import check_orphans, discover, select_split
from pixelwise.data.normalization import zscore
from pixelwise.data.splits import plan_splits
from pixelwise.data.transforms import train_transform
from pixelwise.errors import PixelwiseError
from pixelwise.memory import require_memory


@dataclass
class DataBundle:
    """Checked train and validation datasets with what the checks learnt."""

    train: SegmentationDataset
    val: SegmentationDataset | None
    summary: DataSummary
    val_sizes: list[tuple[int, int]]
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # trainable, but probably not what was meant
    custom: bool = False  # the user's own Dataset objects (``data.custom``): no files, no per-image class counts
    image_dtype: torch.dtype = torch.uint8  # with the user's own Dataset: the type its images come in

    def pixel_samples(self) -> np.ndarray:
        """(n, C) pixels sampled from the training images by the checks: the data's per-channel statistics."""
        samples = self.summary.samples
        return np.concatenate([samples[str(p.image)] for p in self.train.pairs if str(p.image) in samples])


def release_free_memory() -> None:
    """Hand memory freed by the checks back to the OS (glibc keeps freed heap in its per-thread arenas).

    Decoding every file in a thread pool leaves the decoders' freed buffers scattered over several arenas; without
    this they stay in the process's resident size for the whole run (and count against peak memory).
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
        pass


def _cache(cfg: DataConfig) -> DecodedCache | None:
    return DecodedCache(int(cfg.cache_max_gb * 2**30)) if cfg.cache else None


def build_datasets(data: DataConfig, augment: AugmentConfig, seed: int = 0) -> DataBundle:
    """Discover, split and check the data; the train set gets the augmentation pipeline."""
    set_max_pixels(data.max_image_pixels)
    layout = discover(data)
    plan = plan_splits(layout.splits, data, layout.root)  # the same decision `pixelwise check` shows
    train_pairs, val_pairs = plan.train, plan.val
    notes = [*layout.notes, *check_orphans(layout), *plan.notes, plan.summary()]
    cache = _cache(data)
    summary = check_pairs(train_pairs + val_pairs, layout.classes, spec_of(data), cache)
    release_free_memory()
    notes += summary.notes
    warnings = crop_warnings([summary.sizes[str(p.image)] for p in train_pairs], data.crop_size)
    train = SegmentationDataset(train_pairs, summary.table, summary.spec, None, cache, seed)
    val = SegmentationDataset(val_pairs, summary.table, summary.spec, None, cache) if val_pairs else None
    bundle = DataBundle(train, val, summary, [summary.sizes[str(p.image)] for p in val_pairs], notes, warnings)
    # 8-bit data: albumentations' 0-255 photometric transforms; any other type: intensity changes scaled to each
    # channel's robust range (0.5-99.5th percentile of the training pixels), never clipped to a type's range
    ranges = None if summary.dtype == "uint8" else zscore(bundle.pixel_samples()).clip
    train.transform = train_transform(data.crop_size, IGNORE, summary.channels, augment.preset, augment.transforms,
                                      seed, ranges, data.class_crops)
    return bundle


def require_crop_memory(data: DataConfig, channels: int, classes: int, batch_size: int, device: str = "cpu") -> None:
    """Refuse a crop (x batch) whose own arrays cannot fit, before the first sample is padded to it.

    Lower bound per crop pixel: the padded uint8 sample and mask twice (augmented, then batched), the float
    input, and the logits with their gradient and the loss's softmax (4 bytes per class each); the network's
    activations come on top. A crop side of 20000 at batch 8 needs more than 400 GiB this way.
    """
    pixels = batch_size * data.crop_size[0] * data.crop_size[1]
    host = pixels * 2 * (channels + 1)
    compute = pixels * (4 * channels + 3 * 4 * classes)
    fix = (f"lower data.crop_size (now {data.crop_size[0]}x{data.crop_size[1]})"
           + (f" or train.batch_size (now {batch_size})" if batch_size > 1 else ""))
    what = f"a batch of {batch_size} crops of {data.crop_size[0]}x{data.crop_size[1]}"
    if device.startswith("cuda"):
        require_memory(host, what, fix)
        require_memory(compute, what, fix, device)
    else:
        require_memory(host + compute, what, fix)


def build_eval_dataset(
    data: DataConfig, split: str, table: ClassTable, channels: int, root: Path | None = None
) -> tuple[SegmentationDataset, list[tuple[int, int]]]:
    """A checked, untransformed dataset of one split, read with the run's class table, channels, bands and pixel
    type (``data.dtype``: images of another type than the model was trained on are refused)."""
    set_max_pixels(data.max_image_pixels)
    layout = discover(data, root)
    pairs, _ = select_split(layout, data, split)
    cache = _cache(data)
    summary = check_pairs(pairs, table, spec_of(data, channels), cache, label=f"Checking {split}")
    release_free_memory()
    return SegmentationDataset(pairs, table, summary.spec, None, cache), [summary.sizes[str(p.image)] for p in pairs]


def default_workers(requested: int) -> int:
    """Loader processes for ``data.num_workers: -1``, from the cores this process may use.

    Two cores or fewer: none. With decoded images cached, loading is only augmentation, and a worker process
    competes with the two compute threads and costs its own memory (CamVid, Unet-resnet18, 2 cores: 4.94 train
    images/s and 2163 MiB peak in-process against 4.76 and 2418 MiB with one worker). Up to 4 cores: one worker
    overlaps decoding and augmentation with compute; more: half the cores, at most 8.
    """
    if requested >= 0:
        return requested
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if cpus <= 2:
        return 0
    return 1 if cpus <= 4 else min(8, cpus // 2)


class EpochSampler(torch.utils.data.Sampler[tuple[int, int]]):
    """Shuffles by (seed, epoch) and yields (epoch, index), so the dataset can seed each sample's augmentation.

    Order and augmentations then depend only on (seed, epoch, index): the same with any number of loader
    workers, with persistent workers, and after a resume. Under data parallelism (``world`` > 1) torch's
    DistributedSampler deals each rank its share of one shuffled order (padded to equal shares).
    """

    def __init__(self, n: int, seed: int, rank: int = 0, world: int = 1) -> None:
        self.n, self.seed, self.epoch, self.rank, self.world = n, seed, 0, rank, world

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        if self.world == 1:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        else:
            share = DistributedSampler(range(self.n), num_replicas=self.world, rank=self.rank, shuffle=True,
                                       seed=self.seed)
            share.set_epoch(self.epoch)
            order = list(share)
        return iter([(self.epoch, int(i)) for i in order])

    def __len__(self) -> int:
        return self.n if self.world == 1 else -(-self.n // self.world)


def train_loader(dataset: SegmentationDataset, batch_size: int, workers: int, seed: int,
                 pin_memory: bool = False, rank: int = 0, world: int = 1,
                 collate_fn: Any = None) -> tuple[DataLoader, EpochSampler]:
    """The training loader (persistent workers) and its sampler; call ``sampler.set_epoch(e)`` each epoch.

    ``batch_size`` is per process; each of ``world`` processes reads its own share of every epoch.
    ``collate_fn``: DataLoader's (None: torch's default).
    """
    sampler = EpochSampler(len(dataset), seed, rank, world)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=len(sampler) >= batch_size,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=pin_memory,
        collate_fn=collate_fn,
    )
    return loader, sampler


class SizeGroupedBatches(torch.utils.data.Sampler[list[int]]):
    """Batches of indices whose images share one size, so they stack without resizing (evaluation)."""

    def __init__(self, sizes: list[tuple[int, int]], batch_size: int, indices: list[int] | None = None) -> None:
        if batch_size < 1:  # a range with a step below 1 would batch nothing: an evaluation of no image at all
            raise PixelwiseError(f"the evaluation batch size must be at least 1 (got {batch_size}; "
                                 "--batch-size, train.eval_batch_size)")
        groups: dict[tuple[int, int], list[int]] = {}
        for i in range(len(sizes)) if indices is None else indices:
            groups.setdefault(tuple(sizes[i]), []).append(i)
        self.batches = [idx[i : i + batch_size] for idx in groups.values() for i in range(0, len(idx), batch_size)]

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def eval_loader(dataset: Dataset, sizes: list[tuple[int, int]], batch_size: int, workers: int,
                rank: int = 0, world: int = 1) -> DataLoader:
    """Whole images batched by size; with ``world`` > 1, this rank's images only (every ``world``-th)."""
    indices = None if world == 1 else list(range(rank, len(sizes), world))
    return DataLoader(dataset, batch_sampler=SizeGroupedBatches(sizes, batch_size, indices), num_workers=workers)
