"""Rasters in, rasters out: ``pixelwise predict`` on TIFF and GeoTIFF (and JPEG 2000 / VRT) images.

With rasterio (the ``geo`` extra) a raster is read window by window, one tile at a time with the bands the run
reads, and its mask is written band of rows by band of rows into a tiled, compressed GeoTIFF with the input's CRS,
transform and size: a 20000x20000 raster never sits whole in memory (what is held is a band of tiles: classes x
two tile heights x the width, see ``sliding_window``). Rows are written in whole blocks of the output's tiling, so
no compressed block is ever rewritten. Without rasterio a plain TIFF is read whole with tifffile and its mask
written with tifffile; a georeferenced one is refused rather than written without its georeference.
Outputs: ``NAME.tif`` (class indices with the class colours as its colour map), with ``--save-probs`` also
``NAME_probs.tif`` (float32, a band per class, named) and ``NAME_entropy.tif`` (uint8, 254 = uniform). Pixels
without data (every band nodata or NaN, or outside GDAL's mask) are declared nodata in each: 255 in the mask
(pixelwise's void class), NaN in the probabilities, 255 in the entropy map. A plain TIFF (no georeference) whose
Orientation tag turns it is read whole and turned, as training reads it; a georeferenced one keeps GDAL's grid.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pixelwise.atomic import atomic_write
from pixelwise.data import raster
from pixelwise.data.classes import IGNORE
from pixelwise.data.filekind import decoder_suffix
from pixelwise.data.io import TIFF_SUFFIXES, orient
from pixelwise.data.pixels import Decoded, ImageSpec, check_pixels, dtype_class, fit_channels, model_input
from pixelwise.errors import DataError, PixelwiseError
from pixelwise.inference.range_check import range_warning, stored_clip
from pixelwise.inference.sliding_window import ProbsFn, sliding_window
from pixelwise.inference.suggest import entropy_map
from pixelwise.inference.tta import tta_probs

if TYPE_CHECKING:
    from pixelwise.inference.files import PredictOptions
    from pixelwise.inference.predictor import Segmenter

RASTER_SUFFIXES = TIFF_SUFFIXES | raster.RASTERIO_SUFFIXES
BLOCK = 256  # tiling of the written GeoTIFFs (and the rows buffered before writing)
NODATA = IGNORE  # the mask's value (and the entropy map's) where the input has no data: pixelwise's void class
SAMPLE_SIDE, SAMPLE_GRID = 64, 4  # the range check reads SAMPLE_GRID x SAMPLE_GRID windows of this side


def is_raster(path: Path) -> bool:
    return path.suffix.lower() in RASTER_SUFFIXES


def raster_outputs(stem: str, save_probs: bool) -> list[str]:
    return [f"{stem}.tif"] + ([f"{stem}_probs.tif", f"{stem}_entropy.tif"] if save_probs else [])


def entropy_image(probs: np.ndarray) -> np.ndarray:
    """Pixel entropy of (K, H, W) probabilities, 255 = uniform over the K classes: (H, W) uint8."""
    return (np.clip(entropy_map(probs), 0.0, 1.0) * 255).round().astype(np.uint8)


def raster_outputs_of(probs: np.ndarray, valid: np.ndarray | None, with_probs: bool = True) -> tuple[Any, ...]:
    """(mask, probabilities, entropy) of (K, H, W) probabilities, ``NODATA`` / NaN / ``NODATA`` where ``valid``
    ((H, W) booleans; None: everywhere) is False. The entropy map tops out at 254, keeping 255 for nodata.
    ``with_probs`` False: the mask alone (None, None for the others), as cheap as an argmax."""
    mask = probs.argmax(axis=0).astype(np.uint8)
    holes = valid is not None and not valid.all()
    if not with_probs:
        if holes:
            mask[~valid] = NODATA
        return mask, None, None
    probs = probs.astype(np.float32)
    entropy = np.minimum(entropy_image(probs), NODATA - 1)
    if holes:
        mask[~valid], probs[:, ~valid], entropy[~valid] = NODATA, np.nan, NODATA
    return mask, probs, entropy


def georeferenced(src: Any) -> bool:
    """Whether a rasterio dataset has a georeference: a CRS, a transform, ground control points or RPCs."""
    return src.crs is not None or not src.transform.is_identity or bool(src.gcps[0]) or bool(src.rpcs)


class WindowReader:
    """An (H, W, C) raster whose slices ``[y0:y1, x0:x1]`` are read from disk as model input (uint8 or float32).

    Where each window has data is kept, row by row, until ``valid_rows`` hands it out with the finished rows (GDAL's
    dataset-mask semantics: a pixel has none when every band read is masked (nodata value, internal mask, alpha)
    or, in float rasters, NaN)."""

    def __init__(self, ds: Any, path: Path, spec: ImageSpec) -> None:
        from rasterio.enums import ColorInterp, MaskFlags

        self.ds, self.path, self.spec = ds, path, spec
        self.bands = raster.check_bands(path, spec.bands, ds.count)
        self.shape = (ds.height, ds.width, spec.channels or len(self.bands))
        self.internal_mask = any(MaskFlags.per_dataset in flags for flags in ds.mask_flag_enums)  # GDAL's mask band
        data_bands = [b for b in self.bands if ds.colorinterp[b - 1] != ColorInterp.alpha] or self.bands
        self.mask_bands = [b for b in data_bands if MaskFlags.all_valid not in ds.mask_flag_enums[b - 1]]
        self.valid_top, self.valid = 0, np.ones((0, ds.width), bool)  # rows valid_top.. of the windows read

    def read(self, ys: slice, xs: slice) -> tuple[np.ndarray, np.ndarray | None]:
        """The window's pixels as stored (h, w, C) and where it has data ((h, w) booleans; None: everywhere)."""
        from rasterio.windows import Window

        window = Window(xs.start, ys.start, xs.stop - xs.start, ys.stop - ys.start)
        try:
            arr = self.ds.read(self.bands, window=window).transpose(1, 2, 0)
            if self.internal_mask:
                masks = self.ds.dataset_mask(window=window)[None]
            else:
                masks = self.ds.read_masks(self.mask_bands, window=window) if self.mask_bands else None
        except Exception as e:  # RasterioIOError and GDAL's CPLE_* errors for truncated or corrupt blocks
            why = e.__cause__ or e  # RasterioIOError's "Read failed" has GDAL's reason as its cause
            raise DataError(f"{self.path}: cannot be read at row {ys.start}, column {xs.start} "
                            f"({type(why).__name__}: {why}); re-export or remove the file") from None
        valid = None if masks is None else masks.any(axis=0)
        if arr.dtype.kind == "f":
            nan = np.isnan(arr).all(axis=2)
            valid = ~nan if valid is None else valid & ~nan
        return arr, valid

    def __getitem__(self, key: tuple[slice, slice]) -> np.ndarray:
        ys, xs = key
        arr, valid = self.read(ys, xs)
        grow = ys.stop - self.valid_top - len(self.valid)
        if grow > 0:
            self.valid = np.concatenate([self.valid, np.ones((grow, self.shape[1]), bool)])
        if valid is not None:
            self.valid[ys.start - self.valid_top : ys.stop - self.valid_top, xs] = valid
        # nodata as the whole-file readers treat it (raster.apply_nodata): float pixels there become NaN
        arr, _ = raster.apply_nodata(arr, self.ds.nodata, "image", valid if self.internal_mask else None)
        try:
            arr = check_pixels(fit_channels(Decoded(arr, 1), self.spec.channels, self.path), self.spec, self.path)
        except DataError as e:  # say where in the raster, not where in the window
            raise DataError(f"{e} (in the window at row {ys.start}, column {xs.start})") from None
        return model_input(arr)

    def valid_rows(self, y0: int, y1: int) -> np.ndarray:
        """(y1 - y0, W) True where rows y0..y1 of the windows read have data; rows above y1 are forgotten (the
        sliding window finishes rows top to bottom and reads none of them again)."""
        rows = self.valid[y0 - self.valid_top : y1 - self.valid_top]
        self.valid, self.valid_top = self.valid[y1 - self.valid_top :], y1
        return rows

    def sample(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Pixels as stored and their validity from a grid of small windows spread over the raster (a few blocks
        read, whatever its size): what the range check looks at."""
        (h, w, _), (bh, bw), side = self.shape, self.ds.block_shapes[0], SAMPLE_SIDE

        def starts(length: int, block: int) -> np.ndarray:  # on block edges: a tiled file decodes one block each
            grid = np.linspace(0, max(length - side, 0), SAMPLE_GRID).astype(int)
            return np.unique(grid // block * block if block < length else grid)

        ys, xs = starts(h, bh), starts(w, bw)
        parts = [self.read(slice(y, min(y + side, h)), slice(x, min(x + side, w))) for y in ys for x in xs]
        pixels = np.concatenate([a.reshape(-1, a.shape[2]) for a, _ in parts])
        if all(v is None for _, v in parts):
            return pixels, None
        return pixels, np.concatenate([(np.ones(a.shape[:2], bool) if v is None else v).ravel() for a, v in parts])


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
    notes: list[str] = []
    if path.suffix.lower() in TIFF_SUFFIXES:
        header = raster.tiff_header(path, "image", seg.spec.pages_as_channels)
        if header.pages > 1 and not seg.spec.pages_as_channels:
            raise DataError(raster.pages_message(path, "image", header))
        try:
            raster.rasterio_module()
        except PixelwiseError:  # no geo extra: a plain TIFF is still predicted, whole
            return _predict_tiff_in_memory(seg, path, targets, opts)
        if header.pages > 1 or header.rows_as_pages:  # GDAL reads a TIFF's first page only: decoded whole instead
            return _predict_tiff_in_memory(seg, path, targets, opts)
        orientation, _ = _tiff_tags(path)
        if orientation != 1:  # GDAL reads a TIFF as stored; training (and Segmenter.predict) turn it upright
            with raster.open_raster(path) as src:
                on_grid = georeferenced(src)
            if not on_grid:
                return _predict_tiff_in_memory(seg, path, targets, opts)
            notes.append(f"{path}: the TIFF's Orientation tag ({orientation}) is ignored: a georeferenced raster is "
                         "predicted on its grid, as GDAL reads it (training reads such a file turned)")
    written, warnings = _predict_streamed(seg, path, targets, opts)
    return written, notes + warnings


def _predict_streamed(seg: Segmenter, path: Path, targets: list[Path], opts: PredictOptions
                      ) -> tuple[list[Path], list[str]]:
    warnings: list[str] = []
    with raster.open_raster(path) as src:
        reader = WindowReader(src, path, seg.spec)
        dtypes = sorted({src.dtypes[b - 1] for b in reader.bands})
        if len(dtypes) > 1:  # as training refuses them (raster.raster_header); GDAL cannot read them as one array
            raise DataError(f"{path}: bands of different types ({', '.join(dtypes)}); pixelwise reads bands of one "
                            "type (choose them with data.bands)")
        if seg.spec.dtype and dtype_class(dtypes[0]) != dtype_class(seg.spec.dtype):
            raise DataError(f"{path}: pixels are {dtypes[0]}, but the model was trained on {seg.spec.dtype} "
                            "images; pixelwise does not rescale one type to another")
        if georeferenced(src) and src.crs is None and not src.gcps[0] and not src.rpcs:
            warnings.append(f"{path}: GeoTIFF without a CRS (a transform but no coordinate system): the predicted "
                            "mask has the same transform and no CRS either")
        clip = stored_clip(seg.backend)
        if clip is not None and len(clip) == len(reader.bands):  # another channel count fails below, named
            off_scale = range_warning(path, clip, *reader.sample(), bands=seg.spec.bands)
            warnings += [off_scale] if off_scale else []
        h, w, _ = reader.shape
        tile = seg._tile(reader.shape, opts.tile) or (h, w)
        k, names = seg.table.num_classes, seg.table.names
        base = {"driver": "GTiff", "width": w, "height": h, "crs": src.crs, "transform": src.transform,
                "tiled": True, "blockxsize": BLOCK, "blockysize": BLOCK, "compress": "deflate", "BIGTIFF": "IF_SAFER"}
        if src.rpcs:
            base["rpcs"] = src.rpcs

        def write(tmps: list[Path]) -> None:
            import rasterio

            files = [rasterio.open(tmps[0], "w", **base, count=1, dtype="uint8", nodata=NODATA)]
            if opts.save_probs:
                files.append(rasterio.open(tmps[1], "w", **base, count=k, dtype="float32", predictor=3,
                                           nodata=float("nan")))
                files.append(rasterio.open(tmps[2], "w", **base, count=1, dtype="uint8", nodata=NODATA))
            try:
                _describe(files, seg, names, src)
                rows = [BlockRows(f) for f in files]
                for y0, y1, probs in sliding_window(_probs_fn(seg, opts), reader, tile, opts.overlap):
                    mask, probs, entropy = raster_outputs_of(probs, reader.valid_rows(y0, y1), opts.save_probs)
                    rows[0].add(mask[None])
                    if opts.save_probs:
                        rows[1].add(probs)
                        rows[2].add(entropy[None])
                for r in rows:
                    r.add(np.zeros((r.pending.shape[0], 0, w), r.pending.dtype), final=True)
            finally:
                for f in files:
                    f.close()

        _atomic_many(targets, write)
    return targets, warnings


def _describe(files: list[Any], seg: Segmenter, names: list[str], src: Any) -> None:
    """Colour map and class names on the mask (nodata transparent), class names on the probability bands, GCPs
    carried over."""
    colours = {i: (*rgb, 255) for i, rgb in enumerate(seg.table.palette)}
    files[0].write_colormap(1, {**colours, NODATA: (0, 0, 0, 0)})
    files[0].update_tags(classes=json.dumps(names))
    files[0].set_band_description(1, f"class ({NODATA}: no data)")
    if len(files) > 1:
        for i, name in enumerate(names, start=1):
            files[1].set_band_description(i, name)
        files[2].set_band_description(1, f"entropy ({NODATA - 1}: uniform over the classes, {NODATA}: no data)")
    if src.gcps[0] and src.transform.is_identity:
        for f in files:
            f.gcps = src.gcps


def _tiff_tags(path: Path) -> tuple[int, bool]:
    """A TIFF's orientation (1 when absent or invalid) and whether it carries RPCs (tifffile, without GDAL)."""
    try:
        with raster.open_tiff(path) as tif:
            tags = tif.pages[0].tags
            orientation = int(tags["Orientation"].value) if "Orientation" in tags else 1
            return (orientation if 1 <= orientation <= 8 else 1), "RPCCoefficientTag" in tags
    except Exception:  # an unreadable file is reported by the decoder
        return 1, False


def _tiff_valid(path: Path, decoded: Decoded) -> np.ndarray:
    """(H, W) True where a TIFF read whole has data, as ``WindowReader`` decides: not every channel its GDAL_NODATA
    value or NaN (a float TIFF's nodata and masked pixels are NaN by now), and inside GDAL's internal mask; found as
    the checks find them (``raster.declared_nodata``, ``raster.nodata_hits``)."""
    arr = decoded.pixels
    if arr.dtype.kind == "f":
        return ~np.isnan(arr).all(axis=2)
    nodata, inside = raster.declared_nodata(path, decoder_suffix(path))
    hit = raster.nodata_hits(arr, nodata, None if inside is None else orient(inside, decoded.orientation))
    return np.ones(arr.shape[:2], bool) if hit is None else ~hit.all(axis=2)


def _predict_tiff_in_memory(seg: Segmenter, path: Path, targets: list[Path], opts: PredictOptions
                            ) -> tuple[list[Path], list[str]]:
    """A TIFF read whole (tifffile) and its mask written with tifffile; georeferenced files need rasterio."""
    import tifffile

    from pixelwise.data.io import read_image_decoded

    if raster.has_geotags(path) or _tiff_tags(path)[1]:
        raster.rasterio_module(path, "to keep its georeference (CRS, transform, RPCs) in the predicted mask")
    image, decoded = read_image_decoded(path, seg.spec)
    valid = _tiff_valid(path, decoded)
    clip = stored_clip(seg.backend)
    step = max(1, int(np.sqrt(valid.size / (SAMPLE_GRID * SAMPLE_SIDE) ** 2)))  # about as many pixels as streamed
    off_scale = range_warning(path, clip, decoded.pixels[::step, ::step], valid[::step, ::step], seg.spec.bands
                              ) if clip is not None and len(clip) == decoded.pixels.shape[2] else None
    kwargs = {"tile": opts.tile, "overlap": opts.overlap, "tta": opts.tta, "scales": opts.scales}
    if opts.save_probs:
        mask, probs, entropy = raster_outputs_of(seg.probabilities(image, **kwargs), valid)
    else:  # the mask alone: argmax band by band, never the whole probability map in memory
        mask = seg.predict(image, **kwargs)
        mask[~valid] = NODATA
    palette = np.zeros((3, 256), np.uint16)
    palette[:, : len(seg.table.palette)] = np.asarray(seg.table.palette, np.uint16).T * 257
    nodata = [(42113, "s", 0, str(NODATA), True)]  # GDAL_NODATA, as GDAL writes it
    outputs: list[tuple[np.ndarray, dict[str, Any]]] = [
        (mask, {"photometric": "palette", "colormap": palette, "extratags": nodata})]
    if opts.save_probs:
        outputs += [(probs, {"photometric": "minisblack", "planarconfig": "separate",
                             "extratags": [(42113, "s", 0, "nan", True)]}),
                    (entropy, {"photometric": "minisblack", "extratags": nodata})]
    for target, (data, options) in zip(targets, outputs, strict=True):
        atomic_write(target, lambda tmp, d=data, o=options: tifffile.imwrite(tmp, d, compression="zlib", **o))
    return targets, [off_scale] if off_scale else []
