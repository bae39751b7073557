"""Predicting folders of image files: masks (palette PNG of class indices), overlays, probabilities, uncertainty.

TIFF, GeoTIFF, JPEG 2000 and VRT inputs give TIFF outputs instead, read and written window by window with their
georeference (``inference.geo``).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from pixelwise.atomic import atomic_write, check_out_dir
from pixelwise.data.io import IMAGE_SUFFIXES, read_image
from pixelwise.data.io import _regular_file as regular_file
from pixelwise.errors import DataError, PixelwiseError, list_offenders
from pixelwise.inference.geo import entropy_image, is_raster, predict_raster, raster_outputs
from pixelwise.inference.preannotate import Preannotations
from pixelwise.inference.predictor import Segmenter
from pixelwise.inference.range_check import range_warning, stored_clip
from pixelwise.progress import track


@dataclass
class PredictOptions:
    """How each image is predicted and what is written beside its mask."""

    tile: int | None = None  # sliding-window tile side; None: automatic for very large images; 0: never
    overlap: float = 0.25
    tta: bool = False  # average over horizontal and vertical flips
    scales: Sequence[float] = (1.0,)  # multi-scale test-time augmentation
    save_probs: bool = False  # NAME_probs.npz (float16 per-class probabilities) and NAME_entropy.png


def _npz_bytes(probs: np.ndarray, names: list[str]) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, probabilities=probs.astype(np.float16), classes=np.asarray(names))
    return buf.getvalue()


@dataclass
class PredictionReport:
    written: list[Path] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # e.g. a GeoTIFF without a CRS
    renamed: list[str] = field(default_factory=list)  # inputs whose outputs got _2, _3 ... to keep names unique


def collect_inputs(inputs: list[Path]) -> list[Path]:
    """Image files given directly or found (non-recursively) in the given folders, in order, without repeats. A
    name of an image kind that is no regular file (a named pipe, a broken link) is kept: ``predict_files`` reports
    it, rather than skipping it unsaid."""
    files: list[Path] = []
    for item in inputs:
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if not p.is_dir() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise PixelwiseError(f"{item}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
            files += found
        elif item.exists() and not item.is_dir():  # a file, or a special one that predict_files then refuses
            files.append(item)
        else:
            raise PixelwiseError(f"{item}: no such file or folder")
    return list(dict.fromkeys(files))


def output_stems(files: list[Path], suffixes: Sequence[str] = (".png",)) -> list[str]:
    """One output stem per input such that no two written files share a name (compared ignoring case, as macOS
    and Windows file systems do): the same stem from two folders, or an input named like another's extra output
    ('a_entropy.png' beside a.png's entropy map), gets _2, _3, ... Decided before anything is written."""
    stems: list[str] = []
    used: set[str] = set()
    for path in files:
        stem, n = path.stem, 1
        while any(f"{stem}{s}".casefold() in used for s in suffixes):
            n += 1
            stem = f"{path.stem}_{n}"
        used.update(f"{stem}{s}".casefold() for s in suffixes)
        stems.append(stem)
    return stems


def _save(image: Image.Image, path: Path, fmt: str, **options) -> None:
    atomic_write(path, lambda tmp: image.save(tmp, format=fmt, **options))


def predict_files(seg: Segmenter, inputs: list[Path], out_dir: Path, overlay: bool = True,
                  overwrite: bool = False, options: PredictOptions | None = None,
                  preannotate: Preannotations | None = None) -> PredictionReport:
    """Write ``NAME.png`` (class indices with the class palette) and ``NAME_overlay.jpg`` per input image (TIFF
    and other raster inputs: ``NAME.tif``, see ``inference.geo``).

    With ``options.save_probs`` also ``NAME_probs.npz`` (``probabilities``: float16 (K, H, W); ``classes``) and
    ``NAME_entropy.png`` (pixel entropy, 0 = certain, 255 = uniform over the classes).

    With ``preannotate``, every mask is also added to it and its tool's files are written at the end
    (``inference.preannotate``); raster inputs are left out of them with a warning. The tools know an image by its
    file name, so two inputs of one name (from two folders) are refused then, before anything is predicted.

    Existing files are replaced only with ``overwrite``, and an input image never is. Unreadable images are
    reported and skipped; the others are still predicted. Each file is written atomically.
    """
    check_out_dir(out_dir)
    files = collect_inputs(inputs)
    opts = options or PredictOptions()
    suffixes = [".png"] + (["_overlay.jpg"] if overlay else []) + (["_probs.npz", "_entropy.png"] if opts.save_probs
                                                                   else [])
    # stems unique over every kind of output (a.tif's mask a.tif and a.png's a.png never clash, but a_probs.tif may)
    stems = output_stems(files, [*suffixes, *raster_outputs("", opts.save_probs)])
    targets = [out_dir / name for f, s in zip(files, stems, strict=True)
               for name in (raster_outputs(s, opts.save_probs) if is_raster(f) else [f"{s}{x}" for x in suffixes])]
    targets += preannotate.targets(out_dir) if preannotate else []
    if preannotate:
        _check_unique_names([f for f in files if not is_raster(f)], preannotate.tool)
    resolved = {f.resolve() for f in files}
    inputs_hit = sorted({str(t) for t in targets if t.exists() and t.resolve() in resolved})
    if inputs_hit:
        raise PixelwiseError(list_offenders(f"{out_dir}: predictions would replace input images; choose another --out",
                                            inputs_hit))
    existing = [str(t) for t in targets if t.exists()]
    if existing and not overwrite:
        raise PixelwiseError(list_offenders(
            f"{out_dir}: predictions would replace existing files; choose another --out or pass --overwrite", existing))
    out_dir.mkdir(parents=True, exist_ok=True)
    clip = stored_clip(seg.backend)  # the training range, for a file of the right type on the wrong scale
    report = PredictionReport(renamed=[f"{p.name} -> {s}.png" for p, s in zip(files, stems, strict=True)
                                       if s != p.stem])
    for path, stem in track(list(zip(files, stems, strict=True)), total=len(files), label="Predicting"):
        try:
            regular_file(path, "image")  # before any reader opens it: a named pipe would block forever
            if is_raster(path):  # TIFF in, TIFF out: georeference kept, large rasters streamed from and to disk
                written, warnings = predict_raster(seg, path, out_dir, stem, opts)
                if preannotate:
                    warnings.append(f"{path}: rasters are not written as pre-annotations")
                report.written += written
                report.warnings += warnings
                continue
            image = read_image(path, seg.spec)
        except DataError as e:
            report.failed.append(str(e))
            continue
        off_scale = range_warning(path, clip, image) if clip is not None and image.shape[2] == len(clip) else None
        report.warnings += [off_scale] if off_scale else []
        kwargs = {"tile": opts.tile, "overlap": opts.overlap, "tta": opts.tta, "scales": opts.scales}
        if opts.save_probs or preannotate:
            probs = seg.probabilities(image, **kwargs)
            mask = probs.argmax(axis=0).astype(np.uint8)
            if preannotate:
                preannotate.add(path.name, mask, float(probs.max(axis=0).mean()))
        if opts.save_probs:
            npz = _npz_bytes(probs, seg.table.names)
            atomic_write(out_dir / f"{stem}_probs.npz", lambda tmp, data=npz: tmp.write_bytes(data))
            _save(Image.fromarray(entropy_image(probs)), out_dir / f"{stem}_entropy.png", "PNG")
            report.written += [out_dir / f"{stem}_probs.npz", out_dir / f"{stem}_entropy.png"]
        elif not preannotate:
            mask = seg.predict(image, **kwargs)
        _save(seg.colorize(mask), out_dir / f"{stem}.png", "PNG")
        report.written.append(out_dir / f"{stem}.png")
        if overlay:
            _save(Image.fromarray(seg.overlay(image, mask)), out_dir / f"{stem}_overlay.jpg", "JPEG", quality=90)
            report.written.append(out_dir / f"{stem}_overlay.jpg")
    if preannotate:
        report.written += preannotate.write(out_dir)
        report.warnings += preannotate.notes()
    return report


def _check_unique_names(files: list[Path], tool: str) -> None:
    """Refuse inputs that share a file name (compared ignoring case): the pre-annotations would name both entries
    alike, and the tool would put one image's prediction on the other (or refuse the file)."""
    by_name: dict[str, list[Path]] = {}
    for f in files:
        by_name.setdefault(f.name.casefold(), []).append(f)
    clashes = [" and ".join(map(str, group)) for group in by_name.values() if len(group) > 1]
    if clashes:
        raise PixelwiseError(list_offenders(
            f"--as {tool}: pre-annotations name each image by its file name, and these inputs share one; rename "
            "them or predict each folder into its own --out", clashes))
