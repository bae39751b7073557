"""`pixelwise check`: every pair validated, problems listed by file, and the dataset's fingerprint.

The fingerprint (as nnU-Net's, for ordinary 2D images) is what the automatic configuration in ``plan`` decides
from: images per split, image sizes, channels and intensity statistics, class pixel frequencies, the share of
images each class appears in, and the void share. Problems that make training impossible (unreadable files,
masks of another size, unknown values, images without masks, no data) are errors; duplicates, masks without
images, classes missing from a split and images smaller than the crop are warnings.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pixelwise.config import DataConfig
from pixelwise.data.checks import Scan, class_pixels_per_image, crop_warnings, per_class, scan_pairs
from pixelwise.data.dataset import set_max_pixels, spec_of
from pixelwise.data.formats import Layout, discover
from pixelwise.data.normalization import channel_report, zscore
from pixelwise.data.pixels import model_dtype
from pixelwise.data.splits import SplitPlan, plan_splits
from pixelwise.errors import DataError, list_offenders


class _Typed(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Spread(_Typed):
    min: int | None = None
    median: float
    max: int | None = None


class SizeStats(_Typed):
    """Image sizes in pixels: height and width spreads, distinct sizes, the most common ones."""

    height: Spread
    width: Spread
    distinct: int | None = None
    most_common: list[dict[str, Any]] = Field(default_factory=list)  # {size: [h, w], images: n}
    megapixels_total: float | None = None


class ClassStats(_Typed):
    name: str
    pixels: int | None = None
    pixel_share: float  # of labelled pixels
    image_share: float | None = None  # of images it appears in
    mean_row: float | None = None  # mean relative height of its pixels (0 top, 1 bottom); None: no pixel


class Intensity(_Typed):
    mean: list[float]
    std: list[float]
    scale: str = "0-255 per channel"


class FileKinds(_Typed):
    grayscale: int = 0
    colour: int = 0


class ChannelStats(_Typed):
    """One channel over every readable image: value range, the bits an integer channel uses, sampled percentiles."""

    channel: int  # 1-based
    min: float
    max: float
    bits_used: int | None = None  # integer types: 12 for 0..4095 stored in uint16
    percentiles: dict[str, float]  # "0.5", "1", "50", "99", "99.5"
    mean: float
    std: float


class ZScoreStats(_Typed):
    mean: list[float]
    std: list[float]
    clip: list[list[float]]  # per channel [low, high]: the 0.5th and 99.5th percentiles


class PixelStats(_Typed):
    """The images' pixel type, per-channel statistics, and the z-score normalisation training would derive."""

    dtype: str  # as the commonest files store it
    model_input: str  # uint8, or float32 for any other type
    files_by_dtype: dict[str, int]
    files_by_channels: dict[str, int]
    channels: list[ChannelStats]
    zscore: ZScoreStats


class Fingerprint(_Typed):
    """What ``pixelwise check`` learns of a dataset, and what ``plan`` decides from (typed; ``to_dict`` for JSON)."""

    root: str
    format: str
    splits: dict[str, int]  # images per split
    pairs_readable: int
    pairs_with_problems: int = 0
    channels: int
    validation: str | None = None  # set when validation images are a held-out share of the training pool
    split_decision: str | None = None  # what training will train and validate on (``splits.plan_splits``)
    train_images: int | None = None  # None: no split decision (the splits are unusable)
    val_images: int | None = None
    image_size: SizeStats | None = None  # None: no pair could be read
    files: FileKinds | None = None
    intensity: Intensity | None = None
    pixels: PixelStats | None = None  # pixel type and per-channel statistics
    classes: list[ClassStats] = Field(default_factory=list)
    vertical_layout: float = 0.0  # spread of the classes' mean heights: ~0 micrographs/aerial, large street scenes
    void_share: float | None = None
    imbalance: float | None = None  # most / least frequent class (pixels)
    class_table: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


class CheckResult(_Typed):
    """Errors and warnings name files; notes say what was assumed (an inferred class table, say)."""

    errors: list[str]
    warnings: list[str]
    notes: list[str]
    fingerprint: Fingerprint
    problems: list[dict[str, str]] = Field(default_factory=list)  # every error file by file: {problem, message}
    decisions: dict[str, list[str]] | None = None  # the image files trained and validated on

    def to_dict(self) -> dict[str, Any]:
        return {"errors": self.errors, "warnings": self.warnings, "notes": self.notes,
                "fingerprint": self.fingerprint.to_dict(), "problems": self.problems, "decisions": self.decisions}


def _size_stats(sizes: list[tuple[int, int]]) -> SizeStats:
    hs, ws = np.array([s[0] for s in sizes]), np.array([s[1] for s in sizes])
    common = Counter(sizes).most_common(5)
    return SizeStats(height=Spread(min=int(hs.min()), median=float(np.median(hs)), max=int(hs.max())),
                     width=Spread(min=int(ws.min()), median=float(np.median(ws)), max=int(ws.max())),
                     distinct=len(set(sizes)), most_common=[{"size": [h, w], "images": n} for (h, w), n in common],
                     megapixels_total=float((hs * ws).sum() / 1e6))


