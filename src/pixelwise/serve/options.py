"""The query options of /predict and /predict/batch (typed, bounded, unknown ones refused) and one prediction.

Tiling and TTA are those of ``pixelwise predict``: ``tile`` (none: automatic for large images, 0: never),
``overlap``, ``tta`` (flips) and ``scales``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pixelwise.serve import encode
from pixelwise.serve.guard import ServeError
from pixelwise.serve.settings import ServedModel
from pixelwise.serve.uploads import decode

MAX_SCALES = 5
PROBS_MAX_BYTES = 2**30  # float32 probabilities computed for output=probs; a larger map is refused, not attempted


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


def predict_one(served: ServedModel, data: bytes, name: str, options: PredictOptions) -> tuple[bytes, str, str]:
    """Decode, predict and encode one upload (on the model's thread): the body, its media type, a file name."""
    seg = served.segmenter
    image = decode(data, name, seg.spec, served.max_pixels)
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
