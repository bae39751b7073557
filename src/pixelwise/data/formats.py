"""Dataset layouts on disk -> lists of (image, mask) pairs per split, plus the class table if the layout has one.

Every layout is a ``DatasetFormat`` in the ``FORMATS`` registry (name, how to recognise it, how to read it);
``data.format``, detection and ``discover`` all go through it. Formats in this module:
- ``camvid``: the SegNet layout, ``SPLIT/`` images beside ``SPLITannot/`` masks; 11 classes built in, 11 = void.
- ``folders``: an images folder and a masks folder matched by file stem, either at the root (one pool,
  split by ``data.val_fraction``) or under each split folder (``train/images``, ``train/masks``, ...),
  with an optional ``classes.yaml`` (or .yml/.json) at the root; colour-coded RGB masks with a table whose
  ``color_masks`` is true.
In ``public_formats``: ``voc``, ``cityscapes``, ``coco`` and ``list`` (CSV/text lists of image,mask pairs); in
``labelling``: ``cvat_xml`` (CVAT for images 1.1) and ``labelstudio`` (Label Studio JSON).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pixelwise.config import DataConfig
from pixelwise.data import labelling, public_formats
from pixelwise.data.classes import ClassTable
from pixelwise.data.dataset import IMAGE_SUFFIXES, Pair
from pixelwise.data.io import _regular_file as regular_file
from pixelwise.data.splits import holdout  # noqa: F401  (re-exported)
from pixelwise.data.splits import select_split as _select_split
from pixelwise.errors import ConfigError, DataError, PixelwiseError, list_offenders
from pixelwise.registry import Registry

CAMVID_CLASSES = ClassTable(
    names=["sky", "building", "pole", "road", "pavement", "tree", "signsymbol", "fence", "car", "pedestrian",
           "bicyclist"],
    colors=[(128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
            (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192)],
    ignore_index=11,
)
IMAGE_DIRS = ("images", "image", "imgs", "img", "inputs")
MASK_DIRS = ("masks", "mask", "labels", "label", "annotations", "annotation", "gt", "targets")
MASK_SUFFIXES = ("", "_mask", "_label", "_labels", "_gt", "_annot")
CLASS_FILES = ("classes.yaml", "classes.yml", "classes.json")


@dataclass
class Layout:
    """What was found on disk."""

    format: str
    root: Path
    splits: dict[str, list[Pair]]
    classes: ClassTable | None  # None: to be inferred from the mask values
    orphan_masks: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the reader recognised or assumed (printed by check, train)


def _files(folder: Path, what: str = "image") -> list[Path]:
    """Image (or mask) files of ``folder``; links that lead nowhere (broken, or a loop) and special files (a FIFO, a
    socket, a device: reading one could block forever) are an error, not skipped silently. Nothing is opened here."""
    found, dead, special = [], [], []
    for p in folder.iterdir():
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if p.is_file():
            found.append(p)
        elif p.is_symlink() and not p.exists():
            dead.append(f"{p}: symbolic link to {os.readlink(p)} that leads to no file (broken or a loop)")
        elif not p.is_dir():
            try:
                regular_file(p, what)  # stat only: raises, naming the kind of file
            except DataError as e:
                special.append(str(e))
    if dead:
        raise DataError(list_offenders(f"{folder}: links that lead to no file; fix or remove them", sorted(dead)))
    if special:
        raise DataError(list_offenders(f"{folder}: {what} files that are not regular files; remove them, or replace "
                                       "them with the files themselves", sorted(special)))
    return sorted(found)


def pair_by_stem(images: list[Path], masks: list[Path]) -> tuple[list[Pair], list[Path]]:
    """Match each image with the mask of the same stem (or stem + _mask, _label, ...)."""
    by_stem = {m.stem: m for m in masks}
    pairs, used = [], set()
    for img in images:
        mask = next((by_stem[img.stem + s] for s in MASK_SUFFIXES if img.stem + s in by_stem), None)
        if mask is not None:
            used.add(mask)
        pairs.append(Pair(img, mask))
    return pairs, [m for m in masks if m not in used]


def _camvid(root: Path) -> Layout:
    splits, orphans = {}, []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        annot = root / f"{folder.name}annot"
        if annot.is_dir():
            splits[folder.name], extra = pair_by_stem(_files(folder), _files(annot, "mask"))
            orphans += extra
    if not splits:
        raise DataError(f"{root}: not a CamVid layout (expected e.g. train/ beside trainannot/)")
    return Layout("camvid", root, splits, CAMVID_CLASSES, orphans)


def _find_dir(parent: Path, wanted: str | None, candidates: tuple[str, ...]) -> Path | None:
    if wanted is not None:
        return parent / wanted if (parent / wanted).is_dir() else None
    return next((parent / c for c in candidates if (parent / c).is_dir()), None)


def _folders(root: Path, cfg: DataConfig) -> Layout:
    splits, orphans = {}, []
    img_dir, mask_dir = _find_dir(root, cfg.images, IMAGE_DIRS), _find_dir(root, cfg.masks, MASK_DIRS)
    if img_dir and mask_dir:
        splits[cfg.train_split], orphans = pair_by_stem(_files(img_dir), _files(mask_dir, "mask"))
    else:
        for sub in sorted(p for p in root.iterdir() if p.is_dir()):
            img_dir, mask_dir = _find_dir(sub, cfg.images, IMAGE_DIRS), _find_dir(sub, cfg.masks, MASK_DIRS)
            if img_dir and mask_dir:
                splits[sub.name], extra = pair_by_stem(_files(img_dir), _files(mask_dir, "mask"))
                orphans += extra
    if not splits:
        names = f"'{cfg.images}' and '{cfg.masks}'" if cfg.images or cfg.masks else (
            f"one of {', '.join(IMAGE_DIRS)} and one of {', '.join(MASK_DIRS)}")
        raise DataError(
            f"{root}: no image and mask folders found. Expected {names}, either directly in it or in split "
            "folders (train/images, train/masks, val/...). Name them with --set data.images=... data.masks=..."
        )
    classes = _class_file(root, cfg)
    if classes is None:
        found = next((root / n for n in CLASS_FILES if (root / n).is_file()), None)
        classes = _found_class_file(found) if found else None
    return Layout("folders", root, splits, classes, orphans)


def _found_class_file(path: Path) -> ClassTable:
    """A class file found beside the data (not named in the config): a dataset may ship its own classes.json in
    another tool's schema, so the error says how to give pixelwise's table instead."""
    try:
        return ClassTable.from_file(path)
    except PixelwiseError as e:
        raise DataError(
            f"{e}. {path.name} was found beside the data and read as pixelwise's class table; if it is the dataset's "
            "own file in another schema, give pixelwise's table instead: --set data.classes=FILE (a YAML or JSON "
            "file with names: [...], optionally colors, ignore_index, mapping) or inline, e.g. "
            "--set 'data.classes={names: [background, road]}'"
        ) from None


def _has_folders(root: Path) -> bool:
    subs = [root] + [p for p in root.iterdir() if p.is_dir()]
    return any(_find_dir(s, None, IMAGE_DIRS) and _find_dir(s, None, MASK_DIRS) for s in subs)


@dataclass(frozen=True)
class DatasetFormat:
    """One dataset layout: how to recognise it in a folder and how to read it into a ``Layout``.

    ``priority`` orders detection: 0 = a distinctive layout (two matches are ambiguous), 1 = the generic
    image/mask folders (when nothing distinctive matched), 2 = lists of pairs (only when nothing else did).
    """

    summary: str
    detect: Callable[[Path], bool]
    read: Callable[[Path, DataConfig], Layout]
    priority: int = 0


def _public(name: str, reader: Callable) -> Callable[[Path, DataConfig], Layout]:
    def read(root: Path, cfg: DataConfig) -> Layout:
        splits, table, orphans, notes = reader(root)
        if not splits:
            raise DataError(f"{root}: no images found in the {name} layout")
        return Layout(name, root, splits, table, orphans, notes)

    return read


def _checked(reader: Callable, name: str, root: Path, cfg: DataConfig) -> Layout:
    splits, table, orphans, notes = reader(root, cfg)
    if not splits:
        raise DataError(f"{root}: no labelled images found in the {name} export")
    return Layout(name, root, splits, table, orphans, notes)


def _dirs(root: Path) -> set[str]:
    return {p.name for p in root.iterdir() if p.is_dir()}


FORMATS: Registry[DatasetFormat] = Registry("dataset format")
FORMATS.register("camvid", DatasetFormat(
    "SegNet layout: SPLIT/ images beside SPLITannot/ masks; the 11 CamVid classes, 11 = void",
    lambda root: any(f"{d}annot" in _dirs(root) for d in _dirs(root)), lambda root, cfg: _camvid(root)))
FORMATS.register("voc", DatasetFormat(
    "Pascal VOC: JPEGImages/, SegmentationClass/ palette PNGs, ImageSets/Segmentation lists; 255 = void",
    lambda root: public_formats.voc_root(root) is not None, _public("voc", public_formats.read_voc)))
FORMATS.register("cityscapes", DatasetFormat(
    "Cityscapes: leftImg8bit/ and gtFine/ labelIds, mapped to the 19 train ids (the rest void)",
    lambda root: {"leftImg8bit", "gtFine"} <= _dirs(root), _public("cityscapes", public_formats.read_cityscapes)))
FORMATS.register("coco", DatasetFormat(
    "COCO JSON: polygons and RLE rasterised once into a cache outside the data",
    lambda root: bool(public_formats.coco_files(root)), _public("coco", public_formats.read_coco)))
FORMATS.register("cvat_xml", DatasetFormat(
    "CVAT for images 1.1: annotations.xml (polygons, masks in CVAT's RLE) and images/, rasterised into a cache",
    lambda root: labelling.cvat_xml_file(root) is not None, lambda root, cfg: _checked(labelling.read_cvat_xml,
                                                                                      "cvat_xml", root, cfg)))
FORMATS.register("labelstudio", DatasetFormat(
    "Label Studio JSON export: brush RLE and polygon labels, images in images/ or beside it, rasterised into a cache",
    lambda root: bool(labelling.labelstudio_files(root)),
    lambda root, cfg: _checked(labelling.read_labelstudio, "labelstudio", root, cfg)))
FORMATS.register("folders", DatasetFormat(
    "an images folder and a masks folder matched by file stem, at the root or under split folders",
    _has_folders, lambda root, cfg: _folders(root, cfg), priority=1))
FORMATS.register("list", DatasetFormat(
    "CSV or text lists of image,mask pairs (one file per split, or a file given as data.root)",
    lambda root: root.is_file() or bool(public_formats.list_files(root)),
    _public("list", lambda root: public_formats.read_lists(root)), priority=2))


def detect_format(root: Path) -> str:
    """The layout of ``root``; an error when it matches none of the recognisable ones in a unique way."""
    if root.is_file():
        return "list"
    found = [name for name, f in FORMATS.items() if f.priority == 0 and f.detect(root)]
    if len(found) > 1:
        raise DataError(f"{root}: looks like more than one dataset layout ({', '.join(found)}); say which with "
                        "--format (data.format)")
    if found:
        return found[0]
    if not FORMATS.get("folders").detect(root) and FORMATS.get("list").detect(root):
        return "list"
    return "folders"


def _class_file(root: Path, cfg: DataConfig) -> ClassTable | None:
    """The table given in the config (inline or a file, relative to the working folder or the data root)."""
    if isinstance(cfg.classes, ClassTable):
        return cfg.classes
    if isinstance(cfg.classes, Path):
        path = cfg.classes if cfg.classes.is_absolute() or cfg.classes.exists() else root / cfg.classes
        if not path.is_file():
            raise ConfigError(f"data.classes: classes file not found: {cfg.classes}")
        return ClassTable.from_file(path)
    return None


def discover(cfg: DataConfig, root: Path | None = None) -> Layout:
    """Find the pairs of every split under ``root`` (default ``cfg.root``) in ``cfg.format``."""
    root = root or cfg.root
    if root is None:
        raise ConfigError("no dataset given: pass --data DIR or set data.root in the config")
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"{root}: dataset folder not found")
    if not root.is_dir() and not root.is_file():  # a pipe (<(...)), a socket, a device: reading it could block
        raise DataError(f"{root}: is neither a folder nor a regular file; give the dataset folder, or a list file "
                        "of image,mask pairs saved to disk")
    fmt = detect_format(root) if cfg.format == "auto" else cfg.format
    if root.is_file() and fmt != "list":
        raise DataError(f"{root}: is a file; the {fmt} format reads a folder (a file is read as a list of pairs)")
    layout = FORMATS.get(fmt).read(root, cfg)
    if fmt != "folders" and cfg.classes is not None:  # the config's table replaces the layout's own
        layout.classes = _class_file(root if root.is_dir() else root.parent, cfg)
    empty = [name for name, pairs in layout.splits.items() if not pairs]
    if empty:
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        raise DataError(f"{root}: split folder(s) {', '.join(empty)} hold no images ({suffixes})")
    return layout


def select_split(layout: Layout, cfg: DataConfig, split: str) -> tuple[list[Pair], str]:
    """The pairs of ``split`` as training decides them (``splits.plan_splits``) and where they came from."""
    return _select_split(layout.splits, cfg, split, layout.root)


def check_orphans(layout: Layout) -> list[str]:
    """Warnings for masks that have no image."""
    if not layout.orphan_masks:
        return []
    return [list_offenders("masks without an image (ignored)", [str(p) for p in layout.orphan_masks])]
