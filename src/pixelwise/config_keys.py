"""Every config key with its default and a one-line description: ``pixelwise config`` prints them as YAML.

The defaults are read from the schema (``config.Config``); the descriptions are this table, which
``tests/test_first_hour.py`` holds to the schema key for key. No torch.
"""

from __future__ import annotations

import textwrap
from typing import Any

import yaml

from pixelwise.config import SECTIONS, Config

DESCRIPTIONS: dict[str, str] = {
    "name": "Run name: the run directory is runs/NAME. null: DATASET-ARCH-ENCODER (e.g. camvid-unet-resnet18); "
            "when runs/NAME holds a run already, NAME-2, NAME-3, ... (--out DIR: exactly DIR).",
    # data
    "data.root": "Dataset folder (or a list file of pairs). Relative paths in a config file are read from the "
                 "file's folder, on the command line from the working folder.",
    "data.format": "Dataset layout: auto (detected), folders, camvid, voc, cityscapes, coco or list.",
    "data.images": "folders layout: the image folder's name (null: images, image, img, ... are tried).",
    "data.masks": "folders layout: the mask folder's name (null: masks, mask, labels, label, ... are tried).",
    "data.classes": "Class table: inline {names: [...], colors: ..., void: ...}, a classes file (relative to the "
                    "config's folder, else the dataset's), or null: found beside the data or inferred from masks.",
    "data.train_split": "Name of the training split.",
    "data.val_split": "Name of the validation split (null: none; data.val_fraction is held out).",
    "data.val_fraction": "Share of the training images held out for validation when the data has no val split.",
    "data.split_seed": "Seed of that held-out selection (and of the k-fold assignment).",
    "data.folds": "k-fold cross-validation: the training pool in this many seeded folds (train --folds K).",
    "data.fold": "The fold that validates (0 to data.folds - 1); the other folds train.",
    "data.crop_size": "Training crop, [height, width] or one number for a square (smaller images are padded).",
    "data.class_crops": "Share of training crops placed on a pixel of a class drawn uniformly from the image's "
                        "classes (rare classes seen as often as common ones; 0: every crop uniform).",
    "data.crop_start": "Progressive crops: each side of the first training crops, as a fraction of data.crop_size "
                       "(1: full size from the start).",
    "data.crop_ramp": "Progressive crops: the share of training after which crops have reached data.crop_size.",
    "data.channels": "Input channels: auto (8-bit images: 1 if all are gray, else 3; other data as stored) or a "
                     "count.",
    "data.bands": "1-based bands kept, in order, e.g. [4, 3, 2, 8] (null: all).",
    "data.pages_as_channels": "A multi-page TIFF is one image with a channel per page (otherwise refused).",
    "data.channel_axis": ".npy images: auto, last (HxWxC) or first (CxHxW).",
    "data.nan_fill": "NaN/Inf pixels take this value (null: they are an error naming the file).",
    "data.dtype": "The images' pixel type, written by training (evaluation refuses other types).",
    "data.cache": "Keep the decoded images in memory, in their own pixel type (the check before training fills it).",
    "data.cache_max_gb": "Largest in-memory cache, GB.",
    "data.num_workers": "Data loader processes (-1: chosen from the machine).",
    "data.max_image_pixels": "Larger images are refused before they are decoded (decompression-bomb guard).",
    # augment
    "augment.preset": "Augmentation preset: none, light, default or strong (pixelwise data preview shows it).",
    "augment.transforms": "Explicit albumentations transforms, e.g. [{name: HorizontalFlip, p: 0.5}], replacing the "
                          "preset's (the final pad-and-crop to data.crop_size is always added).",
    # model
    "model.arch": "Architecture (pixelwise models): unet, unetplusplus, fpn, deeplabv3plus, ..., seed_cnn, reseg.",
    "model.encoder": "Encoder: an smp name (resnet18, efficientnet-b0, ...) or tu-<timm model> (pixelwise models "
                     "--encoders).",
    "model.encoder_weights": "Pretrained encoder: auto (ImageNet when available, else from scratch), imagenet, null, "
                             "or a safetensors/state-dict file.",
    "model.init_from": "Start from a whole model (fine-tuning): a run directory, a .safetensors file or hf://USER/REPO.",
    "model.in_channels": "Network input channels (auto: the data's).",
    "model.normalization": "auto (8-bit: the encoder's pretraining statistics; other types: zscore), encoder, "
                           "zscore (per-channel, from the training pixels) or none.",
    "model.mean": "Per-channel mean (null: resolved from model.normalization and written into the run).",
    "model.std": "Per-channel standard deviation (null: resolved as model.mean).",
    "model.clip": "zscore: per-channel [low, high] in the data's units (null: 0.5-99.5th percentiles).",
    "model.options": "Passed to the architecture, e.g. {decoder_channels: [128, 64, 32, 16, 16]}.",
    # loss
    "loss.terms": "Loss name -> weight, summed: ce, bce, dice, jaccard, tversky, focal, lovasz, mae, mse "
                  "(`loss: dice` is short for {terms: {dice: 1.0}}).",
    "loss.class_weights": "Per-class weights, a list, or auto (median frequency from the training masks).",
    "loss.label_smoothing": "Label smoothing of ce and bce.",
    "loss.mode": "auto (binary for two-class data), multiclass or binary.",
    "loss.focal_gamma": "Focusing exponent of the focal loss.",
    "loss.tversky_alpha": "Tversky: weight of false positives.",
    "loss.tversky_beta": "Tversky: weight of false negatives.",
    "loss.distill": "Knowledge distillation from a trained run, e.g. {teacher: runs/camvid-unet, weight: 1.0, "
                    "temperature: 2.0, pixels: all}: adds weight * T^2 * KL(teacher || student) of the "
                    "T-softened class probabilities (pixels: all, or labelled only) (null: off).",
    # optim
    "optim.name": "Optimizer: adamw, adam, sgd, gd (full batch), nadam, radam, rmsprop, adafactor, ...",
    "optim.lr": "Learning rate (pixelwise lr-find suggests one).",
    "optim.weight_decay": "Weight decay of convolution and linear weights (not of norms and biases).",
    "optim.momentum": "sgd: momentum.",
    "optim.nesterov": "sgd: Nesterov momentum.",
    "optim.options": "Passed to the torch optimizer, e.g. {betas: [0.9, 0.99]}.",
    "optim.encoder_lr_mult": "Learning rate of the encoder relative to the rest (e.g. 0.1 for a pretrained one).",
    "optim.scheduler": "Learning-rate schedule: constant, step, poly, cosine or onecycle.",
    "optim.warmup": "Share of training spent warming up linearly (not onecycle).",
    "optim.min_lr_ratio": "cosine and poly end at optim.lr times this.",
    "optim.poly_power": "poly: exponent.",
    "optim.step_milestones": "step: the fractions of training at which the rate drops.",
    "optim.step_gamma": "step: factor of each drop.",
    # train
    "train.epochs": "Passes over the training images (training stops at the first of epochs, max_steps, "
                    "time_budget, early stopping).",
    "train.max_steps": "Optimizer steps at most (null: no limit).",
    "train.time_budget": "Training time at most, e.g. 90s, 15m, 1.5h (null: no limit).",
    "train.batch_size": "Training images per step (per process under torchrun).",
    "train.eval_batch_size": "Validation images per forward pass.",
    "train.eval_every": "Evaluate on the val split every this many epochs.",
    "train.device": "cpu, cuda, cuda:1, mps, or auto (a CUDA GPU, else Apple's MPS, else the CPU).",
    "train.amp": "Autocast: auto (bf16 on GPUs and on CPUs that compute it natively, not under a ONEDNN_MAX_CPU_ISA "
                 "limit below AVX512_CORE_BF16), bf16, fp16 (CUDA) or off.",
    "train.channels_last": "channels_last memory format (faster convolutions on CPUs and recent GPUs).",
    "train.seed": "Seed of weights, sampling and augmentation.",
    "train.grad_clip": "Largest global gradient norm (null: no clipping).",
    "train.accumulate": "Batches whose gradients are summed per optimizer step.",
    "train.ema": "Decay of an exponential moving average of the weights, e.g. 0.999 (null: off).",
    "train.early_stopping": "e.g. {patience: 5, min_delta: 0.001}: stop after `patience` evaluations without val "
                            "mIoU rising by more than min_delta (null: off).",
    "train.nonfinite_loss": "NaN/Inf loss: stop, or skip the batch (10 in a row stop).",
    "train.sync_bn": "torchrun: BatchNorm statistics over the global batch.",
    "train.compile": "torch.compile the training step: true, or a mode (reduce-overhead: CUDA graphs).",
    "train.cudnn_benchmark": "CUDA: cuDNN times its convolution algorithms and keeps the fastest.",
    "train.deterministic": "CUDA: bitwise-repeatable runs (deterministic kernels only; slower).",
    "train.tensorboard": "Write RUN/tensorboard event files (the tensorboard extra: pip install "
                         "'pixelwise[tensorboard]').",
    "train.report": "Write RUN/report.html after training.",
    "train.track": "Experiment trackers: [mlflow] (sqlite:///mlflow.db unless MLFLOW_TRACKING_URI; pip install "
                   "'pixelwise[tracking]') and/or wandb (pip install 'pixelwise[wandb]').",
}


def schema_keys() -> list[str]:
    """Every dotted key of the schema, in its order (a section's keys after the section)."""
    keys = []
    for name in Config.model_fields:
        keys += [f"{name}.{k}" for k in SECTIONS[name].model_fields] if name in SECTIONS else [name]
    return keys


def _value(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).removesuffix("...\n").strip()


def reference_yaml(prefix: str = "") -> str:
    """The defaults as a YAML config, each key under its description as a comment; keys starting with ``prefix``."""
    defaults = Config().model_dump(mode="json")
    lines: list[str] = []
    section = None
    for key in (k for k in schema_keys() if k.startswith(prefix)):
        head, _, leaf = key.rpartition(".")
        if head and head != section:
            lines += ["", f"{head}:"]
            section = head
        indent = "  " if head else ""
        lines += [f"{indent}# {line}" for line in textwrap.wrap(DESCRIPTIONS[key], 116 - len(indent))]
        value = defaults[head][leaf] if head else defaults[leaf]
        lines.append(f"{indent}{leaf}: {_value(value)}")
    return "\n".join(lines).strip("\n") + "\n"
