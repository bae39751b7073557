"""Validate every pair before training: readable, same size, mask values known. Errors name the files."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from pixelwise.data import raster
from pixelwise.data.classes import IGNORE, UNKNOWN, ClassTable
from pixelwise.data.dataset import DecodedCache, Pair
from pixelwise.data.filekind import decoder_suffix
from pixelwise.data.io import ColorCodes, orient, probe, read_image_decoded, read_mask_stored
from pixelwise.data.normalization import sample_pixels, samples_per_image, valid_extent, valid_moments
from pixelwise.data.pixels import ChannelMismatch, Decoded, DtypeMismatch, ImageSpec, dtype_class
from pixelwise.errors import DataError, PixelwiseError, list_offenders
from pixelwise.progress import track

MAX_INFERRED_CLASSES = 64


# What is wrong with a pair, as the heading its files are listed under (check and train group alike).
UNREADABLE = "files that cannot be read as images"
NO_MASK = "images without a mask"
SIZE = "masks whose size differs from their image's"
VALUES = "masks with values that are not in the class table"
TABLE = "the class table cannot be inferred"
MIXED = "images unlike the rest of the dataset"


@dataclass
class PairInfo:
    pair: Pair
    error: str | None = None
    problem: str | None = None  # the kind of ``error`` (one of the headings above)
    size: tuple[int, int] | None = None  # (height, width) of the image
    values: np.ndarray | None = None  # raw mask values present
    counts: np.ndarray | None = None  # pixels per raw value in ``values``
    orientation: int = 1  # EXIF orientation of the image (applied when decoding)
    file_channels: int = 0  # channels the file holds (after data.bands): 1 gray, 3 colour, N multichannel
    moments: np.ndarray | None = None  # (3, C): per channel mean, mean of squares, count of valid (8-bit: all) pixels
    digest: str | None = None  # hash of the image's pixels (with ``fingerprint``)
    row_sums: np.ndarray | None = None  # per value in ``values``: sum of its pixels' relative rows (0 top, 1 bottom)
    dtype: str | None = None  # the image's pixel type as decoded (the file's; floating point as float32)
    stored_dtype: str | None = None  # the type the file stores (float64 stays float64 here)
    mismatch: tuple[str, Any] | None = None  # ("channels", found) or ("dtype", found): unlike the dataset's
    low: np.ndarray | None = None  # (C,) per-channel minimum and maximum of the image's valid pixels (NaN: none)
    high: np.ndarray | None = None
    valid: np.ndarray | None = None  # (C,) per channel, the pixels with data (``_valid_pixels``)
    samples: np.ndarray | None = None  # (n, C) valid pixels drawn for the dataset's statistics (NaN: invalid there)
    void_unsure: bool = False  # no class table yet, mask values 0 and 255 only: 255 taken for a class
    float_mask: str | None = None  # the floating-point type the mask was stored in, if it was
    grid_unchecked: bool = False  # georeferenced pair whose grids could not be compared (rasterio missing)
    nodata: int = 0  # integer pixels holding the image's declared nodata value (read as stored)


@dataclass
class DataSummary:
    """What the checks learnt: channels, the class table, image sizes and class pixel counts."""

    channels: int
    table: ClassTable
    sizes: dict[str, tuple[int, int]]  # image path -> (height, width)
    class_pixels: np.ndarray  # (num_classes,) labelled pixels per class
    void_pixels: int
    image_class_pixels: dict[str, np.ndarray] = field(default_factory=dict)  # image path -> pixels per class
    notes: list[str] = field(default_factory=list)
    dtype: str = "uint8"  # the images' pixel type as decoded: uint8 (the fast path), uint16, int16, float32, ...
    spec: ImageSpec = field(default_factory=ImageSpec)  # how the files were read (channels, bands, ...)
    samples: dict[str, np.ndarray] = field(default_factory=dict)  # image path -> (n, C) sampled pixels


def decide_spec(pairs: list[Pair], requested: int | str | ImageSpec) -> ImageSpec:
    """The channels and pixel type to read every image with, decided from file headers where not given.

    8-bit gray and colour images: 3 channels when any is colour, else 1 (they convert into each other). Any other
    data: the first readable image's channels and type; images unlike it are reported by the scan.
    """
    spec = requested if isinstance(requested, ImageSpec) else ImageSpec(
        channels=None if requested == "auto" else int(requested))
    if spec.channels is not None and spec.dtype is not None:
        return spec
    first, colour = None, False
    for pair in pairs:
        try:
            header = probe(pair.image, spec)
        except DataError:
            continue  # reported with the full scan
        first = first or header
        if not (first.dtype == header.dtype == "uint8" and header.channels in (1, 3) and first.channels in (1, 3)):
            break  # only 8-bit gray/colour data looks further (for a colour image)
        if header.channels == 3:
            colour = True
            break
    if first is None:
        return replace(spec, channels=spec.channels or 1)
    eight_bit = first.dtype == "uint8" and first.channels in (1, 3)
    channels = spec.channels or ((3 if colour else 1) if eight_bit else first.channels)
    return replace(spec, channels=channels, dtype=spec.dtype or first.dtype)


ROTATED = {5, 6, 7, 8}  # EXIF orientations that swap width and height


def _valid_pixels(path: Path, decoded: Decoded, image: np.ndarray, void: np.ndarray | None) -> np.ndarray | None:
    """(H, W, C) True where a pixel's channel holds data ((H, W, 1) for every channel alike), None where all do: not
    NaN or infinite (before data.nan_fill), not the declared nodata value or outside GDAL's internal mask (integer
    pixels keep the value: found again as ``raster.apply_nodata`` found them), not void (``void``, (H, W))."""
    raw, ok = decoded.pixels, None
    if raw.dtype.kind == "f":
        ok = np.isfinite(raw)
    elif decoded.nodata:
        nodata, inside = raster.declared_nodata(path, decoder_suffix(path))
        hit = raster.nodata_hits(raw, nodata, None if inside is None else orient(inside, decoded.orientation))
        ok = None if hit is None else ~hit
    if ok is not None and ok.shape[2] != image.shape[2]:  # 8-bit gray/colour converted: whole pixels count
        ok = ok.all(axis=2, keepdims=True)
    if void is not None:
        ok = ~void[:, :, None] if ok is None else ok & ~void[:, :, None]
    return None if ok is None or ok.all() else ok


def _scan_one(pair: Pair, spec: ImageSpec, cache: DecodedCache | None, colors: ColorCodes | None = None,
              fingerprint: bool = False, index: int = 0, sample: int = 0, void: np.ndarray | None = None) -> PairInfo:
    """``void``: the class table's void values (booleans by raw mask value), None while there is no table."""
    info = PairInfo(pair)
    if pair.mask is None:
        info.error, info.problem = f"{pair.image}: no mask found for this image", NO_MASK
        return info
    try:
        image, decoded = read_image_decoded(pair.image, spec)
        info.orientation, info.file_channels = decoded.orientation, decoded.pixels.shape[2]
        info.nodata = decoded.nodata
        mask, stored = read_mask_stored(pair.mask, colors)
    except (ChannelMismatch, DtypeMismatch) as e:
        info.error, info.mismatch = str(e), ("channels" if isinstance(e, ChannelMismatch) else "dtype", e.found)
        return info
    except DataError as e:
        info.error, info.problem = str(e), UNREADABLE
        return info
    info.dtype, info.stored_dtype = str(image.dtype), str(decoded.pixels.dtype)
    info.float_mask = stored if np.dtype(stored).kind == "f" else None
    info.size = image.shape[:2]
    if fingerprint:
        info.digest = hashlib.blake2b(image.tobytes(), digest_size=16).hexdigest()
    if mask.shape[:2] != image.shape[:2]:
        h, w = image.shape[:2]
        mh, mw = mask.shape[:2]
        info.error = f"{pair.mask}: mask is {mw}x{mh} but its image is {w}x{h} ({pair.image.name})"
        info.problem = SIZE
        if info.orientation in ROTATED and (mh, mw) == (w, h):
            info.error += (
                f"; the image carries EXIF orientation {info.orientation} (shown rotated by 90 degrees), which "
                "pixelwise applies as OpenCV and annotation tools do, while the mask matches the stored pixels: "
                "rotate the mask to the displayed image, or remove the orientation tag from the image"
            )
        return info
    if decoded.georeferenced and pair.mask.suffix.lower() in raster.TIFF_SUFFIXES | raster.RASTERIO_SUFFIXES:
        try:
            info.error = raster.grid_mismatch(pair.image, pair.mask)
        except DataError as e:
            info.error = str(e)
        except PixelwiseError:  # rasterio missing: the georeferencing cannot be read, only noted
            info.grid_unchecked = True
        if info.error:
            return info
    if mask.dtype == np.uint8:
        counts = np.bincount(mask.ravel(), minlength=256)
        info.values = np.flatnonzero(counts)
        info.counts = counts[info.values]
        codes, slots = mask, 256
    else:
        info.values, inverse, info.counts = np.unique(mask, return_inverse=True, return_counts=True)
        codes, slots = inverse.reshape(mask.shape), len(info.values)
    if fingerprint:  # where each value lies vertically: street scenes have sky above road, micrographs nothing
        rows = np.broadcast_to((np.arange(mask.shape[0]) / max(mask.shape[0] - 1, 1))[:, None], mask.shape)
        sums = np.bincount(codes.ravel(), weights=rows.ravel(), minlength=slots)
        info.row_sums = sums[info.values] if mask.dtype == np.uint8 else sums
    if void is None and 255 in info.values:  # no table yet: 255 is void unless the masks hold only 0 and 255
        info.void_unsure = set(info.values.tolist()) <= {0, 255}
        void = None if info.void_unsure else np.arange(65536) == 255
    valid = _valid_pixels(pair.image, decoded, image, None if void is None else void[mask])
    info.low, info.high, info.valid = valid_extent(image, valid)
    if sample:
        info.samples = sample_pixels(image, sample, index, valid)
    if fingerprint:
        # 8-bit: the intensity the encoder's normalisation meets, every pixel (the samples leave the invalid out)
        info.moments = valid_moments(image, None if image.dtype == np.uint8 else valid)
    if cache is not None:
        cache.put(pair.image, image)
        cache.put(pair.mask, mask)
    return info


