"""The pixel rules: which channels and which type images have, and what may be converted (never silently).

8-bit gray and colour images convert into each other as PIL converts them (gray replicated, colour to luminance):
that is lossless or what a user expects of a photo. Nothing else changes channels or type: a file with another
channel count or pixel type than the dataset's is an error naming it, NaN/Inf pixels are an error unless
``data.nan_fill`` says what they become, and integers beyond float32's exact range are refused. No torch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from pixelwise.errors import DataError

if TYPE_CHECKING:
    from pixelwise.config import DataConfig

FLOAT32_EXACT = 2**24  # float32 holds every integer up to this; the model computes in float32


@dataclass(frozen=True)
class ImageSpec:
    """How image files become model input (``data.channels``, ``bands``, ``pages_as_channels``, ...)."""

    channels: int | None = None  # None: as the files have them
    bands: tuple[int, ...] | None = None  # 1-based band numbers kept, in this order
    pages_as_channels: bool = False  # a multi-page TIFF is one image with a channel per page
    channel_axis: str = "auto"  # .npy files: last (HxWxC), first (CxHxW), auto (last; channel-first shapes refused)
    nan_fill: float | None = None  # NaN/Inf pixels take this value (None: they are an error)
    dtype: str | None = None  # the pixel type every image must have (None: any; float types count as one)

    def with_channels(self, channels: int | None) -> ImageSpec:
        return replace(self, channels=channels)


def spec_of(data: DataConfig, channels: int | None = None) -> ImageSpec:
    """The reading rules of a data config; ``channels`` overrides ``data.channels`` (e.g. a run's resolved count)."""
    if channels is None and data.channels != "auto":
        channels = int(data.channels)
    return ImageSpec(channels, tuple(data.bands) if data.bands else None, data.pages_as_channels, data.channel_axis,
                     data.nan_fill, data.dtype)


def as_spec(spec: int | ImageSpec | None) -> ImageSpec:
    return spec if isinstance(spec, ImageSpec) else ImageSpec(channels=spec)


def dtype_class(dtype: str | np.dtype) -> str:
    """'float' for every floating-point type (all become float32), else the integer type's name."""
    d = np.dtype(dtype)
    return "float" if d.kind == "f" else str(d)


def model_dtype(dtype: str | np.dtype) -> str:
    """The type images reach the model in: uint8 stays uint8, everything else is float32."""
    return "uint8" if np.dtype(dtype) == np.uint8 else "float32"


def model_input(image: np.ndarray) -> np.ndarray:
    """An image as the model takes it: uint8 as it is, other types as float32 (exact for 8/16-bit integers)."""
    return image if image.dtype == np.uint8 else image.astype(np.float32)


class ChannelMismatch(DataError):
    """An image with another channel count than the dataset's (the checks group these into one message)."""

    def __init__(self, path: Path, found: int, expected: int) -> None:
        super().__init__(f"{path}: {found} channel(s), but the images are read as {expected}; choose channels with "
                         "data.bands (e.g. [1, 2, 3]) or make every image alike")
        self.found, self.expected = found, expected


class DtypeMismatch(DataError):
    """An image of another pixel type than the dataset's (the checks group these into one message)."""

    def __init__(self, path: Path, found: str, expected: str) -> None:
        super().__init__(f"{path}: pixels are {found}, but the images are {expected}; pixelwise does not rescale one "
                         "type to another: convert the images to one type")
        self.found, self.expected = found, expected


@dataclass(frozen=True)
class Decoded:
    """An image file's pixels as stored (bands chosen), before they are fitted to the dataset's channels."""

    pixels: np.ndarray  # (H, W, C), the file's own dtype
    orientation: int  # EXIF/TIFF orientation applied (1: none)
    georeferenced: bool = False  # GeoTIFF tags or a raster's CRS/transform: its mask must lie on its grid
    nodata: int = 0  # integer pixels holding the file's declared nodata value (float ones are NaN by then)

    @property
    def convertible(self) -> bool:
        """8-bit gray or colour: may be made 1 or 3 channels (replication, luminance), as PIL converts them."""
        return self.pixels.dtype == np.uint8 and self.pixels.shape[2] in (1, 3)


def fit_channels(decoded: Decoded, channels: int | None, path: Path) -> np.ndarray:
    """Pixels with ``channels`` channels: equal counts pass; 8-bit gray and colour convert into each other (gray
    replicated, colour to luminance); anything else is a ``ChannelMismatch`` (never a silent drop or copy)."""
    arr = decoded.pixels
    if channels is None or arr.shape[2] == channels:
        return arr
    if decoded.convertible and channels in (1, 3):
        if channels == 3:
            return np.ascontiguousarray(np.repeat(arr, 3, axis=2))
        return np.asarray(Image.fromarray(arr).convert("L"))[:, :, None]
    raise ChannelMismatch(path, arr.shape[2], channels)


def check_pixels(arr: np.ndarray, spec: ImageSpec, path: Path) -> np.ndarray:
    """The pixel type and values checked: the dataset's type, finite floats (or ``nan_fill``), integers that
    float32 holds exactly. Floating-point pixels come back as float32 (the model's precision)."""
    if spec.dtype is not None and dtype_class(arr.dtype) != dtype_class(spec.dtype):
        raise DtypeMismatch(path, str(arr.dtype), spec.dtype)
    if arr.dtype.kind == "f":
        arr = arr.astype(np.float32, copy=False)
        bad = ~np.isfinite(arr)
        if bad.any():
            if spec.nan_fill is None:
                y, x, c = (int(v[0]) for v in np.nonzero(bad))
                raise DataError(f"{path}: {int(bad.sum()):,} pixel value(s) are NaN or infinite (the first at row {y}, "
                                f"column {x}, channel {c + 1}); fix the file, or set data.nan_fill to the value they "
                                "should take (e.g. 0). A raster's declared nodata pixels count as NaN")
            arr = np.where(bad, np.float32(spec.nan_fill), arr)
    elif arr.dtype.itemsize >= 4 and arr.size:
        peak = max(abs(int(arr.min())), abs(int(arr.max())))
        if peak > FLOAT32_EXACT:
            raise DataError(f"{path}: {arr.dtype} values up to {peak:,}, beyond 2**24, which float32 (the model's "
                            "precision) cannot hold exactly; scale or offset the data first")
    return arr
