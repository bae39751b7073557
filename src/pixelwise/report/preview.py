"""``pixelwise data preview``: a sheet of augmented training samples with their masks.

Images of any type and channel count are shown through ``display.display_rgb``: three channels (the first
three, or ``bands``) or one as gray; non-8-bit data contrast-stretched by the original's percentiles, and its
augmented copy by the same limits, so what augmentation does to intensity stays visible.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from pixelwise.config import Config
from pixelwise.data.classes import IGNORE
from pixelwise.display import display_rgb, pick_bands, stretch_limits
from pixelwise.engine.checkpoint import atomic_write_bytes
from pixelwise.errors import PixelwiseError
from pixelwise.report import plots


def overlay(image: np.ndarray, mask: np.ndarray, palette: list[tuple[int, int, int]], alpha: float = 0.5) -> np.ndarray:
    """Image (H, W, C; 8-bit, or any type as ``display_rgb`` shows it) with the class colours blended in; void pixels
    left as they are."""
    rgb = display_rgb(image) if image.dtype != np.uint8 or image.shape[2] not in (1, 3) else (
        np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image)
    colours = plots.colorize(mask, palette).astype(np.float32)
    out = rgb.astype(np.float32) * (1 - alpha) + colours * alpha
    out[mask == IGNORE] = rgb[mask == IGNORE]
    return out.clip(0, 255).astype(np.uint8)


def _fit(rgb: np.ndarray, height: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    return np.asarray(Image.fromarray(rgb).resize((max(1, round(w * height / h)), height), Image.BILINEAR))


@plots.plain_text
def preview_sheet(cfg: Config, out: Path, samples: int = 8, seed: int = 0,
                  bands: tuple[int, ...] | None = None) -> Path:
    """Write a PNG of ``samples`` training images: original | augmented | augmented with its mask.

    Samples are drawn as training draws them (same pipeline, seeded by (seed, epoch, index)), so what is
    shown is what the model sees. ``bands``: 1-based channels shown as red, green, blue (or one as gray).
    """
    from pixelwise.data.build import build_datasets, require_crop_memory

    plt = plots.pyplot()
    data = build_datasets(cfg.data, cfg.augment, seed)
    require_crop_memory(cfg.data, data.summary.channels, data.summary.table.num_classes, batch_size=1)
    train, palette = data.train, data.summary.table.palette
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(train), size=samples, replace=samples > len(train))
    cols = 2
    rows = -(-samples // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 7.5, rows * 2.7), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, index in enumerate(picks):
        original, _ = train.load(int(index))
        if bands is not None and max(bands) > original.shape[2]:
            raise PixelwiseError(f"--bands {','.join(map(str, bands))}: the images have {original.shape[2]} channel(s)")
        image, mask = train[(i, int(index))]
        image_np = image.numpy().transpose(1, 2, 0)
        mask_np = mask.numpy()
        plain = original.dtype == np.uint8 and original.shape[2] in (1, 3) and bands is None
        limits = None if plain else stretch_limits(pick_bands(original, bands).astype(np.float32))
        shown, augmented = display_rgb(original, bands, limits), display_rgb(image_np, bands, limits)
        h = image_np.shape[0]
        gap = np.full((h, 6, 3), 255, dtype=np.uint8)
        strip = np.concatenate([_fit(shown, h), gap, _fit(augmented, h), gap,
                                overlay(augmented, mask_np, palette)], axis=1)
        ax = axes.flat[i]
        ax.imshow(strip)
        ax.set_title(f"{train.pairs[int(index)].image.name}: original | augmented | with mask", fontsize=9)
    preset = cfg.augment.preset if cfg.augment.transforms is None else "custom transforms"
    fig.suptitle(f"augmentation: {preset}, crop {list(cfg.data.crop_size)}", fontsize=11)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(out, buf.getvalue())
    return out