def infer_table(values: Iterable[int]) -> tuple[ClassTable, str]:
    """A class table guessed from the mask values found, with a note saying what was assumed."""
    present = set(int(v) for v in values)
    hint = "write a classes.yaml (names, ignore_index, mapping) beside the data to say otherwise"
    if present <= {0, 255}:
        table = ClassTable(names=["value_0", "value_255"], mapping={0: 0, 255: 1})
        return table, f"binary masks (0 -> class 0, 255 -> class 1) assumed; {hint}"
    labels = present - {255}
    top = max(labels)
    if top >= MAX_INFERRED_CLASSES:
        raise DataError(
            f"masks hold values up to {top} ({len(present)} distinct): too many to guess a class table. "
            "Masks must hold one value per class; if they do, give data.classes (a classes.yaml with names "
            "and, if needed, a mapping of mask values to classes)."
        )
    table = ClassTable(names=[f"class_{i}" for i in range(top + 1)], ignore_index=255 if 255 in present else None)
    void = ", 255 = void" if 255 in present else ""
    return table, f"{top + 1} classes (mask values 0..{top}{void}) assumed; {hint}"


@dataclass
class Scan:
    """Every pair decoded: what was found per pair, the problems (file named in each) and the class table."""

    infos: list[PairInfo]
    channels: int
    table: ClassTable | None
    problems: list[str]
    notes: list[str]
    spec: ImageSpec = field(default_factory=ImageSpec)  # how the images were read, with their pixel type
    dtype: str = "uint8"  # the images' pixel type as decoded (``DataSummary.dtype``)
    groups: dict[str, list[str]] = field(default_factory=dict)  # problem heading -> its messages, file by file

    def grouped(self) -> list[str]:
        """One block per kind of problem: its heading, up to 10 files and the count (what check and train show)."""
        return [list_offenders(heading, lines) for heading, lines in self.groups.items()]


