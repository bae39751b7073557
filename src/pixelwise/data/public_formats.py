"""Public dataset layouts: Pascal VOC (and CVAT's Segmentation mask export), Cityscapes, and lists of
image,mask pairs (CSV/TSV/text); COCO JSON is in ``coco``.

Each reader returns (splits, class table or None, masks without images, notes); ``formats.discover`` wraps them
in a ``Layout``. Class tables and label mappings are the datasets' published ones (VOC's 21 classes and colour
map, Cityscapes' 19 train ids), or the export's own (CVAT's labelmap.txt).
"""

from __future__ import annotations

import csv
from pathlib import Path

from pixelwise.data.classes import IGNORE, ClassTable
from pixelwise.data.coco import coco_files, rasterize, read_coco, split_name  # noqa: F401  (re-exported)
from pixelwise.data.io import IMAGE_SUFFIXES, Pair
from pixelwise.data.paths import inside, outside_message
from pixelwise.errors import DataError, list_offenders

Splits = dict[str, list[Pair]]


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


def read_labelmap(path: Path) -> ClassTable:
    """CVAT's (Datumaro's) labelmap.txt, ``name:r,g,b:parts:actions`` per line: the export's own classes, in file
    order, with the colours its SegmentationClass masks are painted in (a label without one gets VOC's)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read the label map ({e})") from None
    names, colours, bad = [], [], []
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, _, rest = line.partition(":")
        rgb = rest.split(":")[0].strip()
        try:
            colour = tuple(int(v) for v in rgb.split(",")) if rgb else voc_colormap(len(names) + 1)[-1]
        except ValueError:
            colour = ()
        if not name.strip() or len(colour) != 3 or not all(0 <= v <= 255 for v in colour):
            bad.append(f"{path}:{number}: expected 'name:r,g,b::', got {line[:80]}")
        names.append(name.strip())
        colours.append(colour)
    if bad or not names:
        raise DataError(list_offenders(f"{path}: lines that are not labels", bad or ["(no labels)"]))
    return ClassTable.checked(str(path), names=names, colors=colours, color_masks=True)


def read_voc(root: Path) -> tuple[Splits, ClassTable, list[Path], list[str]]:
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
    if (base / "labelmap.txt").is_file():  # CVAT's Segmentation mask export: its labels, masks in their colours
        note = f"classes from {base / 'labelmap.txt'} (CVAT's label map), masks read by their colours"
        return splits, read_labelmap(base / "labelmap.txt"), orphans, [note]
    return splits, VOC_CLASSES, orphans, []


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


def read_cityscapes(root: Path) -> tuple[Splits, ClassTable, list[Path], list[str]]:
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
    return splits, CITYSCAPES_CLASSES, orphans, []


# --- lists of pairs ------------------------------------------------------------------------------------------

LIST_SUFFIXES = (".csv", ".tsv", ".txt")


def list_files(root: Path) -> dict[str, Path]:
    """Split name -> list file: ``root`` itself when it is a file, else SPLIT.csv/.tsv/.txt in ``root``."""
    if root.is_file():
        return {"train": root}
    return {split_name(p.stem): p for p in sorted(root.iterdir())
            if p.is_file() and p.suffix.lower() in LIST_SUFFIXES and split_name(p.stem) in ("train", "val", "test")}


def _delimiter(path: Path, lines: list[str]) -> str | None:
    """One separator per file: ',' for .csv, tab for .tsv; a .txt takes tabs when it has any, else commas when it
    has any, else runs of spaces (None). Deciding per line split tab-separated paths at their spaces too."""
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return "," if suffix == ".csv" else "\t"
    return next((d for d in ("\t", ",") if any(d in line for line in lines)), None)


def _is_header(fields: list[str], folder: Path) -> bool:
    """A first line is a header when it has a pair's fields but names no existing file and not only image files
    (image,mask; path,label)."""
    if len(fields) not in (1, 2):
        return False
    exists = any((p := inside(folder, f)) is not None and p.exists() for f in fields)
    return not exists and not all(Path(f).suffix.lower() in IMAGE_SUFFIXES for f in fields)


def read_list_file(path: Path) -> tuple[list[Pair], list[str]]:
    """``image,mask`` per line (one separator per file: comma, tab, or spaces in a .txt without either; a header
    line and # comments are skipped, and a note says which header was); paths are relative to the list's folder
    and must stay inside it; an image without a mask column has no mask. Returns the pairs and the notes."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # spreadsheets save CSV with a byte-order mark
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read the list of pairs ({e})") from None
    numbered = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1)
                if line.strip() and not line.lstrip().startswith("#")]
    delimiter = _delimiter(path, [line for _, line in numbered])
    pairs, bad, notes = [], [], []
    for i, (number, line) in enumerate(numbered):
        fields = [f.strip() for f in (next(csv.reader([line], delimiter=delimiter)) if delimiter else line.split())]
        fields = [f for f in fields if f]
        if i == 0 and fields and _is_header(fields, path.parent):
            notes.append(f"{path}: first line '{line[:80]}' taken as a header (it names no file)")
            continue
        if len(fields) not in (1, 2):
            hint = "; separate paths that hold spaces with a comma or a tab" if delimiter is None else ""
            bad.append(f"{path}:{number}: expected 'image,mask', got {len(fields)} fields: {line[:80]}{hint}")
            continue
        resolved = [inside(path.parent, f) for f in fields]
        outside = [f for f, p in zip(fields, resolved, strict=True) if p is None]
        if outside:
            bad += [outside_message(f"{path}:{number}", f, path.parent) for f in outside]
            continue
        pairs.append(Pair(resolved[0], resolved[1] if len(resolved) > 1 else None))
    if bad:
        raise DataError(list_offenders(f"{path}: lines that are not image,mask pairs inside the list's folder (paths "
                                       "are relative to it; move the list beside or above the images)", bad))
    return pairs, notes


def read_lists(root: Path) -> tuple[Splits, None, list[Path], list[str]]:
    files = list_files(root)
    if not files:
        raise DataError(f"{root}: no list of pairs (expected a .csv/.txt file, or train.csv and val.csv in it)")
    splits, notes = {}, []
    for split, path in files.items():
        splits[split], found = read_list_file(path)
        notes += found
    return splits, None, [], notes
