"""The query options of /predict and /predict/batch (typed, bounded, unknown ones refused) and one prediction.

Tiling and TTA are those of ``pixelwise predict``: ``tile`` (none: automatic for large images, 0: never),
``overlap``, ``tta`` (flips) and ``scales``; a tile below the model's smallest input, or tiling and TTA that would
cost many times an image's prediction with the defaults, is refused (422) before the model runs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pixelwise.inference.predictor import AUTO_TILE_AREA, DEFAULT_OVERLAP, Segmenter
from pixelwise.inference.sliding_window import tile_starts
from pixelwise.inference.tta import FLIPS
from pixelwise.serve import encode
from pixelwise.serve.guard import ServeError
from pixelwise.serve.settings import ServedModel
from pixelwise.serve.uploads import decode

MAX_SCALES = 5
PROBS_MAX_BYTES = 2**30  # float32 probabilities computed for output=probs; a larger map is refused, not attempted
MAX_WORK_FACTOR = 16  # tiling and TTA may cost this many times an image's prediction with the defaults
PASS_OVERHEAD = 64 * 64  # pixels of work a forward pass costs at the least, however small its tile


class BatchOptions(BaseModel):
    """Query options shared by /predict?output=json and /predict/batch."""

    model_config = ConfigDict(extra="forbid")

    shapes: encode.Shapes = Field("polygons", description="json: each class's regions as polygons, COCO RLE, or none")
    tolerance: float = Field(1.0, ge=0, le=100, description="json: polygon simplification in pixels (0: exact)")
    mask: bool = Field(False, description="json: include the mask as a base64 grey PNG of class indices")
    tile: int | None = Field(None, ge=0, le=16384, description="tile side (none: automatic for large images; "
                                                                 "0: never tile)")
    overlap: float = Field(0.25, ge=0, le=0.9, description="fraction of a tile shared with its neighbours")
    tta: bool = Field(False, description="average over horizontal and vertical flips")
    scales: str = Field("1", description="comma-separated scales for multi-scale TTA, e.g. 0.75,1,1.25")

    @field_validator("scales")
    @classmethod
    def _scales(cls, v: str) -> str:
        try:
            values = [float(x) for x in v.split(",") if x.strip()]
        except ValueError:
            raise ValueError("expected comma-separated numbers, e.g. 0.75,1,1.25") from None
        if not values or len(values) > MAX_SCALES or not all(0 < s <= 4 for s in values):
            raise ValueError(f"expected 1 to {MAX_SCALES} scales, each above 0 and at most 4")
        return v

    @property
    def scale_list(self) -> tuple[float, ...]:
        return tuple(float(x) for x in self.scales.split(",") if x.strip())


class PredictOptions(BatchOptions):
    output: Literal["mask", "overlay", "json", "probs"] = Field(
        "mask", description="mask: palette PNG of class indices; overlay: PNG; json: class areas and shapes; "
                            "probs: .npz of float16 probabilities")
    alpha: float = Field(0.5, ge=0, le=1, description="overlay: weight of the class colours")
    image: bool = Field(False, description="json: include the image as the model saw it (EXIF orientation applied; "
                                           "other pixel types than 8-bit contrast-stretched) as a base64 RGB PNG")


def smallest_tile(seg: Segmenter) -> int:
    """The smallest tile the network takes as it is: a smaller one is padded up to its stride or minimum side, so it
    costs as much as this one and covers less (tile=1 would be one forward pass per pixel)."""
    backend = seg.backend
    net = getattr(backend, "model", backend)  # PyTorch: the network; ONNX Runtime: the backend, from the metadata
    multiple = getattr(net, "pad_multiple", getattr(backend, "multiple", 32))
    return max(int(multiple), int(getattr(net, "min_size", 0) or 0), 1)


def check_tile(seg: Segmenter, options: BatchOptions) -> None:
    """Refuse (422) a tile smaller than the model's smallest input, before the request's body is read."""
    least = smallest_tile(seg)
    if options.tile is not None and 0 < options.tile < least:
        raise ServeError(422, f"query option 'tile': {options.tile} is below this model's smallest input of {least} "
                              f"pixels (a smaller tile is padded up to it, so it costs as much and covers less); ask "
                              f"for tile={least} or more, tile=0 (never tile), or leave tile out (automatic)")


def model_work(seg: Segmenter, shape: tuple[int, ...], tile: int | None, overlap: float, tta: bool,
               scales: tuple[float, ...]) -> tuple[int, int]:
    """(forward passes, pixels of work) of predicting an image of ``shape``: each scaled copy tiled as
    ``Segmenter.predict`` tiles it (a whole copy is one pass), times the flips of TTA. A pass counts at least
    ``PASS_OVERHEAD`` pixels of work: the network's fixed cost per call outweighs a small tile's pixels."""
    h, w = shape[:2]
    passes = work = 0
    for scale in scales:
        sh, sw = (h, w) if scale == 1 else (max(1, round(h * scale)), max(1, round(w * scale)))
        size = seg._tile((sh, sw), tile)  # the predictor's own rule: the given tile, none (0), or automatic by size
        th, tw = (sh, sw) if size is None else (min(size[0], sh), min(size[1], sw))
        n = len(tile_starts(sh, th, overlap)) * len(tile_starts(sw, tw, overlap))
        passes += n
        work += n * max(th * tw, PASS_OVERHEAD)
    flips = 1 + len(FLIPS) if tta else 1
    return passes * flips, work * flips


def check_work(seg: Segmenter, shape: tuple[int, ...], options: BatchOptions, name: str) -> None:
    """Refuse (422) tiling that would hold the model far longer than this image's ordinary prediction.

    Scales and TTA within their documented bounds are allowed as ``pixelwise predict`` allows them (their cost with
    the automatic tiling, ``planned``). Tiling may cost up to ``MAX_WORK_FACTOR`` times the image's prediction with
    the defaults, and any image what sixteen 512-pixel tiles cost: a small tile with a large overlap (tile=32,
    overlap=0.9: a pass per 3x3 pixels) would multiply it by hundreds.
    """
    ch, cw = seg.crop_size
    floor = AUTO_TILE_AREA * max(512, ch) * max(512, cw)
    _, plain = model_work(seg, shape, None, DEFAULT_OVERLAP, False, (1.0,))
    _, planned = model_work(seg, shape, None, DEFAULT_OVERLAP, options.tta, options.scale_list)
    passes, work = model_work(seg, shape, options.tile, options.overlap, options.tta, options.scale_list)
    allowed = max(floor, MAX_WORK_FACTOR * plain, planned)
    if work > allowed:
        tile = "automatic" if options.tile is None else options.tile
        raise ServeError(422, f"{name}: query options 'tile' ({tile}) and 'overlap' ({options.overlap:g}) with "
                              f"{len(options.scale_list)} scale(s){' and tta' if options.tta else ''} would run the "
                              f"model {passes} times on this {shape[1]}x{shape[0]} image, {work / plain:.0f} times the "
                              f"work of its prediction with the defaults; the server allows up to "
                              f"{allowed / plain:.0f} times for it: raise 'tile' (or leave it out) or lower 'overlap'")


def predict_one(served: ServedModel, data: bytes, name: str, options: PredictOptions) -> tuple[bytes, str, str]:
    """Decode, predict and encode one upload (on the model's thread): the body, its media type, a file name."""
    seg = served.segmenter
    image = decode(data, name, seg.spec, served.max_pixels)
    check_work(seg, image.shape, options, name)
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", Path(name).stem) or "upload"  # it goes into a header: ASCII only
    tiling = {"tile": options.tile, "overlap": options.overlap, "tta": options.tta, "scales": options.scale_list}
    if options.output == "probs":
        need = 4 * seg.table.num_classes * image.shape[0] * image.shape[1]
        if need > PROBS_MAX_BYTES:
            raise ServeError(413, f"{name}: probabilities for {image.shape[1]}x{image.shape[0]} pixels and "
                                  f"{seg.table.num_classes} classes would take {need / 2**30:.1f} GiB (the server "
                                  f"answers up to {PROBS_MAX_BYTES / 2**30:g}); ask for output=mask or json, or send "
                                  "a smaller image")
        probs = seg.probabilities(image, **tiling)
        return encode.probs_npz(probs, seg.table.names), "application/x-npz", f"{stem}_probs.npz"
    mask = seg.predict(image, **tiling)
    if options.output == "overlay":
        return encode.overlay_png(seg, image, mask, options.alpha), "image/png", f"{stem}_overlay.png"
    if options.output == "json":
        answer = encode.mask_json(seg, mask, options.shapes, options.tolerance, options.mask, name)
        if options.image:  # for a page whose browser cannot show the file (TIFF, 16-bit, many bands)
            answer["image_png"] = encode.picture_png(image)
        return json.dumps(answer).encode(), "application/json", f"{stem}.json"
    return encode.mask_png(seg, mask), "image/png", f"{stem}.png"
