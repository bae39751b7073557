"""The report's pictures: matplotlib figures of curves, confusion and per-class numbers, and mask panels.

Every ``plot_*`` returns PNG bytes (the report embeds them and saves them beside itself). Panels (image | truth |
prediction | error) are composed with numpy at the images' own resolution, not through matplotlib.
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from pixelwise.data.classes import IGNORE
from pixelwise.display import display_rgb

VOID_RGB = (255, 255, 255)  # void in a truth panel
WRONG_RGB = (230, 40, 40)
ERROR_VOID_RGB = (40, 40, 120)


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed); every plot in pixelwise draws through it."""
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede the pyplot import
    import matplotlib.pyplot as plt

    return plt


F = TypeVar("F", bound=Callable[..., Any])


def plain_text(fn: F) -> F:
    """Draw ``fn``'s text as it is: matplotlib reads text between two '$' as mathtext, so a class or file name
    such as 'cost $5 to $10' would be typeset as maths, and one such as 'a$\\frac$' would fail to draw."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import matplotlib

        with matplotlib.rc_context({"text.parse_math": False}):  # read when each Text is made, ticks at draw
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def figure_png(fig: Any) -> bytes:
    """A finished figure as PNG bytes (100 dpi, tight box); the figure is closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    pyplot().close(fig)
    return buf.getvalue()


def _num(value: Any) -> float:
    """A metrics.csv cell (str, number or empty) as a float, NaN when missing."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


@plain_text
def plot_curves(history: list[dict[str, Any]]) -> bytes:
    """Train/val loss, val mIoU and pixel accuracy, and learning rate per epoch (rows of metrics.csv)."""
    plt = pyplot()
    epochs = [_num(r.get("epoch")) for r in history]

    def column(key: str) -> list[float]:
        return [_num(r.get(key)) for r in history]

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    axes[0].plot(epochs, column("train_loss"), marker=".", label="train loss")
    if any(not math.isnan(v) for v in column("val_loss")):
        axes[0].plot(epochs, column("val_loss"), marker=".", label="val loss")
    axes[0].set_title("loss")
    axes[0].legend()
    axes[1].plot(epochs, column("val_miou"), marker=".", label="val mIoU")
    axes[1].plot(epochs, column("val_pixel_accuracy"), marker=".", label="val pixel accuracy")
    axes[1].set_ylim(0, 1)
    axes[1].set_title("validation")
    axes[1].legend()
    axes[2].plot(epochs, column("lr"), marker=".")
    axes[2].set_title("learning rate (end of epoch)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    return figure_png(fig)


@plain_text
def plot_confusion(cm: np.ndarray, names: list[str]) -> bytes:
    """Row-normalised confusion matrix (rows: truth, so the diagonal is each class's recall)."""
    plt = pyplot()
    cm = np.asarray(cm, dtype=np.float64)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    k = len(names)
    side = max(4.0, 0.55 * k + 2)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), names, rotation=60, ha="right")
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                if norm[i, j] >= 0.005:
                    ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title("confusion matrix (each row sums to 1)")
    return figure_png(fig)


@plain_text
def plot_class_bars(values: dict[str, float | None], title: str, xlabel: str, mean: float | None = None,
                    colors: list[tuple[int, int, int]] | None = None) -> bytes:
    """Horizontal bars per class (None drawn as an empty bar marked n/a), optionally with a mean line."""
    plt = pyplot()
    names = list(values)
    heights = [v if v is not None else 0.0 for v in values.values()]
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(names) + 1.2))
    bar_colors = [tuple(c / 255 for c in rgb) for rgb in colors] if colors else None
    ax.barh(range(len(names)), heights, color=bar_colors, edgecolor="black", linewidth=0.5)
    for i, v in enumerate(values.values()):
        ax.text((v or 0.0) + 0.005, i, "n/a" if v is None else f"{v:.3f}", va="center", fontsize=8)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_xlim(0, max([1.0 if mean is not None else 0.0] + [h * 1.15 for h in heights]) or 1.0)
    if mean is not None:
        ax.axvline(mean, color="black", linestyle="--", linewidth=1, label=f"mean {mean:.3f}")
        ax.legend(loc="lower right")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    return figure_png(fig)


@plain_text
def plot_frequencies(shares: dict[str, list[float]], names: list[str]) -> bytes:
    """Share of labelled pixels per class, one bar group per source (e.g. train, val)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.38 * len(names) * max(1, len(shares)) / 1.5 + 1.2))
    height = 0.8 / max(len(shares), 1)
    for j, (label, values) in enumerate(shares.items()):
        ax.barh(np.arange(len(names)) + j * height, values, height=height, label=label)
    ax.set_yticks(np.arange(len(names)) + height * (len(shares) - 1) / 2, names)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("share of labelled pixels (log scale)")
    ax.set_title("class frequencies")
    ax.legend(loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    return figure_png(fig)


def colorize(mask: np.ndarray, palette: list[tuple[int, int, int]]) -> np.ndarray:
    """Class-index mask (H, W) -> RGB (H, W, 3) uint8 in the class colours, void white."""
    lut = np.tile(np.asarray(VOID_RGB, dtype=np.uint8), (256, 1))
    lut[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    return lut[mask]


def error_map(image: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Correct pixels as a dimmed gray image, wrong ones red, void navy: (H, W, 3) uint8."""
    gray = image.mean(axis=2) if image.ndim == 3 else image.astype(np.float32)
    out = np.repeat((gray * 0.45)[:, :, None], 3, axis=2).astype(np.uint8)
    out[(pred != truth) & (truth != IGNORE)] = WRONG_RGB
    out[truth == IGNORE] = ERROR_VOID_RGB
    return out


def panel(image: np.ndarray, truth: np.ndarray, pred: np.ndarray, palette: list[tuple[int, int, int]],
          max_side: int = 320) -> np.ndarray:
    """image | truth | prediction | error, side by side with 4-pixel gaps, each scaled to ``max_side`` a side.

    The image may have any type and channel count (shown as ``display.display_rgb`` does)."""
    rgb = display_rgb(image)
    parts = [rgb, colorize(truth, palette), colorize(pred, palette), error_map(rgb, truth, pred)]
    h, w = truth.shape
    scale = min(4.0, max_side / max(h, w))  # small images are enlarged (nearest), large ones shrunk
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    parts = [np.asarray(Image.fromarray(p).resize(size, Image.NEAREST)) for p in parts]
    gap = np.full((size[1], 4, 3), 255, dtype=np.uint8)
    return np.concatenate([x for p in parts for x in (p, gap)][:-1], axis=1)


def png_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", optimize=False)
    return buf.getvalue()
