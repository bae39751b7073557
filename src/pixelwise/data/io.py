"""Decoding image and mask files to numpy arrays, with clear errors; no torch (the ONNX backend uses it too)."""

from __future__ import annotations

import errno
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from pixelwise.errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".ppm", ".pgm"}
GRAYSCALE_MODES = {"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
EXIF_ORIENTATION = 0x0112
DEFAULT_MAX_PIXELS = 200_000_000  # data.max_image_pixels: a 14000x14000 tile passes, a PNG bomb does not

# pixelwise checks the pixel count itself (configurable, a clear error naming the key), so PIL's own global
# bomb check, which warns above 89 MP and fails above 179 MP whatever the user configured, is switched off.
Image.MAX_IMAGE_PIXELS = None
_max_pixels = DEFAULT_MAX_PIXELS


def set_max_pixels(limit: int) -> None:
    """Largest width x height decoded (data.max_image_pixels); checked from the header, before decoding."""
    global _max_pixels
    _max_pixels = int(limit)


@dataclass(frozen=True)
class Pair:
    """One training example: an image and its mask (None where the mask is missing)."""

    image: Path
    mask: Path | None


def _open(path: Path, what: str) -> Image.Image:
    """Open and decode one file; every failure becomes a DataError naming the file and what to do."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path)
            w, h = im.size
            if w * h > _max_pixels:
                im.close()
                raise DataError(
                    f"{path}: the {what} would decode to {w}x{h} = {w * h:,} pixels, over the limit of "
                    f"{_max_pixels:,} (data.max_image_pixels). If the file is genuine, raise the limit; "
                    "a small file that decodes to gigapixels is a decompression bomb"
                )
            im.load()
        return im
    except FileNotFoundError:
        if path.is_symlink():
            raise DataError(f"{path}: broken symbolic link (points to {os.readlink(path)})") from None
        raise DataError(f"{path}: {what} file not found") from None
    except PermissionError:
        raise DataError(f"{path}: {what} file cannot be read (permission denied); fix its permissions") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, not an {what} file") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(f"{path}: {what} is too large to decode safely ({e})") from None
    except OSError as e:
        if path.is_file() and path.stat().st_size == 0:
            raise DataError(f"{path}: the {what} file is empty (0 bytes); re-export or remove it") from None
        if e.errno == errno.ELOOP:
            raise DataError(f"{path}: symbolic link loop; point the link at a real file or remove it") from None
        raise DataError(f"{path}: cannot be read as an {what} ({e}); re-export or remove the file") from None
    except (SyntaxError, ValueError, EOFError) as e:
        raise DataError(f"{path}: cannot be read as an {what} ({e}); re-export or remove the file") from None


def exif_orientation(im: Image.Image) -> int:
    """The EXIF orientation tag (1 = as stored; 2-8 = flipped and/or rotated for display)."""
    try:
        return int(im.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:  # a malformed EXIF block is not worth failing over; the pixels are used as stored
        return 1


def upright(im: Image.Image) -> Image.Image:
    """Apply the EXIF orientation, as OpenCV's imread and annotation tools show the image."""
    return ImageOps.exif_transpose(im) if exif_orientation(im) != 1 else im


def image_channels(path: Path) -> int:
    """1 for grayscale files, 3 otherwise; reads only the header."""
    try:
        with Image.open(path) as im:
            return 1 if im.mode in GRAYSCALE_MODES else 3
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: cannot be read as an image ({e}); re-export or remove the file") from None


def read_image(path: Path, channels: int) -> np.ndarray:
    """Decode an image to uint8 HxWxC with C = ``channels`` (1 or 3); 16-bit data is scaled to 8 bits."""
    return read_image_oriented(path, channels)[0]


def read_image_oriented(path: Path, channels: int) -> tuple[np.ndarray, int]:
    """``read_image`` and the EXIF orientation it applied (1: none), from one decode."""
    raw = _open(path, "image")
    orientation = exif_orientation(raw)
    im = ImageOps.exif_transpose(raw) if orientation != 1 else raw
    if im.mode.startswith("I;16") or im.mode == "I":
        arr = np.asarray(im).astype(np.float32)
        arr = (arr / 257.0 if arr.max() <= 65535 else arr / arr.max() * 255).clip(0, 255).astype(np.uint8)
        im = Image.fromarray(arr, mode="L")
    if channels == 1:
        arr = np.asarray(im.convert("L"))[:, :, None]
    else:
        arr = np.asarray(im.convert("RGB"))
    return np.ascontiguousarray(arr), orientation


ColorCodes = tuple[np.ndarray, np.ndarray]  # sorted packed RGB colours, and the raw value of each


def decode_colors(rgb: np.ndarray, codes: ColorCodes, path: Path) -> np.ndarray:
    """An RGB mask painted in known colours -> raw values (uint16); unknown colours are named in the error."""
    packed = (rgb[:, :, 0].astype(np.int64) << 16) | (rgb[:, :, 1].astype(np.int64) << 8) | rgb[:, :, 2]
    colours, values = codes
    index = np.searchsorted(colours, packed).clip(0, len(colours) - 1)  # the table has at least one colour
    known = colours[index] == packed
    if not known.all():
        bad, counts = np.unique(packed[~known], return_counts=True)
        top = bad[np.argsort(-counts)][:6]
        named = ", ".join(f"({c >> 16}, {(c >> 8) & 255}, {c & 255})" for c in top.tolist())
        raise DataError(f"{path}: {int((~known).sum())} pixels in colours not in the class table: {named}"
                        f"{' ...' if len(bad) > 6 else ''}; add them to data.classes colors (or void_colors)")
    return values[index]


def read_mask(path: Path, colors: ColorCodes | None = None) -> np.ndarray:
    """Decode a mask to its raw values, HxW uint8 or uint16 (palette PNGs give palette indices).

    ``colors``: the class table's colour codes when the masks are painted in class colours (RGB).
    """
    im = upright(_open(path, "mask"))
    if colors is not None:
        if im.mode not in ("RGB", "RGBA", "P"):
            raise DataError(f"{path}: mask has mode {im.mode}; with color_masks the masks must be RGB images "
                            "painted in the class colours")
        return decode_colors(np.asarray(im.convert("RGB")), colors, path)
    if im.mode in ("P", "L", "1"):
        return np.asarray(im.convert("L") if im.mode == "1" else im).astype(np.uint8, copy=False)
    if im.mode in ("RGB", "RGBA"):
        arr = np.asarray(im)[:, :, :3]
        if (arr[:, :, 0] == arr[:, :, 1]).all() and (arr[:, :, 0] == arr[:, :, 2]).all():
            return np.ascontiguousarray(arr[:, :, 0])
        raise DataError(
            f"{path}: mask is an RGB colour image; pixelwise expects one channel of class indices. "
            "If the colours stand for classes, give their table: data.classes with names, colors and "
            "color_masks: true (see README, Data). Otherwise convert the colours to indices or save palette PNGs."
        )
    arr = np.asarray(im)
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all() or (arr != np.round(arr)).any():
            raise DataError(f"{path}: mask holds non-integer or NaN values; masks must hold class indices")
    if arr.min() < 0 or arr.max() > 65535:
        raise DataError(f"{path}: mask values {arr.min()}..{arr.max()} are outside 0..65535")
    return arr.astype(np.uint16)


def to_classes(raw: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Map raw mask values to class indices (uint8, IGNORE for void). Unknown values must be checked first."""
    out = lut[raw]
    assert (out >= 0).all(), "unknown mask values reached training; checks must reject them first"
    return out.astype(np.uint8)


def read_image_bytes(data: bytes, channels: int, name: str = "upload") -> np.ndarray:
    """``read_image`` for an image held in memory (an upload); errors name ``name`` instead of a path.

    The bytes go to ``read_image`` itself as an anonymous in-memory file (memfd, Linux), so an upload meets the
    same header pixel limit, the same message for each kind of broken file and the same conversions as a file,
    and nothing is written to disk; elsewhere a private temporary folder is used and removed.
    """
    try:
        fd = os.memfd_create("pixelwise-upload", getattr(os, "MFD_CLOEXEC", 0))
    except (AttributeError, OSError):  # no memfd (macOS, Windows, a sandbox that forbids it)
        return _read_via_folder(data, channels, name)
    path = Path(f"/proc/self/fd/{fd}")
    try:
        with open(fd, "wb", closefd=False) as f:
            f.write(data)
        return read_image(path, channels)
    except DataError as e:
        raise DataError(str(e).replace(str(path), name)) from None
    finally:
        os.close(fd)


def _read_via_folder(data: bytes, channels: int, name: str) -> np.ndarray:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="pixelwise-upload-") as folder:
        path = Path(folder) / f"upload{Path(name).suffix.lower()}"
        path.write_bytes(data)
        try:
            return read_image(path, channels)
        except DataError as e:
            raise DataError(str(e).replace(str(path), name)) from None
