"""The built-in synthetic dataset (for ``pixelwise demo`` and tests): shapes on textured, noisy backgrounds.

Classes differ by shape and by fill pattern (discs speckled, squares striped, triangles checkered), never by
colour: objects and background draw their colours from the same distribution, backgrounds carry smooth
colour fields, faint stripes and scratches, and everything is noisy. No colour threshold separates them.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import yaml
from PIL import Image

CLASSES = ["background", "disc", "square", "triangle"]
COLOURS = [(0, 0, 0), (230, 80, 60), (60, 160, 230), (250, 200, 40)]


def _smooth_field(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """A smooth random RGB field in [0, 1], (size, size, 3)."""
    coarse = rng.random((cells, cells, 3)).astype(np.float32)
    return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC).clip(0, 1)


def _texture(rng: np.random.Generator, size: int, pattern: str = "background") -> np.ndarray:
    base = rng.uniform(40, 215, 3).astype(np.float32)
    field = (_smooth_field(rng, size, int(rng.integers(3, 7))) - 0.5) * rng.uniform(40, 120)
    img = base + field
    yy, xx = np.mgrid[:size, :size]
    if pattern == "square" or (pattern == "background" and rng.random() < 0.5):
        # Objects get strong fine stripes; backgrounds sometimes get faint broad ones.
        angle = rng.uniform(0, np.pi)
        period, amp = (rng.uniform(4, 7), rng.uniform(30, 45)) if pattern == "square" else (
            rng.uniform(12, 24), rng.uniform(6, 15))
        img += (np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period) * amp)[..., None]
    elif pattern == "disc":
        img += rng.normal(0, rng.uniform(30, 45), (size, size, 1))
    elif pattern == "triangle":
        cell = int(rng.integers(3, 5))
        img += (((xx // cell + yy // cell) % 2) * 2 - 1)[..., None] * rng.uniform(25, 40)
    return img


def _shape_points(rng: np.random.Generator, kind: str, cx: float, cy: float, r: float) -> np.ndarray:
    angle = rng.uniform(0, 2 * np.pi)
    corners = 4 if kind == "square" else 3
    t = angle + np.arange(corners) * 2 * np.pi / corners
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1).round().astype(np.int32)


def make_sample(rng: np.random.Generator, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """One image (size, size, 3) uint8 and its mask (size, size) uint8 with values 0..3."""
    img = _texture(rng, size)
    mask = np.zeros((size, size), np.uint8)
    for _ in range(int(rng.integers(2, 6))):
        cls = int(rng.integers(1, len(CLASSES)))
        r = rng.uniform(size * 0.07, size * 0.17)
        cx, cy = rng.uniform(r * 0.5, size - r * 0.5, 2)
        region = np.zeros((size, size), np.uint8)
        if CLASSES[cls] == "disc":
            cv2.circle(region, (int(cx), int(cy)), int(r * 0.85), 1, -1, lineType=cv2.LINE_8)
        else:
            cv2.fillPoly(region, [_shape_points(rng, CLASSES[cls], cx, cy, r)], 1)
        inside = region.astype(bool)
        if not inside.any():
            continue
        obj = _texture(rng, size, CLASSES[cls])
        # Keep each object visible against what lies under it without giving classes their own colours.
        under = img[inside].mean(axis=0)
        shift = obj[inside].mean(axis=0) - under
        if np.abs(shift).max() < 50:
            obj += np.sign(shift + 1e-3) * (50 - np.abs(shift).max())
        img[inside] = obj[inside]
        mask[inside] = cls
    for _ in range(int(rng.integers(0, 4))):  # scratches: background-class lines in object colours
        p1, p2 = rng.integers(0, size, 2), rng.integers(0, size, 2)
        colour = tuple(float(c) for c in rng.uniform(0, 255, 3))
        cv2.line(img, tuple(int(v) for v in p1), tuple(int(v) for v in p2), colour, 1)
    img += rng.normal(0, rng.uniform(4, 14), img.shape)
    return img.clip(0, 255).astype(np.uint8), mask


def write_dataset(out: Path, n_train: int = 240, n_val: int = 48, size: int = 128, seed: int = 0) -> Path:
    """Write the synthetic set in the ``folders`` layout (train/ and val/, images/ and masks/, classes.yaml)."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        (out / split / "images").mkdir(parents=True, exist_ok=True)
        (out / split / "masks").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img, mask = make_sample(rng, size)
            Image.fromarray(img).save(out / split / "images" / f"{i:04d}.png")
            Image.fromarray(mask).save(out / split / "masks" / f"{i:04d}.png")
    classes = {"names": CLASSES, "colors": [list(c) for c in COLOURS]}
    (out / "classes.yaml").write_text(yaml.safe_dump(classes, sort_keys=False))
    return out
