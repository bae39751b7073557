"""Decoders for array images that PIL cannot hold: TIFF (tifffile), ``.npy``, 16-bit colour PNG (OpenCV) and
GeoTIFF/other rasters (rasterio, the optional ``geo`` extra). No torch.

Each returns the pixels as stored, (H, W, C) in the file's own dtype: nothing is rescaled, truncated or dropped.
What cannot be read exactly (several images in one file, an unknown channel axis, a missing codec) is a
``DataError`` naming the file and what to do. ``data.io`` chooses the decoder and applies the channel rules.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pixelwise.errors import DataError, PixelwiseError

TIFF_SUFFIXES = {".tif", ".tiff"}
RASTERIO_SUFFIXES = {".jp2", ".vrt"}  # read through GDAL only (JPEG 2000 Sentinel-2 bands, virtual band stacks)
NUMERIC_KINDS = "biuf"
PAGE_AXES = "YXS"  # tifffile's axes of one image: rows, columns, samples (channels) per pixel
GEO_TAGS = ("ModelPixelScaleTag", "ModelTiepointTag", "ModelTransformationTag", "GeoKeyDirectoryTag")
GEO_INSTALL = "pip install 'pixelwise[geo]'"
GDAL_CACHE_MB = 64  # GDAL's block cache (default: 5% of RAM); window-by-window reading needs little


@dataclass(frozen=True)
class Header:
    """What a file holds, from its header: size, channels (after ``pages_as_channels``), dtype, pages."""

    height: int
    width: int
    channels: int
    dtype: str
    pages: int = 1  # images stacked in the file (pages, frames), 1 for an ordinary image
    page_axes: str = ""  # tifffile's name of the stacking axes (C: channels, Z: depth, T: time, I/Q: unknown)
    rows_as_pages: bool = False  # an HxWxC array tifffile stored as a page per row (GDAL reads its first row only)


def bomb_message(path: Path, what: str, width: int, height: int, limit: int) -> str:
    return (f"{path}: the {what} would decode to {width}x{height} = {width * height:,} pixels, over the limit of "
            f"{limit:,} (data.max_image_pixels). If the file is genuine, raise the limit; a small file that decodes "
            "to gigapixels is a decompression bomb")


def _check_size(path: Path, what: str, height: int, width: int, limit: int) -> None:
    if width * height > limit:
        raise DataError(bomb_message(path, what, width, height, limit))


def _unreadable(path: Path, what: str, kind: str, e: Exception) -> DataError:
    if path.stat().st_size == 0:
        return DataError(f"{path}: the {what} file is empty (0 bytes); re-export or remove it")
    if isinstance(e, (KeyError, ValueError)) and "imagecodecs" in str(e):
        return DataError(f"{path}: the {what} is compressed with a codec that needs the imagecodecs package "
                         f"({e}); pip install imagecodecs")
    return DataError(f"{path}: cannot be read as a {kind} {what} ({type(e).__name__}: {e}); re-export or remove "
                     "the file")


def pages_message(path: Path, what: str, header: Header) -> str:
    axes = f" (axes {header.page_axes!r})" if header.page_axes else ""
    if what != "image":
        return (f"{path}: the mask file holds {header.pages} images{axes}; a mask is one image of class indices: "
                "save each page as its own file")
    return (f"{path}: the file holds {header.pages} images (pages or frames){axes}, and pixelwise would otherwise "
            "use only the first. If the pages are the channels of one image (one band per page), set "
            "data.pages_as_channels: true; otherwise save each page as its own file")


# --- TIFF ------------------------------------------------------------------------------------------------


def _all_pages(series: Any, flag: str) -> bool:
    return all(getattr(p, flag, False) for p in series.pages if p is not None)


def _tiff_main_series(tif: Any, path: Path, what: str) -> Any:
    """The file's one image series; reduced-resolution copies (overviews, thumbnails) and GDAL's internal validity
    mask (``tiff_validity``) are not images of their own."""
    series = [s for s in tif.series if not _all_pages(s, "is_reduced") and not _all_pages(s, "is_mask")]
    if len(series) != 1:
        shapes = ", ".join("x".join(map(str, s.shape)) for s in series)
        kind = "images of different shapes" if len({tuple(s.shape) for s in series}) > 1 else "separate images"
        raise DataError(f"{path}: the {what} file holds {len(series)} {kind} ({shapes}); save each as its own file "
                        "(or, if they are the bands of one image, as one multi-band image)")
    return series[0]


def tiff_validity(tif: Any, height: int, width: int) -> np.ndarray | None:
    """GDAL's internal mask (a full-resolution page marked as a mask: 0 where the image has no data), as (H, W)
    booleans, True where valid; None when the file has none."""
    for series in tif.series:
        if _all_pages(series, "is_mask") and not _all_pages(series, "is_reduced"):
            mask = series.asarray()
            if mask.shape[:2] == (height, width):
                return mask.reshape(height, width, -1)[:, :, 0] != 0
    return None


@contextlib.contextmanager
def open_tiff(path: Path) -> Iterator[Any]:
    """``tifffile.TiffFile`` on a file opened here: given a name, tifffile resolves it with realpath, which turns an
    upload's in-memory file (/proc/self/fd/N, see ``io.read_image_bytes``) into a name that does not exist."""
    import tifffile

    with open(path, "rb") as fh, tifffile.TiffFile(fh) as tif:
        yield tif


