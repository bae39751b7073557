"""Decoding image and mask files to numpy arrays, with clear errors; no torch (the ONNX backend uses it too).

Every file goes through ``decode_image`` or ``read_mask_stored``, which refuse first what is not a regular file (a
FIFO named in a list would block forever) and then decode by kind: TIFF (tifffile), ``.npy``, 16-bit colour PNG
(OpenCV), JPEG 2000 and VRT (rasterio), everything else with PIL. Pixels keep their type and range: 8-bit images
stay uint8 (the fast path: loaders and cache move uint8, the model normalises), 16-bit, signed and floating-point
images keep every value and reach the model as float32. Nothing is rescaled, truncated or dropped without an
error naming the file: not a bit depth, not a page, not a band, not a NaN.
"""

from __future__ import annotations

import errno
import os
import stat
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from pixelwise.data import pnm, raster
from pixelwise.data.filekind import decoder_suffix as _kind
from pixelwise.data.filekind import sniff_suffix  # noqa: F401  (re-exported: the upload API)
from pixelwise.data.pixels import (  # noqa: F401  (re-exported: the reading API)
    ChannelMismatch,
    Decoded,
    DtypeMismatch,
    ImageSpec,
    as_spec,
    check_pixels,
    dtype_class,
    fit_channels,
    model_dtype,
    model_input,
    spec_of,
)
from pixelwise.data.raster import RASTERIO_SUFFIXES, TIFF_SUFFIXES, Header
from pixelwise.errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".ppm", ".pgm", ".npy", ".jp2", ".vrt"}
GRAYSCALE_MODES = {"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
EXIF_ORIENTATION = 0x0112
# What PIL may decode for us: raster formats only (a JPEG with previews, MPO, opens as JPEG). Anything else it
# recognises is "cannot identify": EPS would run Ghostscript on the file (an upload's PostScript), and WMF, PSD,
# FITS, ... are not segmentation data.
RASTER_FORMATS = ("PNG", "JPEG", "BMP", "DIB", "WEBP", "AVIF", "PPM", "GIF", "TIFF", "JPEG2000", "ICO", "TGA", "QOI",
                  "PCX", "SGI")
Image.init()  # every plugin registered, so that the list below is what this Pillow can open
PIL_FORMATS = tuple(f for f in RASTER_FORMATS if f in Image.OPEN)  # a name Pillow lacks would be a KeyError in open
DEFAULT_MAX_PIXELS = 200_000_000  # data.max_image_pixels: a 14000x14000 tile passes, a PNG bomb does not
SINGLE_IMAGE_FORMATS = {"MPO"}  # extra frames are previews of the first (camera JPEGs), not images of their own

# pixelwise checks the pixel count itself (configurable, a clear error naming the key), so PIL's own global
# bomb check, which warns above 89 MP and fails above 179 MP whatever the user configured, is switched off.
Image.MAX_IMAGE_PIXELS = None
_max_pixels = DEFAULT_MAX_PIXELS


def set_max_pixels(limit: int) -> None:
    """Largest width x height decoded (data.max_image_pixels); checked from the header, before decoding."""
    global _max_pixels
    _max_pixels = int(limit)


def max_pixels() -> int:
    """The limit ``set_max_pixels`` set (also bounds masks pixelwise draws itself, e.g. from COCO polygons)."""
    return _max_pixels


@dataclass(frozen=True)
class Pair:
    """One training example: an image and its mask (None where the mask is missing)."""

    image: Path
    mask: Path | None


_SPECIAL = ((stat.S_ISFIFO, "named pipe (FIFO)"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
            (stat.S_ISBLK, "block device"))


def _file_error(path: Path, what: str, e: OSError) -> DataError:
    """The message for an OSError met opening ``path``: missing, broken link, permission, folder, link loop."""
    if isinstance(e, FileNotFoundError):
        if path.is_symlink():
            return DataError(f"{path}: broken symbolic link (points to {os.readlink(path)})")
        return DataError(f"{path}: {what} file not found")
    if isinstance(e, PermissionError):
        return DataError(f"{path}: {what} file cannot be read (permission denied); fix its permissions")
    if isinstance(e, IsADirectoryError):
        return DataError(f"{path}: is a folder, not an {what} file")
    if e.errno == errno.ELOOP:
        return DataError(f"{path}: symbolic link loop; point the link at a real file or remove it")
    if path.is_file() and path.stat().st_size == 0:
        return DataError(f"{path}: the {what} file is empty (0 bytes); re-export or remove it")
    return DataError(f"{path}: cannot be read as an {what} ({e}); re-export or remove the file")


def _regular_file(path: Path, what: str) -> None:
    """Refuse, before opening it, anything but a regular file: reading a FIFO blocks until a writer comes."""
    try:
        mode = path.stat().st_mode
    except OSError as e:
        raise _file_error(path, what, e) from None
    if stat.S_ISDIR(mode):
        raise DataError(f"{path}: is a folder, not an {what} file")
    for test, kind in _SPECIAL:
        if test(mode):
            raise DataError(f"{path}: is a {kind}, not a regular file; pixelwise reads {what}s only from regular "
                            "files (reading this one could block forever)")


def _open(path: Path, what: str) -> Image.Image:
    """Open and decode one file; every failure becomes a DataError naming the file and what to do."""
    _regular_file(path, what)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path, formats=PIL_FORMATS)
            w, h = im.size
            if w * h > _max_pixels:
                im.close()
                raise DataError(raster.bomb_message(path, what, w, h, _max_pixels))
            frames = getattr(im, "n_frames", 1)
            if frames > 1 and im.format not in SINGLE_IMAGE_FORMATS:
                im.close()
                raise DataError(f"{path}: the {im.format} file holds {frames} frames, and pixelwise would otherwise "
                                f"use only the first; save the frame you mean as a file of its own")
            im.load()
        return im
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(f"{path}: {what} is too large to decode safely ({e})") from None
    except OSError as e:
        raise _file_error(path, what, e) from None
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


def orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF/TIFF orientation (2-8) to (H, W, ...) pixels, as PIL's ``exif_transpose`` does to images."""
    if orientation in (5, 6, 7, 8):
        arr = arr.swapaxes(0, 1)  # transpose; 6 and 8 then flip one axis, 7 both
    flip = {2: (1,), 3: (0, 1), 4: (0,), 6: (1,), 7: (0, 1), 8: (0,)}.get(orientation, ())
    return np.ascontiguousarray(np.flip(arr, axis=flip) if flip else arr)


_PIL_DTYPES = {"I;16": np.uint16, "I;16L": np.uint16, "I;16B": np.uint16, "I;16N": np.uint16, "I": np.int32,
               "F": np.float32}


def _pil_pixels(im: Image.Image) -> np.ndarray:
    """(H, W, C) of a PIL image: 16-bit, 32-bit and float gray as they are; 8-bit as gray (1) or RGB (3, alpha,
    palette and CMYK converted as PIL converts them)."""
    if im.mode in _PIL_DTYPES:
        return np.asarray(im).astype(_PIL_DTYPES[im.mode], copy=False)[:, :, None]
    if im.mode in GRAYSCALE_MODES:
        return np.asarray(im.convert("L"))[:, :, None]
    return np.asarray(im if im.mode == "RGB" else im.convert("RGB"))


def select_bands(arr: np.ndarray, bands: tuple[int, ...] | None, path: Path) -> np.ndarray:
    if bands is None:
        return arr
    raster.check_bands(path, bands, arr.shape[2])
    return np.ascontiguousarray(arr[:, :, [b - 1 for b in bands]])


def decode_image(path: Path, spec: ImageSpec, suffix: str | None = None) -> Decoded:
    """The one place image files are decoded: pixels as stored, (H, W, C), with ``spec``'s bands and pages.

    ``suffix``: the kind of file, where the path has no telling suffix (an upload's in-memory file).
    """
    _regular_file(path, "image")
    suffix = _kind(path, suffix)
    orientation, geo, nodata = 1, False, 0
    if suffix == ".pnm":
        arr = pnm.read_pnm(path, "image", _max_pixels)
    elif suffix in TIFF_SUFFIXES:
        arr, orientation, geo, nodata = raster.read_tiff(path, "image", _max_pixels, spec.pages_as_channels)
        arr = orient(arr, orientation)
    elif suffix == ".npy":
        arr = raster.read_npy(path, "image", _max_pixels, spec.channel_axis)
    elif suffix in RASTERIO_SUFFIXES:
        arr, nodata = raster.read_raster(path, "image", _max_pixels, spec.bands)
        return Decoded(arr, 1, True, nodata)
    else:
        raw = _open(path, "image")
        orientation = exif_orientation(raw)
        if raw.format == "PNG" and raster.is_deep_colour_png(path):  # PIL would keep each channel's high byte
            arr = orient(raster.read_deep_png(path, "image"), orientation)
        else:
            arr = _pil_pixels(ImageOps.exif_transpose(raw) if orientation != 1 else raw)
    return Decoded(select_bands(arr, spec.bands, path), orientation, geo, nodata)


def probe(path: Path, spec: ImageSpec | None = None) -> Header:
    """An image file's size, channels (after bands) and dtype from its header, without decoding the pixels."""
    spec = spec or ImageSpec()
    _regular_file(path, "image")
    suffix = _kind(path)
    if suffix == ".pnm":
        header = Header(*pnm.pnm_header(path, "image"))
    elif suffix in TIFF_SUFFIXES:
        header = raster.tiff_header(path, "image", spec.pages_as_channels)
    elif suffix == ".npy":
        header = raster.npy_header(path, "image", spec.channel_axis)
    elif suffix in RASTERIO_SUFFIXES:
        return raster.raster_header(path, "image", spec.bands)
    else:
        try:
            with Image.open(path, formats=PIL_FORMATS) as im:
                w, h = im.size
                if im.format == "PNG" and raster.is_deep_colour_png(path):
                    channels, dtype = (1 if im.mode in ("LA", "I;16", "I") else 3), "uint16"
                elif im.mode in _PIL_DTYPES:
                    channels, dtype = 1, np.dtype(_PIL_DTYPES[im.mode]).name
                else:
                    channels, dtype = (1 if im.mode in GRAYSCALE_MODES else 3), "uint8"
        except (OSError, SyntaxError, ValueError) as e:
            raise DataError(f"{path}: cannot be read as an image ({e}); re-export or remove the file") from None
        header = Header(h, w, channels, dtype)
    return header if spec.bands is None else replace(header, channels=len(spec.bands))


def image_channels(path: Path) -> int:
    """The channels of an image file (1 for grayscale, 3 for colour, N for multichannel); reads only the header."""
    return probe(path).channels


def read_image(path: Path, spec: int | ImageSpec | None) -> np.ndarray:
    """Decode an image to HxWxC in its own type (uint8, uint16, int16, float32, ...) with the channels ``spec``
    asks for (an int: that many; 8-bit gray/colour are converted into each other, nothing else is)."""
    return read_image_oriented(path, spec)[0]


def read_image_oriented(path: Path, spec: int | ImageSpec | None) -> tuple[np.ndarray, int]:
    """``read_image`` and the EXIF/TIFF orientation it applied (1: none), from one decode."""
    arr, decoded = read_image_decoded(path, spec)
    return arr, decoded.orientation


def read_image_decoded(path: Path, spec: int | ImageSpec | None, suffix: str | None = None
                       ) -> tuple[np.ndarray, Decoded]:
    """``read_image`` and what the file held before its channels were fitted (for the checks)."""
    spec = as_spec(spec)
    decoded = decode_image(path, spec, suffix)
    return check_pixels(fit_channels(decoded, spec.channels, path), spec, path), decoded


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
    return read_mask_stored(path, colors)[0]


def _mask_pixels(path: Path) -> tuple[np.ndarray, Image.Image | None]:
    """(H, W[, C]) mask pixels as stored, and the PIL image when PIL decoded them (its mode matters)."""
    _regular_file(path, "mask")
    suffix = _kind(path)
    if suffix == ".pnm":
        return pnm.read_pnm(path, "mask", _max_pixels), None
    if suffix in TIFF_SUFFIXES:
        arr, orientation, _, _ = raster.read_tiff(path, "mask", _max_pixels)
        return orient(arr, orientation), None
    if suffix == ".npy":
        return raster.read_npy(path, "mask", _max_pixels, "last"), None
    if suffix in RASTERIO_SUFFIXES:
        return raster.read_raster(path, "mask", _max_pixels)[0], None
    raw = _open(path, "mask")
    # 48-bit RGB: PIL would keep the high byte of each channel, and class indices are in the low one
    if raw.format == "PNG" and raster.is_deep_colour_png(path):
        return orient(raster.read_deep_png(path, "mask"), exif_orientation(raw)), None
    im = upright(raw)
    if im.mode in ("P", "L", "1"):
        return np.asarray(im.convert("L") if im.mode == "1" else im), im
    if im.mode in ("RGB", "RGBA", "I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return np.asarray(im), im
    return np.asarray(im.convert("RGB")), im


def _colour_values(arr: np.ndarray, im: Image.Image | None, codes: ColorCodes, path: Path) -> np.ndarray:
    if im is not None and im.mode not in ("RGB", "RGBA", "P"):
        raise DataError(f"{path}: mask has mode {im.mode}; with color_masks the masks must be RGB images "
                        "painted in the class colours")
    if im is not None:
        return decode_colors(np.asarray(im.convert("RGB")), codes, path)
    if arr.ndim != 3 or arr.shape[2] < 3:
        raise DataError(f"{path}: mask has {1 if arr.ndim == 2 else arr.shape[2]} channel(s); with color_masks the "
                        "masks must be RGB images painted in the class colours")
    rgb = arr[:, :, :3]
    if rgb.dtype == np.uint16 and not (rgb % 257).any():  # 8-bit colours stored in 16 bits (v * 257)
        rgb = rgb // 257
    if rgb.dtype.kind not in "ui" or rgb.min() < 0 or rgb.max() > 255:
        raise DataError(f"{path}: colour mask of type {arr.dtype} whose colours are not 8-bit; save it as an 8-bit "
                        "RGB image painted in the class colours")
    return decode_colors(rgb.astype(np.uint8), codes, path)


def read_mask_stored(path: Path, colors: ColorCodes | None = None) -> tuple[np.ndarray, str]:
    """``read_mask`` and the pixel type the file stored them in (a float mask is worth a note)."""
    arr, im = _mask_pixels(path)
    stored = str(arr.dtype)
    if colors is not None:
        return _colour_values(arr, im, colors, path), stored
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    elif arr.ndim == 3 and arr.shape[2] in (3, 4):  # RGB(A): a gray picture of indices, or colours (alpha ignored)
        rgb = arr[:, :, :3]
        if not ((rgb[:, :, 0] == rgb[:, :, 1]).all() and (rgb[:, :, 0] == rgb[:, :, 2]).all()):
            raise DataError(
                f"{path}: mask is an RGB colour image; pixelwise expects one channel of class indices. "
                "If the colours stand for classes, give their table: data.classes with names, colors and "
                "color_masks: true (see README, Data). Otherwise convert the colours to indices or save palette PNGs."
            )
        arr = rgb[:, :, 0]
    elif arr.ndim == 3:
        raise DataError(f"{path}: mask has {arr.shape[2]} channels; a mask is one channel of class indices")
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr), stored
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all() or (arr != np.round(arr)).any():
            raise DataError(f"{path}: mask holds non-integer or NaN values; masks must hold class indices")
    if arr.size and (arr.min() < 0 or arr.max() > 65535):
        raise DataError(f"{path}: mask values {arr.min()}..{arr.max()} are outside 0..65535")
    return np.ascontiguousarray(arr.astype(np.uint16)), stored


def to_classes(raw: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Map raw mask values to class indices (uint8, IGNORE for void). Unknown values must be checked first."""
    out = lut[raw]
    assert (out >= 0).all(), "unknown mask values reached training; checks must reject them first"
    return out.astype(np.uint8)


def read_image_bytes(data: bytes, spec: int | ImageSpec | None, name: str = "upload") -> np.ndarray:
    """``read_image`` for an image held in memory (an upload); errors name ``name`` instead of a path.

    The bytes go to ``read_image``'s own decoders as an anonymous in-memory file (memfd, Linux), so an upload meets
    the same header pixel limit, the same message for each kind of broken file and the same rules (every pixel type,
    TIFF pages and bands, EXIF/TIFF orientation) as a file, and nothing is written to disk; elsewhere a private
    temporary folder is used and removed. The kind of file is read from the bytes, not from ``name``.
    """
    suffix = sniff_suffix(data)
    try:
        fd = os.memfd_create("pixelwise-upload", getattr(os, "MFD_CLOEXEC", 0))
    except (AttributeError, OSError):  # no memfd (macOS, Windows, a sandbox that forbids it)
        return _read_via_folder(data, spec, name, suffix)
    path = Path(f"/proc/self/fd/{fd}")
    try:
        with open(fd, "wb", closefd=False) as f:
            f.write(data)
        return read_image_decoded(path, spec, suffix)[0]
    except DataError as e:
        raise _renamed(e, path, name) from None
    finally:
        os.close(fd)


def _renamed(e: DataError, path: Path, name: str) -> DataError:
    """The error with the upload's name for the temporary path; the same class, so callers can tell kinds apart."""
    out = DataError.__new__(type(e))
    out.__dict__.update(e.__dict__)
    out.args = (str(e).replace(str(path), name),)
    return out


def _read_via_folder(data: bytes, spec: int | ImageSpec | None, name: str, suffix: str) -> np.ndarray:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="pixelwise-upload-") as folder:
        path = Path(folder) / f"upload{suffix}"
        path.write_bytes(data)
        try:
            return read_image_decoded(path, spec)[0]
        except DataError as e:
            raise _renamed(e, path, name) from None
