"""Rasters in, rasters out: ``pixelwise predict`` on TIFF and GeoTIFF (and JPEG 2000 / VRT) images.

With rasterio (the ``geo`` extra) a raster is read window by window, one tile at a time with the bands the run
reads, and its mask is written band of rows by band of rows into a tiled, compressed GeoTIFF with the input's CRS,
transform and size: a 20000x20000 raster never sits whole in memory (what is held is a band of tiles: classes x
two tile heights x the width, see ``sliding_window``). Rows are written in whole blocks of the output's tiling, so
no compressed block is ever rewritten. Without rasterio a plain TIFF is read whole with tifffile and its mask
written with tifffile; a georeferenced one is refused rather than written without its georeference.
Outputs: ``NAME.tif`` (class indices with the class colours as its colour map), with ``--save-probs`` also
``NAME_probs.tif`` (float32, a band per class, named) and ``NAME_entropy.tif`` (uint8, 255 = uniform).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pixelwise.atomic import atomic_write
from pixelwise.data import raster
from pixelwise.data.io import TIFF_SUFFIXES
from pixelwise.data.pixels import Decoded, ImageSpec, check_pixels, dtype_class, fit_channels, model_input
from pixelwise.errors import DataError, PixelwiseError
from pixelwise.inference.sliding_window import ProbsFn, sliding_window
from pixelwise.inference.suggest import entropy_map
from pixelwise.inference.tta import tta_probs

if TYPE_CHECKING:
    from pixelwise.inference.files import PredictOptions
    from pixelwise.inference.predictor import Segmenter

RASTER_SUFFIXES = TIFF_SUFFIXES | raster.RASTERIO_SUFFIXES
BLOCK = 256  # tiling of the written GeoTIFFs (and the rows buffered before writing)


def is_raster(path: Path) -> bool:
    return path.suffix.lower() in RASTER_SUFFIXES


def raster_outputs(stem: str, save_probs: bool) -> list[str]:
    return [f"{stem}.tif"] + ([f"{stem}_probs.tif", f"{stem}_entropy.tif"] if save_probs else [])


def entropy_image(probs: np.ndarray) -> np.ndarray:
    """Pixel entropy of (K, H, W) probabilities, 255 = uniform over the K classes: (H, W) uint8."""
    return (np.clip(entropy_map(probs), 0.0, 1.0) * 255).round().astype(np.uint8)


class WindowReader:
    """An (H, W, C) raster whose slices ``[y0:y1, x0:x1]`` are read from disk as model input (uint8 or float32)."""

    def __init__(self, ds: Any, path: Path, spec: ImageSpec) -> None:
        self.ds, self.path, self.spec = ds, path, spec
        self.bands = raster.check_bands(path, spec.bands, ds.count)
        self.shape = (ds.height, ds.width, spec.channels or len(self.bands))
        from rasterio.enums import MaskFlags

        self.internal_mask = any(MaskFlags.per_dataset in flags for flags in ds.mask_flag_enums)  # GDAL's mask band

    def __getitem__(self, key: tuple[slice, slice]) -> np.ndarray:
        from rasterio.windows import Window

        ys, xs = key
        window = Window(xs.start, ys.start, xs.stop - xs.start, ys.stop - ys.start)
        arr = self.ds.read(self.bands, window=window).transpose(1, 2, 0)
        # nodata as the whole-file readers treat it (raster.apply_nodata): float pixels there become NaN
        valid = self.ds.dataset_mask(window=window) != 0 if self.internal_mask else None
        arr, _ = raster.apply_nodata(arr, self.ds.nodata, "image", valid)
        try:
            arr = check_pixels(fit_channels(Decoded(arr, 1), self.spec.channels, self.path), self.spec, self.path)
        except DataError as e:  # say where in the raster, not where in the window
            raise DataError(f"{e} (in the window at row {ys.start}, column {xs.start})") from None
        return model_input(arr)


def _tile_tta(backend: ProbsFn, flips: tuple[str, ...], scales: tuple[float, ...]) -> ProbsFn:
    """Test-time augmentation inside each tile (a streamed raster is never whole in memory to flip)."""
    def one(img: np.ndarray) -> np.ndarray:
        return backend(np.ascontiguousarray(img.transpose(2, 0, 1))[None])[0]

    return lambda batch: np.stack([tta_probs(one, b.transpose(1, 2, 0), flips, scales) for b in batch])


class BlockRows:
    """Collects row blocks (bands, rows, W) and writes them to a rasterio dataset in whole multiples of BLOCK rows."""

    def __init__(self, dst: Any) -> None:
        self.dst, self.y, self.pending = dst, 0, None

    def add(self, rows: np.ndarray, final: bool = False) -> None:
        from rasterio.windows import Window

        self.pending = rows if self.pending is None else np.concatenate([self.pending, rows], axis=1)
        n = self.pending.shape[1] if final else self.pending.shape[1] // BLOCK * BLOCK
        if n:
            self.dst.write(self.pending[:, :n], window=Window(0, self.y, self.pending.shape[2], n))
            self.y, self.pending = self.y + n, self.pending[:, n:]


def _atomic_many(paths: list[Path], write: Callable[[list[Path]], None]) -> None:
    """Write several files at once, each atomically (temporary file, fsync, rename), all or none replaced."""
    if not paths:
        write([])
        return
    atomic_write(paths[0], lambda tmp: _atomic_many(paths[1:], lambda rest: write([tmp, *rest])))


def _probs_fn(seg: Segmenter, opts: PredictOptions) -> ProbsFn:
    if opts.tta or tuple(opts.scales) != (1.0,):
        return _tile_tta(seg.backend, ("h", "v") if opts.tta else (), tuple(opts.scales))
    return seg.backend


def predict_raster(seg: Segmenter, path: Path, out_dir: Path, stem: str, opts: PredictOptions
                   ) -> tuple[list[Path], list[str]]:
    """Predict one raster into ``out_dir``: the written files and warnings (e.g. a GeoTIFF without a CRS)."""
    targets = [out_dir / name for name in raster_outputs(stem, opts.save_probs)]
    if path.suffix.lower() in TIFF_SUFFIXES:
        header = raster.tiff_header(path, "image", seg.spec.pages_as_channels)
        if header.pages > 1 and not seg.spec.pages_as_channels:
            raise DataError(raster.pages_message(path, "image", header))
        try:
            raster.rasterio_module()
        except PixelwiseError:  # no geo extra: a plain TIFF is still predicted, whole
            return _predict_tiff_in_memory(seg, path, targets, opts), []
        if header.pages > 1:  # GDAL reads a TIFF's first page only: pages as channels are decoded whole instead
            return _predict_tiff_in_memory(seg, path, targets, opts), []
    return _predict_streamed(seg, path, targets, opts)


def _predict_streamed(seg: Segmenter, path: Path, targets: list[Path], opts: PredictOptions
                      ) -> tuple[list[Path], list[str]]:
    warnings: list[str] = []
    with raster.open_raster(path) as src:
        if seg.spec.dtype and dtype_class(src.dtypes[0]) != dtype_class(seg.spec.dtype):
            raise DataError(f"{path}: pixels are {src.dtypes[0]}, but the model was trained on {seg.spec.dtype} "
                            "images; pixelwise does not rescale one type to another")
        georeferenced = src.crs is not None or not src.transform.is_identity or bool(src.gcps[0])
        if georeferenced and src.crs is None and not src.gcps[0]:
            warnings.append(f"{path}: GeoTIFF without a CRS (a transform but no coordinate system): the predicted "
                            "mask has the same transform and no CRS either")
        reader = WindowReader(src, path, seg.spec)
        h, w, _ = reader.shape
        tile = seg._tile(reader.shape, opts.tile) or (h, w)
        k, names = seg.table.num_classes, seg.table.names
        base = {"driver": "GTiff", "width": w, "height": h, "crs": src.crs, "transform": src.transform,
                "tiled": True, "blockxsize": BLOCK, "blockysize": BLOCK, "compress": "deflate", "BIGTIFF": "IF_SAFER"}

        def write(tmps: list[Path]) -> None:
            import rasterio

            files = [rasterio.open(tmps[0], "w", **base, count=1, dtype="uint8")]
            if opts.save_probs:
                files.append(rasterio.open(tmps[1], "w", **base, count=k, dtype="float32", predictor=3))
                files.append(rasterio.open(tmps[2], "w", **base, count=1, dtype="uint8"))
            try:
                _describe(files, seg, names, src)
                rows = [BlockRows(f) for f in files]
                for _, _, probs in sliding_window(_probs_fn(seg, opts), reader, tile, opts.overlap):
                    rows[0].add(probs.argmax(axis=0).astype(np.uint8)[None])
                    if opts.save_probs:
                        rows[1].add(probs.astype(np.float32))
                        rows[2].add(entropy_image(probs)[None])
                for r in rows:
                    r.add(np.zeros((r.pending.shape[0], 0, w), r.pending.dtype), final=True)
            finally:
                for f in files:
                    f.close()

        _atomic_many(targets, write)
    return targets, warnings


def _describe(files: list[Any], seg: Segmenter, names: list[str], src: Any) -> None:
    """Colour map and class names on the mask, class names on the probability bands, GCPs carried over."""
    files[0].write_colormap(1, {i: (*rgb, 255) for i, rgb in enumerate(seg.table.palette)})
    files[0].update_tags(classes=json.dumps(names))
    files[0].set_band_description(1, "class")
    if len(files) > 1:
        for i, name in enumerate(names, start=1):
            files[1].set_band_description(i, name)
        files[2].set_band_description(1, "entropy (255: uniform over the classes)")
    if src.gcps[0] and src.transform.is_identity:
        for f in files:
            f.gcps = src.gcps


def _predict_tiff_in_memory(seg: Segmenter, path: Path, targets: list[Path], opts: PredictOptions) -> list[Path]:
    """A TIFF read whole (tifffile) and its mask written with tifffile; georeferenced files need rasterio."""
    import tifffile

    from pixelwise.data.io import read_image

    if raster.has_geotags(path):
        raster.rasterio_module(path, "to keep its georeference (CRS, transform) in the predicted mask")
    image = read_image(path, seg.spec)
    kwargs = {"tile": opts.tile, "overlap": opts.overlap, "tta": opts.tta, "scales": opts.scales}
    probs = seg.probabilities(image, **kwargs) if opts.save_probs else None
    mask = probs.argmax(axis=0).astype(np.uint8) if probs is not None else seg.predict(image, **kwargs)
    palette = np.zeros((3, 256), np.uint16)
    palette[:, : len(seg.table.palette)] = np.asarray(seg.table.palette, np.uint16).T * 257
    outputs: list[tuple[np.ndarray, dict[str, Any]]] = [(mask, {"photometric": "palette", "colormap": palette})]
    if probs is not None:
        outputs += [(probs.astype(np.float32), {"photometric": "minisblack", "planarconfig": "separate"}),
                    (entropy_image(probs), {"photometric": "minisblack"})]
    for target, (data, options) in zip(targets, outputs, strict=True):
        atomic_write(target, lambda tmp, d=data, o=options: tifffile.imwrite(tmp, d, compression="zlib", **o))
    return targets