def _duplicates(scan: Scan, split_of: dict[str, str]) -> list[str]:
    """Images whose pixels are identical; across train and val they inflate the validation score."""
    groups: dict[str, list[str]] = {}
    for info in scan.infos:
        if info.digest is not None:
            groups.setdefault(info.digest, []).append(str(info.pair.image))
    out = []
    for paths in groups.values():
        if len(paths) > 1:
            splits = sorted({split_of[p] for p in paths})
            where = f"across splits {' and '.join(splits)}" if len(splits) > 1 else f"in '{splits[0]}'"
            out.append(f"{', '.join(paths[:4])}{' ...' if len(paths) > 4 else ''}: identical pixels ({where})")
    return out


def mean_rows(scan: Scan, class_pixels: np.ndarray) -> np.ndarray:
    """Each class's mean relative row over all its pixels (0 = top of the image, 1 = bottom)."""
    assert scan.table is not None
    lut = scan.table.lut()
    sums = sum((per_class(i, lut, i.row_sums, scan.table.num_classes) for i in scan.infos
                if not i.error and i.row_sums is not None), np.zeros(scan.table.num_classes))
    return sums / np.maximum(class_pixels, 1)


def _scan_as_training_does(layout: Layout, cfg: DataConfig) -> tuple[Scan, SplitPlan | None, list[str], list[str]]:
    """Scan what training would use exactly as training does (its pairs, its channel, type and class-table
    decisions): problems there are errors. Pairs of splits training does not use are scanned too, read the same
    way, and their problems are warnings, so `check` fails exactly when `train` would."""
    errors: list[str] = []
    try:
        plan: SplitPlan | None = plan_splits(layout.splits, cfg, layout.root)
    except DataError as e:
        plan = None
        errors.append(str(e))
    pairs = [p for split in layout.splits.values() for p in split]
    used = plan.train + plan.val if plan is not None else pairs
    scan = scan_pairs(used, layout.classes, spec_of(cfg), label="Checking", fingerprint=True)
    errors += scan.grouped()
    taken = set(used)
    unused = [p for p in pairs if p not in taken]
    if not unused:
        return scan, plan, errors, []
    other = scan_pairs(unused, scan.table or layout.classes, scan.spec, label="Checking unused splits",
                       fingerprint=True)
    warnings = [list_offenders(f"{heading}, in splits training does not use", lines)
                for heading, lines in other.groups.items()]
    return replace(scan, infos=scan.infos + other.infos), plan, errors, warnings


