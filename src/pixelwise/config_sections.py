"""The sections of a configuration (data, augment, model, loss, optim, train) as pydantic models.

Pure schema, as ``config.py``: every model forbids unknown keys; names of components are checked later by
``validate.py``. ``config.py`` assembles them into ``Config`` and re-exports them.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from pixelwise.data.classes import ClassTable
from pixelwise.errors import ConfigError


class Strict(BaseModel):
    # Floats are finite everywhere (a NaN or infinite weight, rate or size is refused, not trained with).
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def _not_bool(kind: str) -> BeforeValidator:
    # YAML reads true/false, yes/no and on/off as booleans, which pydantic would take as 1 and 0.
    def check(v: Any) -> Any:
        if isinstance(v, bool):
            raise ValueError(f"{kind}, not true/false (YAML reads yes, no, on and off as true and false)")
        return v

    return BeforeValidator(check)


Int = Annotated[int, _not_bool("a whole number")]  # numeric fields: a boolean is refused, not read as 0 or 1
Float = Annotated[float, _not_bool("a number")]


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|hr)?\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600}


def parse_duration(text: str | float | int) -> float:
    """'15m' -> 900.0; '90s', '1.5h', plain numbers are seconds."""
    if isinstance(text, (int, float)):
        return float(text)
    match = _DURATION.match(str(text))
    if not match:
        raise ValueError(f"'{text}' is not a duration; write e.g. 90s, 15m or 1.5h")
    return float(match.group(1)) * _UNIT_SECONDS[(match.group(2) or "s").lower()]


def duration_text(seconds: float) -> str:
    """Seconds as a duration ``parse_duration`` reads back exactly: '600s', '2.5s', '1000000s' (never 1e+06s)."""
    seconds = float(seconds)
    if seconds.is_integer():
        return f"{int(seconds)}s"
    return f"{Decimal(repr(seconds)):f}s"  # fixed-point digits of the shortest exact form


class NotAboveZero(ValueError):
    """A duration that parses but is no time above zero (0, negative, NaN, infinite)."""


def seconds_above_zero(text: str | float | int) -> float:
    """``parse_duration``, refusing (ValueError) a time that is not finite and above zero."""
    seconds = parse_duration(text)
    if not (math.isfinite(seconds) and seconds > 0):
        raise NotAboveZero("a time above zero, e.g. 90s, 15m or 1.5h")
    return seconds


def positive_duration(text: str | float | int, option: str) -> float:
    """Seconds of a time given to ``option`` (e.g. '--time-budget'); a ConfigError naming it when ``text`` is no
    duration or not above zero."""
    try:
        return seconds_above_zero(text)
    except NotAboveZero:
        raise ConfigError(f"{option} {text}: give a time above zero, e.g. 90s, 15m or 1.5h") from None
    except ValueError as e:
        raise ConfigError(f"{option}: {e}") from None


def parse_hw(text: str) -> list[int]:
    """'360x480' -> [360, 480]: height x width, both at least 1."""
    try:
        h, w = (int(v) for v in str(text).lower().split("x"))
    except ValueError:
        raise ValueError(f"'{text}' is not a size; write HEIGHTxWIDTH, e.g. 360x480") from None
    if h < 1 or w < 1:
        raise ValueError(f"'{text}': height and width must be at least 1 pixel")
    return [h, w]


class DataConfig(Strict):
    root: Path | None = None
    format: str = "auto"  # auto (detected) or a name in data.formats.FORMATS (checked by validate.check_names)
    images: str | None = None  # folders: image folder name (auto: images, image, img, ...)
    masks: str | None = None  # folders: mask folder name (auto: masks, mask, labels, label, ...)
    classes: ClassTable | Path | None = None  # inline table, a classes file, or found/inferred
    train_split: str = "train"
    val_split: str | None = "val"
    val_fraction: Float = Field(0.2, ge=0.0, lt=1.0)  # used when the data has no val split
    split_seed: Int = 0
    # k-fold cross-validation (nnU-Net style): the training pool in ``folds`` seeded folds; ``fold`` validates,
    # the others train. Set by `pixelwise train --folds K`, one run per fold (data/splits.py).
    folds: Int | None = Field(None, ge=2)
    fold: Int | None = Field(None, ge=0)
    crop_size: tuple[Int, Int] = (320, 320)
    class_crops: Float = Field(0.0, ge=0, le=1)  # share of crops placed on a class drawn from the image's classes
    # Progressive crops: training starts on crops of crop_start x each side, growing to the full crop_size by
    # crop_ramp of the training (more steps per minute early on; engine/progressive.py)
    crop_start: Float = Field(1.0, gt=0, le=1)
    crop_ramp: Float = Field(0.5, gt=0, le=1)
    # Input channels: any count; auto: 8-bit images 1 (all gray) or 3 (any colour), other data as the files hold.
    channels: Int | Literal["auto"] = "auto"
    bands: list[Int] | None = None  # 1-based bands kept, in order, e.g. [4, 3, 2, 8]
    pages_as_channels: bool = False  # a multi-page TIFF is one image with a channel per page (else refused)
    channel_axis: Literal["auto", "last", "first"] = "auto"  # .npy images: HxWxC (last) or CxHxW (first)
    nan_fill: Float | None = None  # NaN/Inf pixels take this value; null: they are an error naming the file
    dtype: str | None = None  # the images' pixel type (written by training; evaluation refuses other types)
    cache: bool = True
    cache_max_gb: Float = Field(4.0, ge=0)
    num_workers: Int = Field(-1, ge=-1)  # -1: chosen from the machine
    max_image_pixels: Int = Field(200_000_000, ge=1)  # larger images are refused before decoding (bomb guard)

    @field_validator("format")
    @classmethod
    def _lower(cls, v: str) -> str:
        return v.lower()

    @field_validator("crop_size", mode="before")
    @classmethod
    def _square(cls, v: Any) -> Any:
        return (v, v) if isinstance(v, int) else v

    @field_validator("crop_size")
    @classmethod
    def _positive(cls, v: tuple[int, int]) -> tuple[int, int]:
        if min(v) < 8:
            raise ValueError("crop sides must be at least 8 pixels")
        return v

    @field_validator("nan_fill")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError("the fill value for NaN/Inf pixels must be a finite number")
        return v

    @field_validator("dtype")
    @classmethod
    def _pixel_type(cls, v: str | None) -> str | None:
        try:
            ok = v is None or np.dtype(v).kind in "uif"
        except TypeError:
            ok = False
        if not ok:
            raise ValueError("a numeric pixel type such as uint8, uint16, int16 or float32")
        return v

    @field_validator("channels")
    @classmethod
    def _some_channels(cls, v: int | str) -> int | str:
        if v != "auto" and not 1 <= v <= 4096:
            raise ValueError("a channel count from 1 up, or auto")
        return v

    @model_validator(mode="after")
    def _fold_of_folds(self) -> DataConfig:
        if self.fold is not None and self.folds is None:  # folds alone: a cross-validation parent's config
            raise ValueError("data.fold needs data.folds (e.g. folds: 5, fold: 0)")
        if self.fold is not None and self.fold >= self.folds:
            raise ValueError(f"data.fold counts from 0 to data.folds - 1 ({self.folds - 1}), got {self.fold}")
        return self

    @field_validator("bands")
    @classmethod
    def _bands_are_channels(cls, v: list[int] | None, info: ValidationInfo) -> list[int] | None:
        if v is not None and (not v or min(v) < 1):
            raise ValueError("band numbers count from 1 (the first band is 1, as in GDAL and QGIS)")
        channels = info.data.get("channels", "auto")
        if v and channels != "auto" and channels != len(v):
            raise ValueError(f"data.channels is {channels} but data.bands lists {len(v)} bands; leave data.channels "
                             "at auto (it follows the bands)")
        return v


class AugmentConfig(Strict):
    preset: Literal["none", "light", "default", "strong"] = "default"
    # Explicit albumentations transforms, e.g. [{name: HorizontalFlip, p: 0.5}]; replaces the preset's.
    # The final pad-and-crop to data.crop_size is always added.
    transforms: list[dict[str, Any]] | None = None


class ModelConfig(Strict):
    arch: str = "unet"
    encoder: str = "resnet18"
    # auto: ImageNet weights when an offline package, the Hugging Face cache or the hub has them, else random
    # initialisation (said, with the reason); imagenet: required; null: random; or a safetensors/state-dict file.
    encoder_weights: str | None = "auto"
    # A whole model to start from (encoder, decoder and head): a run directory, a .safetensors file or hf://USER/REPO.
    init_from: str | None = None
    in_channels: Int | Literal["auto"] = "auto"
    # auto: 'encoder' for 8-bit images (the encoder's pretraining statistics, on the 0-1 scale: pixel / 255),
    # 'zscore' for any other type (per-channel mean/std of the training pixels, in the data's own units, after
    # clipping to their 0.5-99.5th percentiles); 'none': the network sees the values as they are.
    normalization: Literal["auto", "encoder", "zscore", "none"] = "auto"
    # Per channel; null: resolved as above and written into the run's config.yaml.
    mean: list[Float] | None = None
    std: list[Float] | None = None
    clip: list[tuple[Float, Float]] | None = None  # zscore: per-channel [low, high] in the data's units
    options: dict[str, Any] = Field(default_factory=dict)  # passed to the architecture

    @model_validator(mode="after")
    def _normalisation(self) -> ModelConfig:
        if self.std is not None and min(self.std, default=1) <= 0:
            raise ValueError("model.std values must be above 0")
        if self.clip is not None and any(not low < high for low, high in self.clip):
            raise ValueError("model.clip holds [low, high] per channel with low < high")
        if self.clip is not None and self.normalization in ("encoder", "none"):
            raise ValueError(f"model.clip applies to zscore normalisation, not '{self.normalization}'")
        if self.normalization == "none" and (self.mean is not None or self.std is not None):
            raise ValueError("normalization: none passes values as they are; leave model.mean and model.std null")
        sizes = {len(v) for v in (self.mean, self.std, self.clip) if v is not None}
        if len(sizes) > 1:
            raise ValueError("model.mean, std and clip need one entry per input channel each")
        return self

    @field_validator("arch")
    @classmethod
    def _lower(cls, v: str) -> str:
        return v.lower()


class DistillConfig(Strict):
    # Knowledge distillation (engine/distill.py): the student also matches the teacher's softened class
    # probabilities, KL(teacher/T || student/T) * T^2, added with this weight to the ground-truth loss.
    teacher: Path  # the teacher's run directory (its config.yaml and best.safetensors)
    weight: Float = Field(1.0, gt=0)
    temperature: Float = Field(2.0, gt=0)
    pixels: Literal["all", "labelled"] = "all"  # all: void pixels are distilled too (the teacher labels them)


class LossConfig(Strict):
    # name -> weight. Default Dice: on CamVid (Unet-resnet18, 300 equal steps) it reached val mIoU 0.449 where
    # CE reached 0.339, CE+Dice 0.386, focal 0.352, MAE 0.292 and Lovász 0.443 (README, "Which loss").
    terms: dict[str, Float] = Field(default_factory=lambda: {"dice": 1.0})
    # Per-class weights: a list, or 'auto' = median-frequency balancing from the training masks (resolved to a
    # list in the run's config.yaml). Used by ce and bce, and by focal/dice/jaccard/tversky in multiclass mode.
    class_weights: list[Float] | Literal["auto"] | None = None
    label_smoothing: Float = Field(0.0, ge=0.0, lt=1.0)  # ce and bce
    mode: Literal["auto", "multiclass", "binary"] = "auto"  # auto: binary for two-class data
    focal_gamma: Float = Field(2.0, ge=0.0)
    tversky_alpha: Float = Field(0.3, ge=0.0)  # weight of false positives
    tversky_beta: Float = Field(0.7, ge=0.0)  # weight of false negatives
    distill: DistillConfig | None = None  # e.g. {teacher: runs/camvid-unet, weight: 1.0, temperature: 2.0}

    @field_validator("class_weights")
    @classmethod
    def _non_negative(cls, v: Any) -> Any:
        if isinstance(v, list) and (not v or min(v) < 0 or max(v) <= 0):
            raise ValueError("class weights must be non-negative with at least one above zero")
        return v

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        # `loss: dice` and `loss: {ce: 1.0, dice: 1.0}` are shorthands for `loss: {terms: ...}`.
        if isinstance(v, str):
            return {"terms": {v: 1.0}}
        if isinstance(v, dict) and v and not set(v) & set(cls.model_fields):
            return {"terms": v}
        return v

    @field_validator("terms")
    @classmethod
    def _some_terms(cls, v: dict[str, float]) -> dict[str, float]:
        if not v:
            raise ValueError("at least one loss term is needed")
        if min(v.values()) < 0 or max(v.values()) <= 0:  # a negative weight would train the term backwards
            raise ValueError("loss term weights must be non-negative with at least one above zero")
        return {k.lower(): w for k, w in v.items()}


class OptimConfig(Strict):
    # sgd, gd (full-batch gradient descent), adam, adamw, nadam, radam, adamax, rmsprop, adagrad, adadelta,
    # asgd, adafactor: see `pixelwise.optim.OPTIMIZERS`.
    name: str = "adamw"
    lr: Float = Field(1e-3, gt=0, allow_inf_nan=False)
    weight_decay: Float = Field(1e-4, ge=0)
    momentum: Float = Field(0.9, ge=0, lt=1)  # sgd
    nesterov: bool = False  # sgd
    options: dict[str, Any] = Field(default_factory=dict)  # passed to the torch optimizer, e.g. {betas: [0.9, 0.99]}
    encoder_lr_mult: Float = Field(1.0, gt=0)  # learning rate of the encoder relative to the rest (e.g. 0.1)
    scheduler: Literal["constant", "step", "poly", "cosine", "onecycle"] = "cosine"
    warmup: Float = Field(0.03, ge=0, lt=1)  # fraction of training spent warming up linearly (not onecycle)
    min_lr_ratio: Float = Field(0.01, ge=0, le=1)  # cosine and poly end at lr * min_lr_ratio
    poly_power: Float = Field(0.9, gt=0)
    step_milestones: list[Float] = Field(default_factory=lambda: [1 / 3, 2 / 3])  # fractions of training
    step_gamma: Float = Field(0.1, gt=0, le=1)

    @field_validator("step_milestones")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        if any(not 0 < m < 1 for m in v) or v != sorted(v):
            raise ValueError("milestones are increasing fractions of training between 0 and 1, e.g. [0.5, 0.75]")
        return v

    @field_validator("name")
    @classmethod
    def _lower(cls, v: str) -> str:
        return v.lower()


class EarlyStoppingConfig(Strict):
    patience: Int = Field(ge=1)  # evaluations without improvement before training stops
    min_delta: Float = Field(0.0, ge=0)  # val mIoU must rise by more than this to count as an improvement


class TrainConfig(Strict):
    epochs: Int = Field(50, ge=1)
    max_steps: Int | None = Field(None, ge=1)
    time_budget: str | None = None  # e.g. 15m; training stops at whichever rule comes first
    batch_size: Int = Field(8, ge=1)
    eval_batch_size: Int = Field(4, ge=1)
    eval_every: Int = Field(1, ge=1)  # epochs
    device: str = "auto"
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"
    channels_last: bool = True
    seed: Int = 0
    grad_clip: Float | None = Field(None, gt=0)  # max global gradient norm
    accumulate: Int = Field(1, ge=1)  # batches whose gradients are summed per optimizer step
    ema: Float | None = Field(None, gt=0, lt=1)  # decay of an exponential moving average of the weights
    early_stopping: EarlyStoppingConfig | None = None  # e.g. {patience: 5, min_delta: 0.001}
    nonfinite_loss: Literal["stop", "skip"] = "stop"  # NaN/Inf loss: stop, or skip the batch (10 in a row stop)
    sync_bn: bool = False  # torchrun: BatchNorm statistics over the global batch (SyncBatchNorm)
    # torch.compile the training forward/backward (measured: see DESIGN.md); true, or a torch.compile mode:
    # reduce-overhead (CUDA graphs: for small models whose GPU step is kernel launches), max-autotune, ...
    compile: bool | Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = False
    cudnn_benchmark: bool = True  # CUDA: cuDNN picks the fastest convolution algorithms by timing them
    deterministic: bool = False  # CUDA: bitwise-repeatable runs (deterministic kernels only; slower)
    tensorboard: bool = True  # RUN/tensorboard event files: scalars per epoch and a few val predictions
    report: bool = True  # RUN/report.html after training (best weights evaluated on the val split)
    # Experiment trackers: params, metrics per epoch, the report, plots, model and files (report/mlflow.py).
    track: list[Literal["mlflow", "wandb"]] = Field(default_factory=list)

    @field_validator("amp", mode="before")
    @classmethod
    def _amp_off(cls, v: Any) -> Any:
        # YAML reads a bare `off` (amp: off, --set train.amp=off) as false
        return "off" if v is False else v

    @field_validator("time_budget", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> Any:
        if v is None:
            return None
        if isinstance(v, bool):
            raise ValueError("a duration such as 90s, 15m or 1.5h, not true/false (null: no limit)")
        try:
            seconds = seconds_above_zero(v)
        except NotAboveZero as e:
            raise ValueError(f"{e} (null: no limit)") from None
        # a number is seconds, stored as text that reads back the same (-5, .nan or 1e6 never reach training)
        return str(v) if isinstance(v, str) else duration_text(seconds)

    @property
    def time_budget_seconds(self) -> float | None:
        return None if self.time_budget is None else parse_duration(self.time_budget)
