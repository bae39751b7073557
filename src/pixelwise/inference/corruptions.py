"""ImageNet-C style corruptions of 8-bit images (Hendrycks & Dietterich, 2019), on numpy and OpenCV.

Each corruption has five severities and is deterministic per (image key, corruption, severity): its random numbers
come from a generator seeded with a hash of the three, never from global state, so a robustness table is the same
on every run and machine. Names follow ImageNet-C. ``frost`` is a frost-like haze (ImageNet-C overlays photos of
frost, which are not shipped): a bright, bluish, smoothly varying veil with fine crystals. ``elastic_transform``
moves pixels, so it returns the truth mask moved alike (nearest); every other corruption leaves geometry alone.
The ``imagecorruptions`` package is not used: it breaks on current scikit-image. Gray (HxWx1) and colour (HxWx3)
uint8 images are supported; other pixel types are refused (their ranges make "severity" meaningless).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import cv2
import numpy as np

from pixelwise.errors import PixelwiseError

Rng = np.random.Generator


def _f(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float32) / 255.0


def _u8(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _keep_channels(out: np.ndarray, like: np.ndarray) -> np.ndarray:
    return out[:, :, None] if out.ndim == 2 and like.ndim == 3 else out


def gaussian_noise(image: np.ndarray, s: int, rng: Rng) -> np.ndarray:
    c = (0.08, 0.12, 0.18, 0.26, 0.38)[s - 1]
    return _u8(_f(image) + rng.normal(0.0, c, image.shape).astype(np.float32))


def shot_noise(image: np.ndarray, s: int, rng: Rng) -> np.ndarray:
    c = (60, 25, 12, 5, 3)[s - 1]
    return _u8(rng.poisson(_f(image) * c) / c)


def impulse_noise(image: np.ndarray, s: int, rng: Rng) -> np.ndarray:
    amount = (0.03, 0.06, 0.09, 0.17, 0.27)[s - 1]
    out = image.copy()
    u = rng.random(image.shape)
    out[u < amount / 2] = 0
    out[(u >= amount / 2) & (u < amount)] = 255
    return out


def _filter(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    return _keep_channels(cv2.filter2D(image, -1, kernel.astype(np.float32), borderType=cv2.BORDER_REFLECT), image)


def defocus_blur(image: np.ndarray, s: int, rng: Rng) -> np.ndarray:
    radius, alias = ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5))[s - 1]
    r = np.arange(-radius, radius + 1)
    disk = ((r[:, None] ** 2 + r[None, :] ** 2) <= radius**2).astype(np.float32)
    disk = cv2.GaussianBlur(disk / disk.sum(), (3, 3), alias)
    return _filter(image, disk / disk.sum())


def motion_blur(image: np.ndarray, s: int, rng: Rng) -> np.ndarray:
    length = (7, 11, 15, 21, 27)[s - 1]
    kernel = np.zeros((length, length), np.float32)
    kernel[length // 2, :] = 1.0
    angle = float(rng.uniform(-45, 45))
    rot = cv2.getRotationMatrix2D(((length - 1) / 2, (length - 1) / 2), angle, 1.0)
    kernel = cv2.warpAffine(kernel, rot, (length, length))
    return _filter(image, kernel / max(float(kernel.sum()), 1e-6))


def gaussian_blur(image: np.ndarray, s: int, rng: Rng) -> np.ndarray:
    sigma = (1, 2, 3, 4, 6)[s - 1]
    return _keep_channels(cv2.GaussianBlur(image, (0, 0), sigma, borderType=cv2.BORDER_REFLECT), image)


def brightness(image: np.ndarray, s: int, rng: Rng) -> np.ndarray:
    c = (0.1, 0.2, 0.3, 0.4, 0.5)[s - 1]
    if image.shape[-1] != 3:
        return _u8(_f(image) + c)
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV_FULL).astype(np.float32) / 255.0
    hsv[:, :, 2] = np.clip(hsv[:, :, 2] + c, 0, 1)
    return cv2.cvtColor(_u8(hsv), cv2.COLOR_HSV2RGB_FULL)


def contrast(image: np.ndarray, s: int, rng: Rng) -> np.ndarray:
    c = (0.4, 0.3, 0.2, 0.1, 0.05)[s - 1]
    x = _f(image)
    mean = x.mean(axis=(0, 1), keepdims=True)
    return _u8((x - mean) * c + mean)


def _smooth_field(shape: tuple[int, int], rng: Rng, octaves: int = 5, decay: float = 0.6) -> np.ndarray:
    """A 0-1 cloud-like field: random grids from coarse to fine, upsampled and summed (a fractal noise)."""
    h, w = shape
    field = np.zeros((h, w), np.float32)
    for o in range(octaves):
        side = 2 ** (o + 2)
        grid = rng.random((side, side)).astype(np.float32)
        field += cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC) * decay**o
    field -= field.min()
    return field / max(float(field.max()), 1e-6)


def fog(image: np.ndarray, s: int, rng: Rng) -> np.ndarray:
    strength, decay = ((1.5, 2.0), (2.0, 2.0), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4))[s - 1]
    x = _f(image)
    top = x.max()
    veil = _smooth_field(image.shape[:2], rng, decay=1 / decay) * strength
    return _u8((x + veil[:, :, None]) * top / (top + strength))


def frost(image: np.ndarray, s: int, rng: Rng) -> np.ndarray:
    keep, veil_share = ((0.9, 0.35), (0.8, 0.45), (0.7, 0.55), (0.65, 0.6), (0.6, 0.7))[s - 1]
    x = _f(image)
    veil = 0.6 + 0.4 * _smooth_field(image.shape[:2], rng, decay=0.8)
    crystals = cv2.GaussianBlur((rng.random(image.shape[:2]) > 0.97).astype(np.float32), (0, 0), 0.8)
    veil = np.clip(veil + crystals * 0.8, 0, 1)
    tint = np.array([0.85, 0.92, 1.0], np.float32)[: image.shape[-1]] if image.shape[-1] == 3 else np.ones(1)
    return _u8(keep * x + veil_share * veil[:, :, None] * tint)


def jpeg_compression(image: np.ndarray, s: int, rng: Rng) -> np.ndarray:
    quality = (25, 18, 15, 10, 7)[s - 1]
    bgr = image[:, :, ::-1] if image.shape[-1] == 3 else image
    ok, data = cv2.imencode(".jpg", np.ascontiguousarray(bgr), [cv2.IMWRITE_JPEG_QUALITY, quality])
    decoded = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    return _keep_channels(decoded[:, :, ::-1] if decoded.ndim == 3 else decoded, image)


def pixelate(image: np.ndarray, s: int, rng: Rng) -> np.ndarray:
    c = (0.6, 0.5, 0.4, 0.3, 0.25)[s - 1]
    h, w = image.shape[:2]
    small = cv2.resize(image, (max(1, int(w * c)), max(1, int(h * c))), interpolation=cv2.INTER_AREA)
    return _keep_channels(cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST), image)


def elastic_maps(shape: tuple[int, int], s: int, rng: Rng) -> tuple[np.ndarray, np.ndarray]:
    """The (map_x, map_y) of ``cv2.remap`` for elastic_transform: a smooth random displacement field."""
    h, w = shape
    alpha, sigma = ((0.02, 0.02), (0.035, 0.02), (0.05, 0.02), (0.07, 0.02), (0.09, 0.02))[s - 1]
    side = min(h, w)
    fields = []
    for _ in range(2):
        d = cv2.GaussianBlur(rng.uniform(-1, 1, (h, w)).astype(np.float32), (0, 0), max(sigma * side, 1.0))
        d /= max(float(np.abs(d).max()), 1e-6)
        fields.append(d * alpha * side)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return xs + fields[0], ys + fields[1]


def elastic_transform(image: np.ndarray, s: int, rng: Rng) -> np.ndarray:
    mx, my = elastic_maps(image.shape[:2], s, rng)
    return _keep_channels(cv2.remap(image, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT), image)


CORRUPTIONS: dict[str, Callable[[np.ndarray, int, Rng], np.ndarray]] = {
    "gaussian_noise": gaussian_noise, "shot_noise": shot_noise, "impulse_noise": impulse_noise,
    "defocus_blur": defocus_blur, "motion_blur": motion_blur, "gaussian_blur": gaussian_blur,
    "brightness": brightness, "contrast": contrast, "fog": fog, "frost": frost,
    "jpeg_compression": jpeg_compression, "pixelate": pixelate, "elastic_transform": elastic_transform,
}
MOVES_PIXELS = {"elastic_transform"}


def seed_of(key: str, name: str, severity: int) -> int:
    """A seed from a hash of (image key, corruption, severity): independent of order and of global state."""
    return int.from_bytes(hashlib.sha256(f"{key}\0{name}\0{severity}".encode()).digest()[:8], "little")


def check_corruptions(names: list[str], severities: list[int]) -> None:
    unknown = [n for n in names if n not in CORRUPTIONS]
    if unknown:
        raise PixelwiseError(f"unknown corruption(s) {', '.join(unknown)}; choose among {', '.join(CORRUPTIONS)}")
    bad = [s for s in severities if s not in range(1, 6)]
    if bad or not severities:
        raise PixelwiseError(f"severities must be 1 to 5, got {severities}")


def corrupt(image: np.ndarray, name: str, severity: int, key: str, mask: np.ndarray | None = None
            ) -> tuple[np.ndarray, np.ndarray | None]:
    """(corrupted image, its mask) for an 8-bit HxW, HxWx1 or HxWx3 image; the mask is moved only by
    ``elastic_transform`` (nearest, void at no pixel that was labelled before)."""
    check_corruptions([name], [severity])
    if image.dtype != np.uint8:
        raise PixelwiseError(f"corruptions are defined for 8-bit images; this one is {image.dtype} (robustness "
                             "checks of 16-bit or float data are not supported)")
    squeeze = image.ndim == 2
    img = image[:, :, None] if squeeze else image
    if img.shape[-1] not in (1, 3):
        raise PixelwiseError(f"corruptions take gray or RGB images, got {img.shape[-1]} channels")
    rng = np.random.default_rng(seed_of(key, name, severity))
    if name in MOVES_PIXELS:
        mx, my = elastic_maps(img.shape[:2], severity, rng)
        out = _keep_channels(cv2.remap(img, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT), img)
        if mask is not None:
            mask = cv2.remap(mask, mx, my, cv2.INTER_NEAREST, borderMode=cv2.BORDER_REFLECT)
    else:
        out = CORRUPTIONS[name](img, severity, rng)
    out = np.ascontiguousarray(out, dtype=np.uint8)
    return (out[:, :, 0] if squeeze else out), mask