def fingerprint(cfg: DataConfig) -> CheckResult:
    """Scan the dataset ``cfg`` describes: errors, warnings, notes, the fingerprint, problems and decisions.

    Errors and warnings are blocks naming files, one per kind of problem (as training reports them); notes say
    what was assumed (an inferred class table, a pooled split); ``problems`` lists every error file by file and
    ``decisions`` the images trained and validated on. With errors the fingerprint describes the pairs that
    could be read.
    """
    set_max_pixels(cfg.max_image_pixels)
    layout = discover(cfg)
    split_of = {str(p.image): name for name, split in layout.splits.items() for p in split}
    scan, plan, errors, warnings = _scan_as_training_does(layout, cfg)
    notes = [*layout.notes, *(plan.notes if plan is not None else []), *scan.notes]
    problems = [{"problem": heading, "message": line} for heading, lines in scan.groups.items() for line in lines]
    if layout.orphan_masks:
        warnings.append(list_offenders("masks without an image (ignored)", [str(m) for m in layout.orphan_masks]))
    dups = _duplicates(scan, split_of)
    if dups:
        warnings.append(list_offenders("duplicate images", dups))
    good = [i for i in scan.infos if not i.error]
    fp = Fingerprint(root=str(layout.root), format=layout.format,
                     splits={name: len(split) for name, split in layout.splits.items()},
                     pairs_readable=len(good), pairs_with_problems=len(scan.infos) - len(good), channels=scan.channels)
    if plan is not None:  # what training will do; "validation" is set when a share is held out
        fp.split_decision, fp.train_images, fp.val_images = plan.summary(), len(plan.train), len(plan.val)
        if plan.val_from is not None and "held out" in plan.val_from:
            fp.validation = plan.val_from

    def result() -> CheckResult:  # built at the end: pydantic copies the lists it is given
        return CheckResult(errors=errors, warnings=warnings, notes=notes, fingerprint=fp, problems=problems,
                           decisions=plan.decisions() if plan is not None else None)

    if not good:
        errors.append("no image/mask pair could be read")
        return result()
    sizes = [i.size for i in good]
    fp.image_size = _size_stats(sizes)
    if plan is not None and not scan.problems:
        sizes_of = {str(i.pair.image): i.size for i in good}
        warnings += crop_warnings([sizes_of[str(p.image)] for p in plan.train], cfg.crop_size)
    small = [str(i.pair.image) for i in good if i.size[0] < cfg.crop_size[0] or i.size[1] < cfg.crop_size[1]]
    if small:
        warnings.append(list_offenders(f"images smaller than the training crop {cfg.crop_size[0]}x{cfg.crop_size[1]} "
                                       "(padded with void when cropped; consider a smaller data.crop_size)", small))
    file_channels = Counter(i.file_channels for i in good)
    fp.files = FileKinds(grayscale=file_channels.get(1, 0), colour=file_channels.get(3, 0))
    if file_channels.get(1) and file_channels.get(3):
        warnings.append(f"{file_channels[1]} grayscale and {file_channels[3]} colour images: grayscale ones are "
                        "replicated to 3 channels")
    moments = np.stack([i.moments for i in good])  # (N, 3, C): mean, mean of squares, pixels counted
    weights = moments[:, 2]
    total = np.maximum(weights.sum(0), 1)
    mean = (moments[:, 0] * weights).sum(0) / total
    sq = (moments[:, 1] * weights).sum(0) / total
    fp.intensity = Intensity(mean=[round(float(m), 2) for m in mean],
                             std=[round(float(s), 2) for s in np.sqrt(np.maximum(sq - mean**2, 0))],
                             scale="0-255 per channel" if scan.dtype == "uint8" else "the data's own units")
    try:  # a channel without valid pixels: training cannot normalise it (8-bit data: the encoder's numbers)
        fp.pixels = pixel_stats(scan, {str(p.image) for p in plan.train} if plan is not None else None)
    except DataError as e:
        (warnings if scan.dtype == "uint8" else errors).append(str(e))
    if scan.table is not None:
        per_image, void = class_pixels_per_image(scan)
        counts = np.sum(list(per_image.values()), axis=0)
        present = np.sum([c > 0 for c in per_image.values()], axis=0)
        labelled = max(int(counts.sum()), 1)
        rows = mean_rows(scan, counts)
        fp.classes = [ClassStats(name=name, pixels=int(counts[k]), pixel_share=counts[k] / labelled,
                                 image_share=float(present[k]) / len(per_image),
                                 mean_row=None if counts[k] == 0 else round(float(rows[k]), 3))
                      for k, name in enumerate(scan.table.names)]
        common = [rows[k] for k in range(len(counts)) if counts[k] / labelled >= 0.01]
        fp.vertical_layout = round(float(max(common) - min(common)), 3) if common else 0.0
        fp.void_share = void / max(labelled + void, 1)
        nonzero = counts[counts > 0]
        fp.imbalance = float(nonzero.max() / nonzero.min()) if nonzero.size else None
        fp.class_table = scan.table.model_dump(exclude_defaults=True)
        missing = [name for k, name in enumerate(scan.table.names) if counts[k] == 0]
        if missing:
            warnings.append(f"classes with no pixel in any mask: {', '.join(missing)} (nothing to learn them from)")
        train_imgs = {str(p.image) for p in (plan.train if plan is not None else [])}
        train_counts = sum((c for p, c in per_image.items() if p in train_imgs), np.zeros_like(counts))
        absent = [name for k, name in enumerate(scan.table.names) if counts[k] > 0 and train_counts[k] == 0]
        if absent and train_imgs:
            warnings.append(f"classes in the data but not in what is trained on: {', '.join(absent)}")
    return result()


def pixel_stats(scan: Scan, train: set[str] | None = None) -> PixelStats:
    """Per channel: the stored type, the bits an integer channel actually uses, value range, percentiles (of the
    valid pixels: ``normalization``); and the z-score normalisation training would derive from the ``train`` images'
    samples, as it does (used for any data but 8-bit, where the encoder's is used). A channel without any valid
    pixel is a DataError naming it."""
    good = [i for i in scan.infos if not i.error and i.low is not None]
    stored = Counter(str(i.stored_dtype) for i in good)
    samples = np.concatenate([i.samples for i in good if i.samples is not None])
    trained = [i.samples for i in good if i.samples is not None and str(i.pair.image) in (train or ())]
    norm = zscore(np.concatenate(trained) if trained else samples)
    low, high = np.fmin.reduce([i.low for i in good]), np.fmax.reduce([i.high for i in good])  # NaN: none there
    dtype = stored.most_common(1)[0][0]
    by_channels = Counter(i.file_channels for i in good)
    return PixelStats(dtype=dtype, model_input=model_dtype(scan.dtype), files_by_dtype=dict(stored),
                      files_by_channels={str(k): v for k, v in sorted(by_channels.items())},
                      channels=channel_report(dtype, low, high, samples),
                      zscore=ZScoreStats(mean=norm.mean, std=norm.std, clip=[list(c) for c in norm.clip]))


def require_trainable(result: CheckResult) -> None:
    """Raise the errors of a ``fingerprint`` result as one DataError (for callers that go on to train)."""
    if result.errors:
        raise DataError("the dataset has problems that must be fixed before training:\n" + "\n".join(result.errors))
