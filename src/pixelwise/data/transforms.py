"""Albumentations pipelines built from the config. Masks always use nearest-neighbour interpolation.

Training: the preset's (or the explicit list's) transforms, then pad-if-needed (void in the mask) and a
random crop to ``data.crop_size`` (with ``data.class_crops`` > 0, that share of crops is placed on a pixel of a
class drawn uniformly from those in the image, so rare classes are seen as often as common ones). Evaluation and
prediction are deterministic and need no pipeline: images are padded to the network stride inside ``inference``.

Geometric transforms work on any channel count and type (OpenCV warps more than 4 channels in chunks). For
8-bit images the presets use albumentations' photometric transforms; for any other type (16-bit, signed,
float) those would clip to 0-255 or 0-1, so the presets use ``RangeIntensity`` and ``RangeNoise`` instead:
brightness, contrast, gamma and noise scaled to each channel's range in the training data, nothing clipped.
"""

from __future__ import annotations

import copy
import inspect
import os
from typing import Any

# albumentations asks PyPI for its latest version when imported (a network call, a warning when offline):
# pixelwise runs offline and says nothing it was not asked to. A user's own setting wins.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402

from pixelwise.errors import ConfigError
from pixelwise.registry import unknown_name_message

NEAREST = cv2.INTER_NEAREST


class RangeIntensity(A.ImageOnlyTransform):
    """Brightness, contrast and gamma for float images of any channel count, relative to each channel's range.

    Args:
        ranges: per channel (low, high): where the data lies (the 0.5-99.5th percentiles of the training pixels).
        brightness: shift by up to this fraction of the range; contrast: scale about mid-range by 1 +- this;
        gamma: exponent exp(+-gamma) of the position within the range. One draw per image, all channels alike.
    """

    def __init__(self, ranges: list[tuple[float, float]], brightness: float = 0.15, contrast: float = 0.15,
                 gamma: float = 0.2, p: float = 0.5) -> None:
        super().__init__(p=p)
        bounds = np.asarray(ranges, dtype=np.float32)
        self.low, self.span = bounds[:, 0], np.maximum(bounds[:, 1] - bounds[:, 0], 1e-12)
        self.brightness, self.contrast, self.gamma = brightness, contrast, gamma

    def get_params(self) -> dict[str, float]:
        r = self.random_generator
        return {"shift": float(r.uniform(-self.brightness, self.brightness)),
                "factor": float(r.uniform(1 - self.contrast, 1 + self.contrast)),
                "exponent": float(np.exp(r.uniform(-self.gamma, self.gamma)))}

    def apply(self, img: np.ndarray, shift: float, factor: float, exponent: float, **params: Any) -> np.ndarray:
        t = (img - self.low) / self.span  # 0..1 within the range; values outside it are kept, not clipped
        t = np.sign(t) * np.abs(t) ** exponent
        return (((t - 0.5) * factor + 0.5 + shift) * self.span + self.low).astype(np.float32)


class RangeNoise(A.ImageOnlyTransform):
    """Gaussian noise with a standard deviation of ``sigma`` (drawn from the range given) x each channel's range."""

    def __init__(self, ranges: list[tuple[float, float]], sigma: tuple[float, float] = (0.01, 0.05),
                 p: float = 0.5) -> None:
        super().__init__(p=p)
        bounds = np.asarray(ranges, dtype=np.float32)
        self.span, self.sigma = bounds[:, 1] - bounds[:, 0], sigma

    def get_params(self) -> dict[str, Any]:
        return {"sigma": float(self.random_generator.uniform(*self.sigma)),
                "seed": int(self.random_generator.integers(2**31))}

    def apply(self, img: np.ndarray, sigma: float, seed: int, **params: Any) -> np.ndarray:
        noise = np.random.default_rng(seed).standard_normal(img.shape, dtype=np.float32)
        return (img + noise * (sigma * self.span)).astype(np.float32)