def scan_pairs(
    pairs: list[Pair],
    table: ClassTable | None,
    channels: int | str | ImageSpec = "auto",
    cache: DecodedCache | None = None,
    label: str = "Checking data",
    fingerprint: bool = False,
) -> Scan:
    """Decode every pair and collect the problems without raising (``check_pairs`` raises; ``pixelwise check``
    lists). ``fingerprint`` also keeps per-image intensity moments and a pixel hash. Every image's value range
    and a sample of its pixels are kept (the dataset's per-channel statistics and normalisation)."""
    spec = decide_spec(pairs, channels)
    colors = table.color_codes() if table is not None and table.color_masks else None
    sample = samples_per_image(len(pairs))

    def scan(indices: list[int], void: np.ndarray | None, label: str) -> list[PairInfo]:
        with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
            return list(track(pool.map(lambda k: _scan_one(pairs[k], spec, cache, colors, fingerprint, k, sample, void),
                                       indices), total=len(indices), label=label))

    infos = scan(list(range(len(pairs))), None if table is None else table.lut() == IGNORE, label)
    mixed = [m for m in (_mixed(infos, spec, "dtype"), _mixed(infos, spec, "channels")) if m]
    notes: list[str] = []
    rotated = [i for i in infos if not i.error and i.orientation != 1]
    if rotated:
        notes.append(f"{len(rotated)} image(s) carry an EXIF orientation (e.g. {rotated[0].pair.image.name}) and are "
                     "used as displayed, rotated/flipped as OpenCV and annotation tools show them, masks alike")
    good = [i for i in infos if not i.error]
    notes += _pixel_notes(good)
    groups: dict[str, list[str]] = {}
    if table is None and good:
        try:
            table, note = infer_table(np.unique(np.concatenate([i.values for i in good])))
            notes.append(note)
        except DataError as e:
            groups[TABLE] = [str(e)]
        redo = [k for k, i in enumerate(infos) if i.void_unsure and not i.error]
        if table is not None and table.ignore_index == 255 and redo:  # their 255 is void after all: statistics again
            for k, info in zip(redo, scan(redo, table.lut() == IGNORE, label), strict=True):
                infos[k] = info
            good = [i for i in infos if not i.error]
    if table is not None:
        lut = table.lut()
        for info in good:
            unknown = info.values[lut[info.values] == UNKNOWN]
            if unknown.size:
                info.error = (f"{info.pair.mask}: values {', '.join(map(str, unknown[:8].tolist()))} not in the class "
                              f"table (valid: {table.describe_values()})")
                info.problem = VALUES
    for info in infos:
        if info.error and not info.mismatch:  # mismatched types or channels: one message for all, below
            groups.setdefault(info.problem or UNREADABLE, []).append(info.error)
    if mixed:
        groups[MIXED] = mixed
    problems = [line for lines in groups.values() for line in lines]
    dtype = next((i.dtype for i in infos if i.dtype), "uint8")
    return Scan(infos, spec.channels, table, problems, notes, replace(spec, dtype=dtype), dtype, groups)


