"""Predicting folders of image files: masks (palette PNG of class indices) and overlays."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from pixelwise.data.dataset import IMAGE_SUFFIXES, read_image
from pixelwise.errors import DataError, PixelwiseError
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


def predict_files(seg: Segmenter, inputs: list[Path], out_dir: Path, overlay: bool = True) -> PredictionReport:
    """Write ``NAME.png`` (class indices with the class palette) and ``NAME_overlay.jpg`` per input image.

    Unreadable images are reported and skipped; the others are still predicted.
    """
    files = collect_inputs(inputs)
    out_dir.mkdir(parents=True, exist_ok=True)
    report, used = PredictionReport(), set()
    for path in track(files, total=len(files), label="Predicting"):
        stem, n = path.stem, 1
        while stem in used:  # same name from two folders: keep both
            n += 1
            stem = f"{path.stem}_{n}"
        used.add(stem)
        try:
            image = read_image(path, seg.channels)
        except DataError as e:
            report.failed.append(str(e))
            continue
        mask = seg.predict(image)
        seg.colorize(mask).save(out_dir / f"{stem}.png")
        report.written.append(out_dir / f"{stem}.png")
        if overlay:
            Image.fromarray(seg.overlay(image, mask)).save(out_dir / f"{stem}_overlay.jpg", quality=90)
            report.written.append(out_dir / f"{stem}_overlay.jpg")
    return report