class ClassCrop(A.RandomCrop):
    """A random crop that, with probability ``share``, contains a pixel of a class drawn uniformly from the classes
    in the (padded) mask, void excluded: nnU-Net's foreground oversampling, for any number of classes. A class on 1%
    of the pixels then appears in a crop about as often as one on 50%. Other crops are uniform, as ``RandomCrop``.
    """

    def __init__(self, height: int, width: int, share: float, ignore_index: int) -> None:
        super().__init__(height=height, width=width)
        self.share, self.ignore_index = share, ignore_index

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        mask = data.get("mask")
        if mask is None or self.py_random.random() >= self.share:
            return super().get_params_dependent_on_data(params, data)
        h, w = mask.shape[:2]
        # the values present, by counting (one pass) rather than np.unique (a sort of every pixel); masks are uint8
        classes = [int(c) for c in np.flatnonzero(np.bincount(mask.reshape(-1))) if c != self.ignore_index]
        if not classes or h < self.height or w < self.width:
            return super().get_params_dependent_on_data(params, data)
        ys, xs = np.nonzero(mask == self.py_random.choice(classes))
        i = self.py_random.randrange(len(ys))
        # the crop's corner: anywhere that keeps the chosen pixel inside the crop and the crop inside the image
        y0 = self.py_random.randint(max(0, ys[i] - self.height + 1), min(h - self.height, ys[i]))
        x0 = self.py_random.randint(max(0, xs[i] - self.width + 1), min(w - self.width, xs[i]))
        return {"crop_coords": (x0, y0, x0 + self.width, y0 + self.height), "pad_params": None}


def preset(name: str, ignore_index: int, channels: int,
           ranges: list[tuple[float, float]] | None = None) -> list[A.BasicTransform]:
    """The preset pipelines: none, light, default, strong (what segmentation recipes commonly use).

    ``ranges``: per-channel (low, high) of non-8-bit data, whose intensity transforms are scaled to them.
    """
    if name == "none":
        return []
    flips: list[A.BasicTransform] = [A.HorizontalFlip(p=0.5)]
    if name == "light":
        return flips
    strong = name == "strong"
    affine = A.Affine(
        scale=(0.5, 2.0) if strong else (0.75, 1.5),
        rotate=(-30, 30) if strong else (-10, 10),
        p=0.8 if strong else 0.6,
        border_mode=cv2.BORDER_CONSTANT,
        fill=0,
        fill_mask=ignore_index,
        mask_interpolation=NEAREST,
    )
    jitter = 0.25 if strong else 0.15
    if ranges is not None:
        photometric: list[A.BasicTransform] = [RangeIntensity(ranges, jitter, jitter, p=0.5)]
        grain: A.BasicTransform = RangeNoise(ranges, (0.01, 0.04))
    else:
        photometric = [A.RandomBrightnessContrast(jitter, jitter, p=0.5)]
        if channels == 3:
            photometric.append(A.HueSaturationValue(10, 20, 10, p=0.3 if strong else 0.2))
        grain = A.GaussNoise(std_range=(0.02, 0.08))
    noise: list[A.BasicTransform] = [A.OneOf([A.GaussianBlur(blur_limit=(3, 5)), grain], p=0.3 if strong else 0.15)]
    extra = [A.VerticalFlip(p=0.5), A.RandomRotate90(p=0.5)] if strong else []
    return [affine, *flips, *extra, *photometric, *noise]


