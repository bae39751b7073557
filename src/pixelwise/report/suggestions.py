"""The page of ``pixelwise suggest``: the images to label first, each beside its uncertainty map (self-contained,
pictures embedded as data URIs, as ``report.html``)."""

from __future__ import annotations

import html
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
from PIL import Image

from pixelwise.display import display_rgb
from pixelwise.report.html import CSS, data_uri
from pixelwise.report.plots import png_bytes

SIDE = 256  # pictures shown at most this many pixels a side


@dataclass
class Suggested:
    rank: int
    name: str
    score: float
    image: np.ndarray  # the image as read (any type and channels)
    uncertainty: np.ndarray  # (h, w) 0-1


def heat(values: np.ndarray) -> np.ndarray:
    """0-1 -> black, red, yellow, white (the 'hot' ramp): (h, w, 3) uint8."""
    u = np.clip(values, 0.0, 1.0)[:, :, None] * 3.0
    return (np.clip(np.concatenate([u, u - 1.0, u - 2.0], axis=2), 0.0, 1.0) * 255).round().astype(np.uint8)


def _fit(rgb: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
    h, w = rgb.shape[:2]
    if size is None:
        scale = min(4.0, SIDE / max(h, w))
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR))


def render(items: list[Suggested], *, run: str, strategy: str, scored: int, chosen: int | None = None,
           shown: int = 24) -> str:
    """The page; ``items`` may be only the first of the ``chosen`` images (default: all of them are given)."""
    chosen = len(items) if chosen is None else chosen
    figures = []
    for it in items[:shown]:
        picture = _fit(display_rgb(it.image))
        size = (picture.shape[1], picture.shape[0])
        panel = np.concatenate([picture, np.full((size[1], 4, 3), 255, np.uint8), _fit(heat(it.uncertainty), size)],
                               axis=1)
        figures.append(f'<figure><img src="{data_uri(png_bytes(panel))}" alt="{html.escape(it.name)}">'
                       f"<figcaption><b>{it.rank}. {html.escape(it.name)}</b> — score {it.score:.4f} "
                       "<span class='muted'>image | uncertainty (black certain, white most uncertain)</span>"
                       "</figcaption></figure>")
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    title = f"Images to label next: {run}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p class="muted">strategy {html.escape(strategy)} · {chosen} chosen of {scored} scored images · written {when}</p>
<p>Ranked by how much labelling each should help (suggestions.csv lists them all); the first
{min(shown, len(items), chosen)} are shown.</p>
{"".join(figures) or "<p class=muted>no images</p>"}
</body></html>
"""