def _mixed(infos: list[PairInfo], spec: ImageSpec, kind: str) -> str | None:
    """One message for the images whose channels or type differ from the dataset's, every group named."""
    if not any(i.mismatch and i.mismatch[0] == kind for i in infos):
        return None
    expected = str(spec.channels) if kind == "channels" else dtype_class(spec.dtype or "uint8")
    groups: dict[str, list[str]] = {}
    for info in infos:
        if info.mismatch and info.mismatch[0] == kind:
            groups.setdefault(str(info.mismatch[1]), []).append(info.pair.image.name)
        elif info.dtype is not None:
            groups.setdefault(expected, []).append(info.pair.image.name)
    unit = " channel(s)" if kind == "channels" else ""
    shown = "; ".join(f"{key}{unit}: {len(names)} image(s) ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
                      for key, names in sorted(groups.items(), key=lambda kv: -len(kv[1])))
    if expected not in groups:  # none is as expected: the run's (or data.*'s) type or channels differ
        asked = "data.dtype, the type the model was trained on" if kind == "dtype" else "the model's input channels"
        return (f"the images are not {expected}{unit} ({asked}): {shown}. pixelwise does not convert them; use "
                f"images like the training images{', or choose bands with data.bands' if kind == 'channels' else ''}")
    if kind == "dtype":
        return (f"images of different pixel types in one dataset: {shown}. pixelwise does not rescale one type to "
                "another (it would lose or invent precision): convert them to one type")
    return (f"images with different channel counts in one dataset: {shown}. They are read as {expected} channel(s) "
            "(data.channels, or the first image's count): choose the same bands of each with data.bands, or "
            "convert them")


