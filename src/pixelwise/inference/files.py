"""Predicting folders of image files: masks (palette PNG of class indices) and overlays."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from pixelwise.data.dataset import IMAGE_SUFFIXES, read_image
from pixelwise.engine.checkpoint import atomic_write
from pixelwise.errors import DataError, PixelwiseError, list_offenders
from pixelwise.inference.predictor import Segmenter
from pixelwise.progress import track


@dataclass
class PredictionReport:
    written: list[Path] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def collect_inputs(inputs: list[Path]) -> list[Path]:
    """Image files given directly or found (non-recursively) in the given folders, in order, without repeats."""
    files: list[Path] = []
    for item in inputs:
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise PixelwiseError(f"{item}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
            files += found
        elif item.is_file():
            files.append(item)
        else:
            raise PixelwiseError(f"{item}: no such file or folder")
    return list(dict.fromkeys(files))


def output_stems(files: list[Path]) -> list[str]:
    """One output name per input; the same name from two folders gets _2, _3, ..."""
    stems: list[str] = []
    used: set[str] = set()
    for path in files:
        stem, n = path.stem, 1
        while stem in used:
            n += 1
            stem = f"{path.stem}_{n}"
        used.add(stem)
        stems.append(stem)
    return stems


def _save(image: Image.Image, path: Path, fmt: str, **options) -> None:
    atomic_write(path, lambda tmp: image.save(tmp, format=fmt, **options))


def predict_files(seg: Segmenter, inputs: list[Path], out_dir: Path, overlay: bool = True,
                  overwrite: bool = False) -> PredictionReport:
    """Write ``NAME.png`` (class indices with the class palette) and ``NAME_overlay.jpg`` per input image.

    Existing files are replaced only with ``overwrite``, and an input image never is. Unreadable images are
    reported and skipped; the others are still predicted. Each file is written atomically.
    """
    files = collect_inputs(inputs)
    stems = output_stems(files)
    targets = [out_dir / f"{s}.png" for s in stems] + ([out_dir / f"{s}_overlay.jpg" for s in stems] if overlay else [])
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
    report = PredictionReport()
    for path, stem in track(list(zip(files, stems, strict=True)), total=len(files), label="Predicting"):
        try:
            image = read_image(path, seg.channels)
        except DataError as e:
            report.failed.append(str(e))
            continue
        mask = seg.predict(image)
        _save(seg.colorize(mask), out_dir / f"{stem}.png", "PNG")
        report.written.append(out_dir / f"{stem}.png")
        if overlay:
            _save(Image.fromarray(seg.overlay(image, mask)), out_dir / f"{stem}_overlay.jpg", "JPEG", quality=90)
            report.written.append(out_dir / f"{stem}_overlay.jpg")
    return report