def _tiff_layout(series: Any) -> tuple[tuple[int, ...], str]:
    """The series' shape and axes. ``tifffile.imwrite`` of an HxWxC array (C not 3 or 4) stores a page per row (WxC)
    and records the shape in its "shaped" description: read as tifffile.imread returns it, the shortest axis last."""
    shape, axes = tuple(series.shape), str(series.axes)
    if getattr(series, "kind", "") == "shaped" and axes.endswith("QYX") and shape[-1] < min(shape[-3:-1]):
        return shape, axes[:-3] + "YXS"
    return shape, axes


def tiff_header(path: Path, what: str, pages_as_channels: bool = False) -> Header:
    try:
        with open_tiff(path) as tif:
            main = _tiff_main_series(tif, path, what)
            shape, axes = _tiff_layout(main)
            dtype, rows = str(main.dtype), axes != str(main.axes)
    except DataError:
        raise
    except Exception as e:  # tifffile raises TiffFileError, ValueError, KeyError, struct.error ...
        raise _unreadable(path, what, "TIFF", e) from None
    if "Y" not in axes or "X" not in axes:
        raise DataError(f"{path}: the TIFF's axes {axes!r} have no rows and columns (YX); not an image")
    sizes = dict(zip(axes, shape, strict=True))
    if 0 in shape:
        raise DataError(f"{path}: the TIFF {what} has a size of 0 (shape {shape}, axes {axes!r}); re-export or "
                        "remove the file")
    stack = "".join(a for a in axes if a not in PAGE_AXES)
    pages = int(np.prod([sizes[a] for a in stack])) if stack else 1
    samples = sizes.get("S", 1)
    return Header(sizes["Y"], sizes["X"], samples * (pages if pages_as_channels else 1), dtype, pages, stack, rows)


def nodata_hits(arr: np.ndarray, nodata: Any, valid: np.ndarray | None = None) -> np.ndarray | None:
    """(H, W, C) True where ``arr`` has no data: its declared ``nodata`` (GDAL's tag text or rasterio's number, per
    band; NaN matches NaN) or outside ``valid`` (GDAL's internal mask, (H, W), every band); None when neither is
    declared (or the value is one the pixels cannot hold)."""
    try:
        value = float(str(nodata).strip().rstrip("\x00")) if nodata is not None else None
    except ValueError:
        value = None
    if value is not None and arr.dtype.kind != "f" and not value.is_integer():
        value = None  # an integer image cannot hold it
    if value is None and valid is None:
        return None
    hit = np.zeros(arr.shape, dtype=bool)
    if value is not None:
        hit |= np.isnan(arr) if np.isnan(value) else arr == value
    if valid is not None:
        hit |= ~valid[:, :, None]
    return hit


