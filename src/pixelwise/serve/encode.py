"""What /predict answers with: the mask as a palette PNG, an overlay, JSON (class areas and shapes), probabilities.

Shapes come from libraries rather than hand-written tracing: polygons are OpenCV contours, RLE is COCO's
(pycocotools), so any COCO tool reads it back with ``pycocotools.mask.decode``.
"""

from __future__ import annotations

import base64
import io
from typing import Any, Literal

import numpy as np
from PIL import Image

from pixelwise.display import display_rgb
from pixelwise.errors import PixelwiseError
from pixelwise.inference.predictor import Segmenter

Shapes = Literal["none", "polygons", "rle"]


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def mask_png(seg: Segmenter, mask: np.ndarray) -> bytes:
    """The mask as ``pixelwise predict`` writes it: pixel values are class indices, shown in the class colours."""
    return png_bytes(seg.colorize(mask))


def index_png(mask: np.ndarray) -> bytes:
    """One grey channel whose values are the class indices: what a browser can read back exactly (the page)."""
    return png_bytes(Image.fromarray(mask.astype(np.uint8), mode="L"))


def picture_png(image: np.ndarray) -> str:
    """An image of any pixel type and channel count as a base64 8-bit RGB PNG (``display_rgb``: what a person sees)."""
    return base64.b64encode(png_bytes(Image.fromarray(display_rgb(image)))).decode("ascii")


def overlay_png(seg: Segmenter, image: np.ndarray, mask: np.ndarray, alpha: float) -> bytes:
    return png_bytes(Image.fromarray(seg.overlay(image, mask, alpha)))


def polygons(binary: np.ndarray, tolerance: float) -> list[dict[str, Any]]:
    """The regions of a binary mask as polygons with holes; vertices are boundary pixel centres (x, y).

    ``tolerance``: Douglas-Peucker simplification in pixels (0: every corner of the pixel outline kept).
    """
    import cv2

    contours, hierarchy = cv2.findContours(binary.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return []

    def ring(contour: np.ndarray) -> list[list[int]]:
        if tolerance > 0:
            contour = cv2.approxPolyDP(contour, tolerance, True)
        return contour.reshape(-1, 2).tolist()

    links = hierarchy[0]  # per contour: next, previous, first child, parent (RETR_CCOMP: two levels)
    regions = []
    for i, contour in enumerate(contours):
        if links[i][3] != -1:
            continue  # a hole, listed under its region
        holes, child = [], links[i][2]
        while child != -1:
            holes.append(ring(contours[child]))
            child = links[child][0]
        regions.append({"exterior": ring(contour), "holes": holes})
    return regions


def rle(binary: np.ndarray) -> dict[str, Any]:
    """COCO run-length encoding (column-major, compressed counts as text)."""
    try:
        from pycocotools import mask as mask_utils
    except ImportError:
        raise PixelwiseError("shapes=rle needs pycocotools on the server: pip install 'pixelwise[serve]'") from None

    encoded = mask_utils.encode(np.asfortranarray(binary.astype(np.uint8)))
    return {"size": [int(s) for s in encoded["size"]], "counts": encoded["counts"].decode("ascii")}


def mask_json(seg: Segmenter, mask: np.ndarray, shapes: Shapes, tolerance: float, with_mask: bool,
              name: str) -> dict[str, Any]:
    """Per-class pixel counts and shares, each present class's shapes, and (``with_mask``) the mask itself."""
    counts = np.bincount(mask.ravel(), minlength=seg.table.num_classes)
    total = max(int(mask.size), 1)
    classes = []
    for index, (label, colour) in enumerate(zip(seg.table.names, seg.table.palette, strict=True)):
        entry: dict[str, Any] = {"index": index, "name": label, "color": list(colour), "pixels": int(counts[index]),
                                 "fraction": round(int(counts[index]) / total, 6)}
        if shapes != "none":
            binary = mask == index
            present = bool(counts[index])
            entry[shapes] = (polygons(binary, tolerance) if present else []) if shapes == "polygons" else rle(binary)
        classes.append(entry)
    out: dict[str, Any] = {"file": name, "height": int(mask.shape[0]), "width": int(mask.shape[1]),
                           "classes": classes}
    if with_mask:
        out["mask_png"] = base64.b64encode(index_png(mask)).decode("ascii")
    return out


def probs_npz(probs: np.ndarray, names: list[str]) -> bytes:
    """(K, H, W) probabilities as float16 in an .npz, with the class names: the file `predict --save-probs` writes."""
    buf = io.BytesIO()
    np.savez_compressed(buf, probabilities=probs.astype(np.float16), classes=np.asarray(names))
    return buf.getvalue()
