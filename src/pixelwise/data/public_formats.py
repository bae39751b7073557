"""Public dataset layouts: Pascal VOC, Cityscapes, COCO JSON, and lists of image,mask pairs (CSV/text).

Each reader returns (splits, class table or None, masks without images); ``formats.discover`` wraps them in a
``Layout``. Class tables and label mappings are the datasets' published ones (VOC's 21 classes and colour map,
Cityscapes' 19 train ids). COCO annotations are rasterised once into PNG masks in a cache folder outside the
dataset (``$PIXELWISE_CACHE``, else ``$XDG_CACHE_HOME/pixelwise`` or ``~/.cache/pixelwise``); nothing is written
into the user's data.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np
from PIL import Image

from pixelwise.atomic import atomic_write
from pixelwise.data.classes import IGNORE, ClassTable
from pixelwise.data.io import IMAGE_SUFFIXES, Pair
from pixelwise.errors import DataError, list_offenders
from pixelwise.progress import track

Splits = dict[str, list[Pair]]


def split_name(name: str) -> str:
    """'train2017' -> 'train', 'valid'/'validation'/'val2017' -> 'val', 'test-dev' -> 'test'; others unchanged."""
    low = name.lower()
    for prefix, split in (("train", "train"), ("valid", "val"), ("val", "val"), ("test", "test")):
        if low.startswith(prefix):
            return split
    return name


# --- Pascal VOC ----------------------------------------------------------------------------------------------

VOC_NAMES = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
             "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
             "tvmonitor"]


def voc_colormap(n: int) -> list[tuple[int, int, int]]:
    """The VOC palette: the bits of the class index spread over the high bits of r, g and b."""
    colours = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colours.append((r, g, b))
    return colours


VOC_CLASSES = ClassTable(names=VOC_NAMES, colors=voc_colormap(len(VOC_NAMES)), ignore_index=IGNORE)


def voc_root(root: Path) -> Path | None:
    """The folder holding JPEGImages and SegmentationClass: ``root`` itself, VOC20xx/ or VOCdevkit/VOC20xx/."""
    for cand in [root, *sorted(root.glob("VOC*")), *sorted(root.glob("VOCdevkit/VOC*"))]:
        if (cand / "JPEGImages").is_dir() and (cand / "SegmentationClass").is_dir():
            return cand
    return None


def read_voc(root: Path) -> tuple[Splits, ClassTable, list[Path]]:
    base = voc_root(root)
    if base is None:
        raise DataError(f"{root}: not a Pascal VOC layout (expected JPEGImages/ and SegmentationClass/, possibly "
                        "under VOCdevkit/VOC2012/)")
    images = {p.stem: p for p in (base / "JPEGImages").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    masks = {p.stem: p for p in (base / "SegmentationClass").iterdir() if p.suffix.lower() == ".png"}
    lists = sorted((base / "ImageSets" / "Segmentation").glob("*.txt"))
    names = {p.stem: p for p in lists}
    if "train" in names and "val" in names:
        names.pop("trainval", None)  # the union of the two: not a split of its own
    splits: Splits = {}
    missing: list[str] = []
    for name, path in sorted(names.items()):
        stems = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
        missing += [f"{path}: lists '{s}', which has no image in {base / 'JPEGImages'}" for s in stems
                    if s not in images]
        splits[name] = [Pair(images[s], masks.get(s)) for s in stems if s in images]
    if missing:
        raise DataError(list_offenders(f"{base}: split lists name images that do not exist", missing))
    if not splits:  # no split lists: every annotated image, validation held out
        splits["train"] = [Pair(images[s], masks[s]) for s in sorted(masks) if s in images]
    orphans = [m for s, m in sorted(masks.items()) if s not in images]
    return splits, VOC_CLASSES, orphans


# --- Cityscapes ----------------------------------------------------------------------------------------------

CITYSCAPES_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                        26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
CITYSCAPES_CLASSES = ClassTable(
    names=["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
           "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"],
    colors=[(128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
            (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
            (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32)],
    # label ids 0..33 (and 255 in some exports) -> the 19 train ids; the rest (unlabelled, ego vehicle, ground,
    # parking, rail track, guard rail, bridge, tunnel, polegroup, caravan, trailer, license plate) are void
    mapping={i: CITYSCAPES_TRAIN_IDS.get(i, IGNORE) for i in [*range(34), 255]},
)


def read_cityscapes(root: Path) -> tuple[Splits, ClassTable, list[Path]]:
    images_root, labels_root = root / "leftImg8bit", root / "gtFine"
    if not images_root.is_dir() or not labels_root.is_dir():
        raise DataError(f"{root}: not a Cityscapes layout (expected leftImg8bit/ and gtFine/)")
    splits: Splits = {}
    orphans: list[Path] = []
    for split_dir in sorted(p for p in images_root.iterdir() if p.is_dir()):
        pairs = []
        masks = {p.name.removesuffix("_gtFine_labelIds.png"): p
                 for p in (labels_root / split_dir.name).glob("*/*_gtFine_labelIds.png")}
        for image in sorted(split_dir.glob("*/*_leftImg8bit.png")):
            stem = image.name.removesuffix("_leftImg8bit.png")
            pairs.append(Pair(image, masks.pop(stem, None)))
        orphans += sorted(masks.values())
        if pairs:
            splits[split_dir.name] = pairs
    return splits, CITYSCAPES_CLASSES, orphans


# --- COCO JSON -----------------------------------------------------------------------------------------------

COCO_KEYS = {"images", "annotations", "categories"}


def coco_files(root: Path) -> dict[str, Path]:
    """Split name -> COCO annotation file: annotations/instances_SPLIT.json (or any annotations/*.json), or one
    *.json per split folder (Roboflow: train/_annotations.coco.json beside the images)."""
    found: dict[str, Path] = {}
    for path in sorted((root / "annotations").glob("*.json")) if (root / "annotations").is_dir() else []:
        stem = path.stem.removeprefix("instances_").removeprefix("annotations_")
        found.setdefault(split_name(stem), path)
    if not found:
        for sub in sorted(p for p in root.iterdir() if p.is_dir()):
            jsons = sorted(sub.glob("*.coco.json")) or sorted(sub.glob("*annotations*.json"))
            if jsons:
                found[split_name(sub.name)] = jsons[0]
    if not found:
        jsons = sorted(root.glob("*.coco.json")) + sorted(root.glob("instances*.json"))
        if jsons:
            found["train"] = jsons[0]
    return found


def cache_root() -> Path:
    env = os.environ.get("PIXELWISE_CACHE")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pixelwise"


def _load_coco(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot be read as COCO JSON ({e})") from None
    if not isinstance(data, dict) or not COCO_KEYS <= set(data):
        raise DataError(f"{path}: not a COCO annotation file (needs images, annotations and categories)")
    return data


def coco_table(categories: list[dict]) -> ClassTable:
    """Class 0 is background; the categories follow in order of their id (mask value = class index)."""
    cats = sorted(categories, key=lambda c: c["id"])
    if len(cats) + 1 >= IGNORE:
        raise DataError(f"{len(cats)} COCO categories: at most {IGNORE - 2} fit in a semantic mask")
    return ClassTable(names=["background"] + [str(c["name"]) for c in cats])


def rasterize(image: dict, annotations: list[dict], class_of: dict[int, int]) -> np.ndarray:
    """One image's instances painted into a semantic mask (0 = background).

    Overlaps are resolved deterministically: crowd regions first, then instances from the largest area to the
    smallest (ties by annotation id), each painted over the ones before, so a small object on a large one stays.
    """
    from pycocotools import mask as mask_utils

    h, w = int(image["height"]), int(image["width"])
    out = np.zeros((h, w), dtype=np.uint8)
    order = sorted(annotations, key=lambda a: (not a.get("iscrowd", 0), -float(a.get("area", 0)), a["id"]))
    for ann in order:
        seg = ann.get("segmentation")
        if not seg:
            continue
        if isinstance(seg, list):  # polygons [[x, y, x, y, ...], ...]
            polys = [p for p in seg if len(p) >= 6]
            if not polys:
                continue
            rle = mask_utils.merge(mask_utils.frPyObjects(polys, h, w))
        elif isinstance(seg.get("counts"), list):  # uncompressed RLE
            rle = mask_utils.frPyObjects(seg, h, w)
        else:  # compressed RLE
            rle = dict(seg, counts=seg["counts"].encode() if isinstance(seg["counts"], str) else seg["counts"])
        out[mask_utils.decode(rle).astype(bool)] = class_of[ann["category_id"]]
    return out


def _image_dirs(root: Path, ann_path: Path) -> list[Path]:
    """Where the images of an annotation file may be, most likely first (the first is named when none is)."""
    if ann_path.parent.name != "annotations":  # Roboflow: beside the JSON
        return [ann_path.parent]
    raw = ann_path.stem.removeprefix("instances_").removeprefix("annotations_")
    names = [raw, split_name(raw)]
    cands = [root / n for n in names] + [root / "images" / n for n in names] + [root / "images", root]
    return [c for c in dict.fromkeys(cands) if c.is_dir()] or [root / raw]


def read_coco(root: Path) -> tuple[Splits, ClassTable, list[Path]]:
    files = coco_files(root)
    if not files:
        raise DataError(f"{root}: no COCO annotation files (expected annotations/instances_train.json, ...; or "
                        "train/_annotations.coco.json beside the images)")
    try:
        import pycocotools  # noqa: F401
    except ImportError:
        raise DataError("COCO masks are rasterised with pycocotools: pip install pycocotools") from None
    table: ClassTable | None = None
    splits: Splits = {}
    for split, path in files.items():
        data = _load_coco(path)
        this = coco_table(data["categories"])
        if table is not None and this.names != table.names:
            raise DataError(f"{path}: its categories differ from the other splits' ({', '.join(this.names[1:])})")
        table = this
        class_of = {c["id"]: i + 1 for i, c in enumerate(sorted(data["categories"], key=lambda c: c["id"]))}
        stat = path.stat()
        key = hashlib.sha1(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
        out_dir = cache_root() / "coco-masks" / key
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DataError(f"{out_dir}: cannot create the folder for rasterised COCO masks ({e}); set "
                            "PIXELWISE_CACHE to a writable folder") from None
        by_image: dict[int, list[dict]] = {}
        for ann in data["annotations"]:
            if ann.get("category_id") not in class_of:
                raise DataError(f"{path}: annotation {ann.get('id')} has category_id {ann.get('category_id')}, "
                                "which is not among the categories")
            by_image.setdefault(ann["image_id"], []).append(ann)
        dirs = _image_dirs(root, path)
        pairs = []
        for image in sorted(data["images"], key=lambda im: im["id"]):
            name = str(image["file_name"])
            found = next((d / name for d in dirs if (d / name).is_file()), dirs[0] / name)
            pairs.append(Pair(found, out_dir / f"{image['id']}.png"))
        todo = [im for im in data["images"] if not (out_dir / f"{im['id']}.png").is_file()]
        for image in track(todo, total=len(todo), label=f"Rasterising COCO {split}") if todo else []:
            mask = rasterize(image, by_image.get(image["id"], []), class_of)
            atomic_write(out_dir / f"{image['id']}.png", lambda tmp, m=mask: Image.fromarray(m).save(tmp, format="PNG"))
        splits[split] = pairs
    assert table is not None
    return splits, table, []


# --- lists of pairs ------------------------------------------------------------------------------------------

LIST_SUFFIXES = (".csv", ".tsv", ".txt")


def list_files(root: Path) -> dict[str, Path]:
    """Split name -> list file: ``root`` itself when it is a file, else SPLIT.csv/.tsv/.txt in ``root``."""
    if root.is_file():
        return {"train": root}
    return {split_name(p.stem): p for p in sorted(root.iterdir())
            if p.is_file() and p.suffix.lower() in LIST_SUFFIXES and split_name(p.stem) in ("train", "val", "test")}


def read_list_file(path: Path) -> list[Pair]:
    """``image,mask`` per line (comma, tab or whitespace separated; a header line and # comments are skipped);
    relative paths are relative to the list's folder; an image without a mask column has no mask."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read the list of pairs ({e})") from None
    pairs, bad = [], []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = next(csv.reader([line])) if "," in line else re.split(r"\t|\s+", line)
        fields = [f.strip() for f in fields if f.strip()]
        if number == 1 and fields and not Path(fields[0]).suffix:  # a header: image,mask
            continue
        if len(fields) not in (1, 2):
            bad.append(f"{path}:{number}: expected 'image,mask', got {len(fields)} fields: {line[:80]}")
            continue
        image, *mask = [path.parent / f for f in fields]  # an absolute path stays as it is
        pairs.append(Pair(image, mask[0] if mask else None))
    if bad:
        raise DataError(list_offenders(f"{path}: lines that are not image,mask pairs", bad))
    return pairs


def read_lists(root: Path) -> tuple[Splits, None, list[Path]]:
    files = list_files(root)
    if not files:
        raise DataError(f"{root}: no list of pairs (expected a .csv/.txt file, or train.csv and val.csv in it)")
    return {split: read_list_file(path) for split, path in files.items()}, None, []
