"""Everything a training loop needs, built from a validated config: data, network, loss, optimizer, loader.

``prepare`` is shared by ``Trainer`` and ``lr_find``. It also settles what the config left to the data (class
table, channels, normalisation, 'auto' class weights) and returns the config as it will run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pixelwise.config import Config, ModelConfig
from pixelwise.data.build import DataBundle, build_datasets, default_workers, require_crop_memory, train_loader
from pixelwise.data.classes import ClassTable
from pixelwise.engine.distributed import Dist, init_distributed
from pixelwise.engine.rng import seed_everything
from pixelwise.engine.runtime import Runtime, resolve_runtime
from pixelwise.errors import ConfigError, PixelwiseError
from pixelwise.losses import create_loss, median_frequency_weights
from pixelwise.models.factory import ARCHITECTURES, CUSTOM_ARCH, build_network, resolve_normalization, wrap_network
from pixelwise.models.init_from import load_init
from pixelwise.optim import create_optimizer
from pixelwise.progress import notice


@dataclass
class Parts:
    """Bring your own: datasets and/or a network used instead of the ones the config describes.

    ``train``/``val``: map-style Datasets yielding (image CxHxW, mask HxW of class indices, 255 = void); see
    ``pixelwise.data.custom``. ``network``: any ``nn.Module`` mapping (N, C, H, W) to (N, classes, H, W) logits.
    """

    train: Any = None
    val: Any = None
    network: nn.Module | None = None


def check_network_output(net: nn.Module, in_channels: int, classes: int, size: tuple[int, ...],
                         device: torch.device) -> None:
    """Run ``net`` once on a zero (1, in_channels, *size) image (eval mode, no gradients) and raise a
    PixelwiseError unless it returns (1, classes, *size) logits."""
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            out = net(torch.zeros(1, in_channels, *size, device=device))
    finally:
        net.train(was_training)
    h, w = size
    wanted = f"pixelwise needs (N, {classes}, {h}, {w}) logits, one channel per class"
    if not isinstance(out, torch.Tensor):
        raise PixelwiseError(f"your network returned a {type(out).__name__} for a (N, {in_channels}, {h}, {w}) "
                             f"input; {wanted}")
    if tuple(out.shape[1:]) != (classes, h, w):
        shown = ", ".join(str(n) for n in out.shape[1:])
        raise PixelwiseError(f"your network returned (N, {shown}) for a (N, {in_channels}, {h}, {w}) input; "
                             f"{wanted}")


@dataclass
class Prepared:
    """Everything a training loop needs, built from a validated config (shared by train and lr-find)."""

    cfg: Config  # resolved: class table, channels, normalisation and class weights written in
    data: DataBundle
    runtime: Runtime
    model: torch.nn.Module  # what the loop calls: the network, or DistributedDataParallel around it
    net: torch.nn.Module  # the network itself: saved, averaged (EMA) and evaluated
    criterion: torch.nn.Module
    optimizer: torch.optim.Optimizer
    workers: int
    loader: torch.utils.data.DataLoader
    sampler: Any
    dist: Dist


def set_cuda_determinism(deterministic: bool, benchmark: bool) -> None:
    """cuDNN/cuBLAS settings for a CUDA run (process-wide, as torch keeps them).

    Training crops have one size, so by default cuDNN times its algorithms once per shape (H200, Unet-resnet18,
    batch 8: 405-517 against 364-435 train images/s in two runs). The fastest algorithms are not bitwise
    reproducible (atomic additions in backward passes): ``train.deterministic`` trades that speed for runs that
    repeat exactly with the same seed, as they do on a CPU.
    """
    torch.backends.cudnn.benchmark = benchmark and not deterministic
    torch.backends.cudnn.deterministic = deterministic
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's condition for deterministic results
    torch.use_deterministic_algorithms(deterministic, warn_only=True)


def _custom_normalization(cfg: Config, data: DataBundle, in_channels: int, custom_network: bool) -> dict[str, Any]:
    """Normalisation for the user's own Dataset: float images are what the network should see (unless model.mean
    and model.std are given, in their units); uint8 pixels are scaled to 0-1 for the user's own network and
    normalised as the encoder was pretrained for a registered architecture."""
    if data.image_dtype.is_floating_point:
        if cfg.model.mean is None and cfg.model.std is None:
            notice("note", "your dataset gives float images: the network sees them as they are (set "
                   "model.mean and model.std, in the data's units, to normalise them)")
            return {"normalization": "none", "mean": None, "std": None}
        return {"normalization": "zscore"}
    if custom_network and cfg.model.mean is None and cfg.model.std is None:
        return {"normalization": "zscore", "mean": [0.0] * in_channels, "std": [255.0] * in_channels}
    return resolve_normalization(cfg.model, "uint8", None, in_channels)


def resolve_config(cfg: Config, data: DataBundle, custom_network: bool = False) -> Config:
    """The config as run: the class table, channels, pixel type and normalisation the data settled are written in."""
    channels = data.summary.channels
    in_channels = channels if cfg.model.in_channels == "auto" else cfg.model.in_channels
    if in_channels != channels:
        raise PixelwiseError(
            f"model.in_channels is {in_channels} but the images have {channels} channel(s); leave model.in_channels "
            f"at auto, or set data.channels: {in_channels} to convert the images"
        )
    dtype = data.summary.dtype
    if data.custom:
        norm = _custom_normalization(cfg, data, in_channels, custom_network)
    else:
        norm = resolve_normalization(cfg.model, dtype, data.pixel_samples() if dtype != "uint8" or
                                     cfg.model.normalization == "zscore" else None, in_channels)
    loss = cfg.loss
    if loss.class_weights == "auto":
        loss = loss.model_copy(update={"class_weights": auto_class_weights(data)})
    if loss.distill is not None:  # the run's config.yaml is read from its own folder later
        teacher = Path(loss.distill.teacher).expanduser().resolve()
        loss = loss.model_copy(update={"distill": loss.distill.model_copy(update={"teacher": teacher})})
    model = {"in_channels": in_channels, **norm}
    if cfg.model.encoder_weights == "auto" and not custom_network and cfg.model.init_from is None:
        model["encoder_weights"] = auto_weights(cfg.model)  # what was decided is written into config.yaml
    elif cfg.model.encoder_weights == "auto":  # your own network, or a whole model loaded over it
        model["encoder_weights"] = None
    elif cfg.model.encoder_weights not in (None, "imagenet"):  # a file: the config.yaml is read from its folder
        model["encoder_weights"] = str(Path(cfg.model.encoder_weights).expanduser().resolve())
    source = cfg.model.init_from
    if source is not None and not source.startswith("hf://"):  # absolute: the run's config.yaml says where it began
        model["init_from"] = str(Path(source).expanduser().resolve())
    if custom_network:
        model["arch"] = CUSTOM_ARCH
    return cfg.model_copy(update={
        "data": cfg.data.model_copy(update={"classes": data.summary.table, "channels": channels, "dtype": dtype,
                                            "root": cfg.data.root.resolve() if cfg.data.root else None}),
        "model": cfg.model.model_copy(update=model),
        "loss": loss,
    })


def auto_weights(cfg: ModelConfig) -> str | None:
    """``model.encoder_weights: auto`` settled (imagenet when available), with a note saying which and why."""
    from pixelwise.models.pretrained import resolve_auto

    uses_encoder = cfg.arch in ARCHITECTURES and ARCHITECTURES.get(cfg.arch).uses_encoder
    weights, why = resolve_auto(cfg.encoder, uses_encoder)
    if uses_encoder:
        notice("note", why)
    return weights


def auto_class_weights(data: DataBundle) -> list[float]:
    """Median-frequency class weights from the training masks, printed so the user sees what was chosen."""
    if data.custom:
        raise PixelwiseError("loss.class_weights: auto counts the pixels of the checked mask files; with your own "
                             "Dataset give the weights as a list, one per class")
    counts = np.stack([data.summary.image_class_pixels[str(p.image)] for p in data.train.pairs])
    weights = [round(float(w), 4) for w in median_frequency_weights(counts)]
    names = data.summary.table.names
    shown = ", ".join(f"{n} {w:g}" for n, w in zip(names, weights, strict=True))
    absent = [n for n, c in zip(names, counts.sum(axis=0), strict=True) if c == 0]
    extra = f" ({', '.join(absent)} absent from the training masks: weight 1)" if absent else ""
    notice("note", f"loss.class_weights auto (median frequency): {shown}{extra}")
    return weights


def dataset_stats(data: DataBundle) -> dict[str, Any]:
    """Images and labelled pixels per class of each split (dataset.json: the report's class frequencies)."""
    per_image = data.summary.image_class_pixels
    stats: dict[str, Any] = {"classes": data.summary.table.names}
    for split, dataset in (("train", data.train), ("val", data.val)):
        if dataset is not None:
            stats[split] = {"images": len(dataset)}
            if not data.custom:
                counts = np.sum([per_image[str(p.image)] for p in dataset.pairs], axis=0)
                stats[split]["class_pixels"] = [int(c) for c in counts]
    return stats


def prepare(cfg: Config, parts: Parts | None = None, resume: bool = False) -> Prepared:
    """Check the data, then build the model, loss, optimizer and loader the config describes.

    ``resume``: the weights come from the run's last.ckpt next, so ``model.init_from`` is not read (its source may
    have moved or be offline by now, and its weights would be replaced anyway).

    Under torchrun every rank runs this: same seed, same checks, same initial weights (DDP also broadcasts
    rank 0's), then its own share of the training data.
    """
    from pixelwise.data.custom import custom_bundle
    from pixelwise.validate import check_names

    check_names(cfg)  # a misspelt name fails before the data scan
    parts = parts or Parts()
    dist = init_distributed(cfg.train.device)
    seed_everything(cfg.train.seed)
    if parts.train is not None:
        table = cfg.data.classes
        data = custom_bundle(parts.train, parts.val, ClassTable.from_file(table) if isinstance(table, Path) else table)
    elif parts.val is not None:
        raise PixelwiseError("a validation Dataset needs a training Dataset too (train_data=...)")
    else:
        data = build_datasets(cfg.data, cfg.augment, cfg.train.seed)
    for note in data.notes:
        notice("note", note)
    for warning in data.warnings:
        notice("warning", warning)
    cfg = resolve_config(cfg, data, custom_network=parts.network is not None)
    table = data.summary.table
    runtime = resolve_runtime(cfg.train.device, cfg.train.amp, cfg.train.channels_last)
    if dist.enabled and runtime.device.type == "cuda":
        runtime = replace(runtime, device=torch.device("cuda", dist.local_rank))
    if not data.custom:
        require_crop_memory(cfg.data, data.summary.channels, table.num_classes, cfg.train.batch_size,
                            str(runtime.device))
    if parts.network is not None:
        model = wrap_network(parts.network, cfg.model, cfg.model.in_channels)
    else:
        model = build_network(cfg.model, cfg.model.in_channels, table.num_classes)
    if cfg.model.init_from is not None and not resume:  # the whole model (its head re-initialised if it differs)
        # a network the config built must be the source's; your own is checked by its weights alone
        same = (cfg.model.arch, cfg.model.encoder) if parts.network is None else (None, None)
        load_init(model, cfg.model.init_from, table.names, *same)
    if parts.network is None and cfg.train.batch_size < ARCHITECTURES.get(cfg.model.arch).min_batch:
        raise ConfigError(f"'{cfg.model.arch}' needs train.batch_size of at least "
                          f"{ARCHITECTURES.get(cfg.model.arch).min_batch} (its BatchNorm after global pooling sees "
                          "one value a channel with one image); raise train.batch_size")
    if not data.custom and min(cfg.data.crop_size) < model.min_size:
        raise PixelwiseError(f"'{cfg.model.arch}' needs inputs of at least {model.min_size} pixels a side; "
                             f"raise data.crop_size (now {list(cfg.data.crop_size)})")
    memory_format = torch.channels_last if runtime.channels_last else torch.preserve_format
    net = model.to(runtime.device, memory_format=memory_format)
    if parts.network is not None:  # a user's network: its output shape is checked once, not deep inside the losses
        size = tuple(data.train[0][0].shape[-2:]) if data.custom else tuple(cfg.data.crop_size)
        check_network_output(net, cfg.model.in_channels, table.num_classes, size, runtime.device)
    if dist.enabled and cfg.train.sync_bn:
        net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
    model = net
    if dist.enabled:
        ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(net, device_ids=ids)
    if runtime.device.type == "cuda":
        set_cuda_determinism(cfg.train.deterministic, cfg.train.cudnn_benchmark)
    if cfg.train.compile:  # the loop calls the compiled module; saving, EMA and evaluation use the bare network
        model = torch.compile(model, mode=None if cfg.train.compile is True else cfg.train.compile)
    criterion = create_loss(cfg.loss, table.num_classes).to(runtime.device)
    if cfg.loss.distill is not None:  # the teacher, loaded once; each rank runs its own copy, never inside DDP
        from pixelwise.engine.distill import with_teacher

        criterion = with_teacher(criterion, cfg.loss.distill, table, cfg.model.in_channels, cfg.data.dtype, runtime)
    if criterion.unweighted:
        notice("note", f"loss.class_weights do not apply to {', '.join(criterion.unweighted)} "
               "(they weight ce and bce, and focal/dice/jaccard/tversky in multiclass mode)")
    optimizer = create_optimizer(net, cfg.optim)
    workers = default_workers(cfg.data.num_workers)
    collate = None
    if data.custom:  # the user's items: a batch of different sizes is said in words, not by torch.stack
        from pixelwise.data.custom import same_size_collate as collate
    loader, sampler = train_loader(data.train, cfg.train.batch_size, workers, cfg.train.seed,
                                   pin_memory=runtime.device.type == "cuda", rank=dist.rank, world=dist.world,
                                   collate_fn=collate)
    return Prepared(cfg, data, runtime, model, net, criterion, optimizer, workers, loader, sampler, dist)