def build_transform_list(specs: list[dict[str, Any]], ignore_index: int) -> list[A.BasicTransform]:
    """Build albumentations transforms from ``[{name: HorizontalFlip, p: 0.5}, ...]``; errors name the entry."""
    out = []
    valid = sorted(n for n, c in vars(A).items() if inspect.isclass(c) and issubclass(c, A.BasicTransform))
    for i, spec in enumerate(specs):
        where = f"augment.transforms[{i}]"
        if not isinstance(spec, dict) or "name" not in spec:
            raise ConfigError(f"{where}: expected a mapping with 'name' (e.g. {{name: HorizontalFlip, p: 0.5}})")
        params = {k: v for k, v in spec.items() if k != "name"}
        name = str(spec["name"])
        if name not in valid:
            raise ConfigError(f"{where}: {unknown_name_message('albumentations transform', name, valid)}")
        cls = getattr(A, name)
        accepted = inspect.signature(cls.__init__).parameters
        unknown = [k for k in params if k not in accepted]
        if unknown:
            keys = ", ".join(k for k in accepted if k not in ("self", "args", "kwargs", "always_apply"))
            raise ConfigError(f"{where} ({name}): unknown parameter(s) {', '.join(unknown)}; it takes {keys}")
        if "mask_interpolation" in accepted:
            if params.get("mask_interpolation", NEAREST) != NEAREST:
                raise ConfigError(f"{where} ({name}): masks must use nearest interpolation (mask_interpolation: 0)")
            params["mask_interpolation"] = NEAREST
        if "fill_mask" in accepted:
            params.setdefault("fill_mask", ignore_index)
        try:
            out.append(cls(**params))
        except Exception as e:  # albumentations validates with pydantic and raises several types
            raise ConfigError(f"{where} ({name}): invalid parameters: {e}") from None
    return out


def refuse_clipping(transforms: list[A.BasicTransform], ranges: list[tuple[float, float]], where: str) -> None:
    """Most of albumentations' pixel transforms (brightness, noise, blur, sharpening ...) take float images to be
    0-1 and clip to it: on 12-bit or float data they would quietly flatten every pixel above 1. Each one listed is
    tried once on pixels spanning the data's range; one whose output falls within 0-1 is refused by name."""
    bounds = np.asarray(ranges, dtype=np.float32)
    if float(bounds.max()) <= 1.0 and float(bounds.min()) >= 0.0:
        return  # data already within 0-1: nothing to clip
    probe = np.linspace(0.0, 1.0, 32 * 32, dtype=np.float32).reshape(32, 32, 1)
    probe = np.ascontiguousarray(bounds[:, 0] + probe * (bounds[:, 1] - bounds[:, 0]))
    for t in transforms:
        if not isinstance(t, A.ImageOnlyTransform) or isinstance(t, (RangeIntensity, RangeNoise)):
            continue
        trial = copy.deepcopy(t)
        trial.p = 1.0
        try:
            out = trial(image=probe.copy())["image"]
        except Exception:  # a transform that cannot take these channels fails on the data itself, by name
            continue
        if float(out.min()) >= 0.0 and float(out.max()) <= 1.0 + 1e-6:
            raise ConfigError(f"{where} ({type(t).__name__}): it clips images to 0-1, and this data spans "
                              f"{float(bounds.min()):g} to {float(bounds.max()):g}, so every pixel above 1 would be "
                              "flattened. Leave it out: the default augmentation scales brightness, contrast and "
                              "noise to each channel's range (RangeIntensity, RangeNoise)")


def train_transform(
    crop_size: tuple[int, int],
    ignore_index: int,
    channels: int,
    preset_name: str = "default",
    specs: list[dict[str, Any]] | None = None,
    seed: int | None = None,
    ranges: list[tuple[float, float]] | None = None,
    class_crops: float = 0.0,
) -> A.Compose:
    """The training pipeline: augmentations, then pad (void in the mask) and random crop to ``crop_size``.

    ``ranges``: per-channel (low, high) of non-8-bit data (float32 images); None for 8-bit images.
    ``class_crops``: the share of crops placed on a class drawn uniformly from the image's classes (``ClassCrop``).
    """
    h, w = crop_size
    if specs is not None:
        augment = build_transform_list(specs, ignore_index)
        if ranges is not None:
            refuse_clipping(augment, ranges, "augment.transforms")
    else:
        augment = preset(preset_name, ignore_index, channels, ranges)
    crop = [
        A.PadIfNeeded(min_height=h, min_width=w, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=ignore_index),
        ClassCrop(h, w, class_crops, ignore_index) if class_crops > 0 else A.RandomCrop(height=h, width=w),
    ]
    return A.Compose([*augment, *crop], seed=seed)