def apply_nodata(arr: np.ndarray, nodata: Any, what: str, valid: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """An image's declared nodata value, or its internal mask's invalid pixels (``valid``, (H, W)): float
    pixels there become NaN, so that ``data.nan_fill`` decides what they are, as for any NaN (they were read as
    -9999 and trained on); integer ones stay as stored and are counted, for the checks' note (the checks find them
    again with ``declared_nodata``). Returns the pixels and how many have no data. Masks are left as stored."""
    hit = nodata_hits(arr, nodata, valid) if what == "image" and arr.size else None
    if hit is None:
        return arr, 0
    count = int(hit.any(axis=2).sum())  # pixels, however many of their channels hold it
    if count and arr.dtype.kind == "f":
        arr = np.where(hit, np.nan, arr).astype(arr.dtype, copy=False)
    return arr, count


def declared_nodata(path: Path, suffix: str) -> tuple[Any, np.ndarray | None]:
    """An image's declared nodata value and GDAL's internal mask ((H, W), True where valid, as stored: before any
    orientation), read as the decoder of ``suffix`` reads them: a TIFF's tags (tifffile), a .jp2/.vrt's nodata
    (rasterio)."""
    if suffix in RASTERIO_SUFFIXES:
        with open_raster(path) as ds:
            return ds.nodata, None
    header = tiff_header(path, "image")
    try:
        with open_tiff(path) as tif:
            tags = tif.pages[0].tags
            nodata = tags["GDAL_NODATA"].value if "GDAL_NODATA" in tags else None
            return nodata, tiff_validity(tif, header.height, header.width)
    except Exception as e:
        raise _unreadable(path, "image", "TIFF", e) from None


def read_tiff(path: Path, what: str, max_pixels: int, pages_as_channels: bool = False
              ) -> tuple[np.ndarray, int, bool, int]:
    """(H, W, C) pixels as stored, the TIFF orientation tag (1 when absent), whether GeoTIFF tags are present and
    how many integer pixels hold a declared nodata value (``apply_nodata``: float ones become NaN).

    Pages become channels only with ``pages_as_channels``; else a file of several pages is refused (it is not one
    image), where reading it as an image would have used the first page only.
    """

    header = tiff_header(path, what, pages_as_channels)
    _check_size(path, what, header.height, header.width, max_pixels)
    if header.pages > 1 and not pages_as_channels:
        raise DataError(pages_message(path, what, header))
    try:
        with open_tiff(path) as tif:
            series = _tiff_main_series(tif, path, what)
            shape, axes = _tiff_layout(series)
            arr = series.asarray()
            tags = tif.pages[0].tags
            orientation = int(tags["Orientation"].value) if "Orientation" in tags else 1
            geo = any(name in tags for name in GEO_TAGS)
            nodata = tags["GDAL_NODATA"].value if "GDAL_NODATA" in tags else None
            valid = tiff_validity(tif, header.height, header.width) if what == "image" else None
            arr = arr.reshape(shape)  # a header that lies about the size fails here, named below
            # rows, columns, then every other axis (pages, samples) flattened into channels, page-major
            order = [axes.index("Y"), axes.index("X")] + [i for i, a in enumerate(axes) if a not in "YX"]
            arr = arr.transpose(order).reshape(header.height, header.width, -1)
    except DataError:
        raise
    except Exception as e:
        raise _unreadable(path, what, "TIFF", e) from None
    arr, marked = apply_nodata(_numeric(np.ascontiguousarray(arr), path, what), nodata, what, valid)
    return arr, orientation if 1 <= orientation <= 8 else 1, geo, marked


def has_geotags(path: Path) -> bool:
    """Whether a TIFF carries GeoTIFF georeferencing tags (tifffile reads them without GDAL)."""
    try:
        with open_tiff(path) as tif:
            return any(name in tif.pages[0].tags for name in GEO_TAGS)
    except Exception:  # an unreadable file is reported by the decoder
        return False


# --- .npy ------------------------------------------------------------------------------------------------


def _npy_layout(shape: tuple[int, ...], path: Path, what: str, channel_axis: str) -> tuple[int, int, int, bool]:
    """(height, width, channels, channels_first) of an array file, or a DataError when its layout is unclear."""
    if len(shape) == 2:
        return shape[0], shape[1], 1, False
    if len(shape) != 3:
        raise DataError(f"{path}: array of shape {shape}; an {what} is HxW or HxWxC (or CxHxW with "
                        "data.channel_axis: first)")
    if channel_axis == "first":
        return shape[1], shape[2], shape[0], True
    if channel_axis == "auto" and shape[0] < shape[2] and shape[0] <= shape[1]:  # the first axis is the shortest
        raise DataError(f"{path}: array of shape {shape} looks channels-first ({shape[0]} channels of "
                        f"{shape[1]}x{shape[2]}); say which axis holds the channels: data.channel_axis: first "
                        "(CxHxW) or last (HxWxC)")
    return shape[0], shape[1], shape[2], False


def _load_npy(path: Path, what: str, mmap: bool) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except Exception as e:  # ValueError (pickled objects refused), OSError, EOFError ...
        raise _unreadable(path, what, ".npy array", e) from None


def npy_header(path: Path, what: str, channel_axis: str = "auto") -> Header:
    arr = _load_npy(path, what, mmap=True)
    h, w, c, _ = _npy_layout(arr.shape, path, what, channel_axis)
    if 0 in (h, w, c):
        raise DataError(f"{path}: array of shape {arr.shape} holds no pixels; an {what} needs at least one")
    return Header(h, w, c, str(arr.dtype))


def read_npy(path: Path, what: str, max_pixels: int, channel_axis: str = "auto") -> np.ndarray:
    """(H, W, C) from a ``.npy`` file (no pickled objects are loaded)."""
    header = npy_header(path, what, channel_axis)
    _check_size(path, what, header.height, header.width, max_pixels)
    arr = np.asarray(_load_npy(path, what, mmap=False))
    _, _, _, first = _npy_layout(arr.shape, path, what, channel_axis)
    arr = arr[:, :, None] if arr.ndim == 2 else (arr.transpose(1, 2, 0) if first else arr)
    return _numeric(np.ascontiguousarray(arr), path, what)


def _numeric(arr: np.ndarray, path: Path, what: str) -> np.ndarray:
    if arr.dtype.kind not in NUMERIC_KINDS:
        raise DataError(f"{path}: {what} pixels of type {arr.dtype}; pixelwise reads integer and floating-point data")
    return arr.astype(np.uint8) if arr.dtype == bool else arr


# --- 16-bit colour PNG -----------------------------------------------------------------------------------


def png_bit_depth(path: Path) -> tuple[int, int] | None:
    """(bit depth, colour type) from a PNG's IHDR, None for other files."""
    with open(path, "rb") as f:
        head = f.read(26)
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return head[24], head[25]


def is_deep_colour_png(path: Path) -> bool:
    """16 bits per channel with colour (48-bit RGB, 64-bit RGBA, 32-bit gray+alpha): PIL keeps only 8 of them."""
    depth = png_bit_depth(path)
    return depth is not None and depth[0] == 16 and depth[1] in (2, 4, 6)


def read_deep_png(path: Path, what: str) -> np.ndarray:
    """A 16-bit colour PNG as (H, W, C) uint16 RGB (alpha dropped, as for 8-bit PNGs); gray+alpha gives C = 1."""
    import cv2

    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.dtype != np.uint16:
        raise DataError(f"{path}: cannot be read as a 16-bit PNG {what}; re-export or remove the file")
    if arr.ndim == 2:
        return arr[:, :, None]
    rgb = arr[:, :, 2::-1] if arr.shape[2] >= 3 else arr[:, :, :1]
    if png_bit_depth(path)[1] == 4:  # gray + alpha: OpenCV expands the gray to three equal channels
        rgb = rgb[:, :, :1]
    return np.ascontiguousarray(rgb)


# --- rasterio (optional) ---------------------------------------------------------------------------------


def rasterio_module(path: Path | None = None, why: str = "to read it") -> Any:
    """rasterio, or a PixelwiseError saying how to install it."""
    try:
        import rasterio
    except ImportError:
        where = f"{path}: " if path is not None else ""
        raise PixelwiseError(f"{where}rasterio is needed {why}; install the geo extra: {GEO_INSTALL}") from None
    return rasterio


@contextlib.contextmanager
def open_raster(path: Path, what: str = "image") -> Iterator[Any]:
    """A rasterio dataset with a small GDAL block cache; plain (not georeferenced) files open without a warning."""
    rasterio = rasterio_module(path)
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    if Path(path).suffix.lower() in TIFF_SUFFIXES and tiff_header(path, what).rows_as_pages:
        raise DataError(f"{path}: an HxWxC array that tifffile stored as one page per row, of which GDAL reads only "
                        "the first row; re-save it as one page (tifffile.imwrite(..., photometric='minisblack', "
                        "planarconfig='contig')) to read it with GDAL")

    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            ds = rasterio.open(path)
        except RasterioIOError as e:
            raise _unreadable(path, what, "raster", e) from None
        with ds:
            yield ds


def check_bands(path: Path, bands: tuple[int, ...] | None, count: int) -> list[int]:
    """1-based band numbers to read (all without ``bands``); a band the file lacks is a DataError."""
    if bands is None:
        return list(range(1, count + 1))
    beyond = [b for b in bands if b > count]
    if beyond:
        raise DataError(f"{path}: data.bands asks for band {', '.join(map(str, beyond))} but the file has {count} "
                        f"band(s) (bands count from 1)")
    return list(bands)


def raster_header(path: Path, what: str, bands: tuple[int, ...] | None = None) -> Header:
    with open_raster(path, what) as ds:
        dtypes = set(ds.dtypes)
        if len(dtypes) > 1:
            raise DataError(f"{path}: bands of different types ({', '.join(sorted(dtypes))}); pixelwise reads bands "
                            "of one type (choose them with data.bands)")
        return Header(ds.height, ds.width, len(check_bands(path, bands, ds.count)), ds.dtypes[0])


def read_raster(path: Path, what: str, max_pixels: int, bands: tuple[int, ...] | None = None
                ) -> tuple[np.ndarray, int]:
    """(H, W, C) of a raster through GDAL, reading only the bands asked for, and its nodata count
    (``apply_nodata``)."""
    header = raster_header(path, what, bands)
    _check_size(path, what, header.height, header.width, max_pixels)
    with open_raster(path, what) as ds:
        try:
            arr = ds.read(check_bands(path, bands, ds.count))
        except Exception as e:  # RasterioIOError and GDAL's CPLE_* errors for truncated or corrupt blocks
            raise _unreadable(path, what, "raster", e) from None
        nodata = ds.nodata
    return apply_nodata(_numeric(np.ascontiguousarray(arr.transpose(1, 2, 0)), path, what), nodata, what)


def grid_of(path: Path) -> tuple[Any, Any] | None:
    """(CRS, affine transform) of a georeferenced raster, None for a plain one (identity transform, no CRS)."""
    with open_raster(path) as ds:
        if ds.crs is None and ds.transform.is_identity:
            return None
        return ds.crs, ds.transform


def grid_mismatch(image: Path, mask: Path) -> str | None:
    """Why ``mask`` does not lie on ``image``'s pixel grid (other CRS, origin or pixel size), or None.

    Only georeferenced files are compared (sizes are compared for every pair by the checks). Without rasterio the
    georeferencing cannot be interpreted: the caller notes that instead of guessing from raw tags.
    """
    a, b = grid_of(image), grid_of(mask)
    if a is None or b is None:
        return None
    (crs_a, t_a), (crs_b, t_b) = a, b
    if crs_a != crs_b:
        return f"{mask}: the mask's CRS ({crs_b}) is not its image's ({crs_a}, {image.name})"
    pixel = max(abs(t_a.a), abs(t_a.e), 1e-12)
    if not t_a.almost_equals(t_b, precision=pixel * 1e-3):
        return (f"{mask}: the mask lies on another grid than its image ({image.name}): transform "
                f"{tuple(round(v, 6) for v in t_b[:6])} against {tuple(round(v, 6) for v in t_a[:6])}; resample "
                "the mask onto the image's grid (e.g. gdalwarp with the image's extent and resolution)")
    return None