def _pixel_notes(good: list[PairInfo]) -> list[str]:
    notes = []
    floats = [i for i in good if i.float_mask]
    if floats:
        notes.append(f"{len(floats)} mask(s) are stored as floating point (e.g. {floats[0].pair.mask.name}, "
                     f"{floats[0].float_mask}); their values are whole numbers and are read as class indices")
    unchecked = [i for i in good if i.grid_unchecked]
    if unchecked:
        notes.append(f"{len(unchecked)} georeferenced pair(s) (e.g. {unchecked[0].pair.image.name}): whether each "
                     f"mask lies on its image's grid was not checked; install the geo extra ({raster.GEO_INSTALL})")
    nodata = [i for i in good if i.nodata and np.dtype(i.dtype).kind != "f"]  # float ones are NaN (nan_fill)
    if nodata:
        notes.append(f"{len(nodata)} integer image(s) hold pixels equal to their declared nodata value (e.g. "
                     f"{nodata[0].pair.image.name}: {nodata[0].nodata:,} pixels); they are read as that value and "
                     "trained on like any other (the normalisation statistics leave them out): paint them void (255) "
                     "in the masks if they lie outside the scene")
    return notes


def per_class(info: PairInfo, lut: np.ndarray, amounts: np.ndarray, num_classes: int) -> np.ndarray:
    """``amounts`` (one per raw value in ``info.values``) summed into the classes those values stand for; void
    values are left out."""
    classes = lut[info.values]
    keep = classes != IGNORE
    out = np.zeros(num_classes, dtype=amounts.dtype)
    np.add.at(out, classes[keep], amounts[keep])
    return out


def class_pixels_per_image(scan: Scan) -> tuple[dict[str, np.ndarray], int]:
    """Labelled pixels per class of every good pair (by image path), and the void pixels of all of them."""
    assert scan.table is not None
    lut = scan.table.lut()
    good = [info for info in scan.infos if not info.error]
    void = sum(int(info.counts[lut[info.values] == IGNORE].sum()) for info in good)
    return {str(i.pair.image): per_class(i, lut, i.counts, scan.table.num_classes) for i in good}, void


def check_pairs(
    pairs: list[Pair],
    table: ClassTable | None,
    channels: int | str | ImageSpec = "auto",
    cache: DecodedCache | None = None,
    label: str = "Checking data",
) -> DataSummary:
    """Decode every pair and raise one DataError listing every problem found (up to 10 files each).

    Args:
        pairs: all pairs to be used (train and validation together).
        table: the class table, or None to infer one from the mask values.
        channels: a count, 'auto' (1 when all 8-bit images are grayscale, 3 when any is colour, else the
            images' own count), or the full reading rules (``data.io.ImageSpec``).
        cache: where decoded arrays are kept for training, if anywhere.
    """
    if not pairs:
        raise DataError("no image/mask pairs to check: the dataset is empty")
    scan = scan_pairs(pairs, table, channels, cache, label)
    if scan.problems:
        raise DataError("the dataset has problems that must be fixed before training:\n" + "\n".join(scan.grouped()))
    assert scan.table is not None
    per_image, void = class_pixels_per_image(scan)
    n = scan.table.num_classes
    class_pixels = np.sum(list(per_image.values()), axis=0) if per_image else np.zeros(n, np.int64)
    return DataSummary(
        channels=scan.channels,
        table=scan.table,
        sizes={str(i.pair.image): i.size for i in scan.infos},
        class_pixels=class_pixels,
        void_pixels=void,
        image_class_pixels=per_image,
        notes=scan.notes,
        dtype=scan.dtype,
        spec=scan.spec,
        samples={str(i.pair.image): i.samples for i in scan.infos if i.samples is not None},
    )


def crop_warnings(sizes: list[tuple[int, int]], crop: tuple[int, int]) -> list[str]:
    """A warning when ``crop`` (height, width) is larger than every training image: then every crop is partly void
    padding, and training sees less image per step than it pays for (train and check say the same)."""
    ch, cw = crop
    if not sizes or any(h >= ch and w >= cw for h, w in sizes):
        return []
    padding = float(np.mean([1 - min(h, ch) * min(w, cw) / (ch * cw) for h, w in sizes]))
    largest = max(sizes, key=lambda s: s[0] * s[1])
    smallest = (min(h for h, _ in sizes), min(w for _, w in sizes))
    return [f"data.crop_size [{ch}, {cw}] is larger than every training image (the largest is {largest[0]}x"
            f"{largest[1]}, height x width): on average {padding:.0%} of each crop is void padding; set "
            f"data.crop_size to at most the images' size, e.g. [{smallest[0]}, {smallest[1]}]"]
