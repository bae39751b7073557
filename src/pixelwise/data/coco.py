"""COCO JSON (instances) as semantic segmentation: annotation files per split, checked, rasterised once.

Found as MS COCO's ``annotations/instances_SPLIT.json`` (CVAT's COCO export: ``instances_default.json``; the
captions_ and person_keypoints_ files beside them are not masks and are left out), or Roboflow's
``SPLIT/_annotations.coco.json`` beside the images. Masks are drawn with pycocotools into a cache
outside the dataset (``$PIXELWISE_CACHE``, else ``$XDG_CACHE_HOME/pixelwise`` or ``~/.cache/pixelwise``);
nothing is written into the user's data. Everything taken from the JSON is checked before it is used: entries
have the keys they need, file names stay inside the dataset, cache files are named by a hash of the image id,
sizes are bounded like decoded images (a declared 10^5 x 10^5 image is refused, not allocated), and every
segmentation is checked against its image before anything is drawn (an RLE must have the image's size and cover
it exactly, polygon points must be numbers near the image), so a tiny file cannot make pycocotools allocate
gigabytes or read memory it does not own.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pixelwise.atomic import atomic_write
from pixelwise.data.classes import IGNORE, ClassTable
from pixelwise.data.io import Pair, exif_orientation, max_pixels
from pixelwise.data.paths import inside, outside_message, safe_key
from pixelwise.errors import DataError, list_offenders
from pixelwise.progress import track

COCO_KEYS = {"images", "annotations", "categories"}
ROTATED = {5, 6, 7, 8}  # EXIF orientations that swap width and height
CACHE_VERSION = 2  # part of the cache key: 2 names masks by a hash of the image id
NUMBER = (int, float)  # JSON numbers; ``type(v) in NUMBER`` also leaves out true and false
NUMBER_TYPES = frozenset(NUMBER)
SCALAR = (int, float, str)  # what a category id may be: a number (as COCO has it) or a string


def split_name(name: str) -> str:
    """'train2017' -> 'train', 'valid'/'validation'/'val2017' -> 'val', 'test-dev' -> 'test'; others unchanged."""
    low = name.lower()
    for prefix, split in (("train", "train"), ("valid", "val"), ("val", "val"), ("test", "test")):
        if low.startswith(prefix):
            return split
    return name


def _stem(path: Path) -> str:
    return path.stem.removeprefix("instances_").removeprefix("annotations_")


def coco_files(root: Path, one_per_split: bool = False) -> dict[str, Path]:
    """Split name -> COCO annotation file: annotations/instances_SPLIT.json (or, where there is none, any
    annotations/*.json), or one *.json per split folder (Roboflow: train/_annotations.coco.json beside the images).

    MS COCO's annotations/ also holds captions_SPLIT.json and person_keypoints_SPLIT.json: not masks, not splits.
    ``one_per_split``: two files for one split (instances_train2014.json and instances_train2017.json) are an
    error naming both, rather than the first being read and the other left out unsaid.
    """
    found: dict[str, list[Path]] = {}
    jsons = sorted((root / "annotations").glob("*.json")) if (root / "annotations").is_dir() else []
    for path in [p for p in jsons if p.name.startswith("instances_")] or jsons:
        found.setdefault(split_name(_stem(path)), []).append(path)
    for split, paths in list(found.items()):  # COCO 2014: val2014 beside its parts minival2014, valminusminival2014
        named = [p for p in paths if re.fullmatch(re.escape(split) + r"\d*", _stem(p), re.IGNORECASE)]
        if len(paths) > 1 and len(named) == 1:  # the split itself; the others are splits of their own names
            found[split] = named
            found.update({_stem(p): [p] for p in paths if p is not named[0]})
    if not found:
        for sub in sorted(p for p in root.iterdir() if p.is_dir()):
            jsons = sorted(sub.glob("*.coco.json")) or sorted(sub.glob("*annotations*.json"))
            if jsons:
                found[split_name(sub.name)] = jsons
    if not found:
        jsons = sorted(root.glob("*.coco.json")) + sorted(root.glob("instances*.json"))
        if jsons:
            found["train"] = jsons
    several = {split: paths for split, paths in found.items() if len(paths) > 1}
    if one_per_split and several:
        raise DataError(f"{root}: more than one COCO annotation file for a split ("
                        + "; ".join(f"{split}: {', '.join(p.name for p in paths)}" for split, paths in several.items())
                        + "); keep one per split in its own folder, or move the others out")
    return {split: paths[0] for split, paths in found.items()}


def cache_root() -> Path:
    env = os.environ.get("PIXELWISE_CACHE")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pixelwise"


def _entries(data: dict[str, Any], key: str, required: tuple[str, ...], path: Path) -> list[dict[str, Any]]:
    """``data[key]`` as a list of dicts that hold ``required``; every entry that does not is named."""
    items = data[key]
    if not isinstance(items, list):
        raise DataError(f"{path}: '{key}' is not a list")
    bad = [f"{key}[{i}]: {json.dumps(e)[:80]}" for i, e in enumerate(items)
           if not isinstance(e, dict) or any(k not in e for k in required)]
    if bad:
        raise DataError(list_offenders(f"{path}: {key} entries without {', '.join(required)}", bad))
    return items


def _load_coco(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as e:
        raise DataError(f"{path}: cannot be read as COCO JSON ({e})") from None
    if not isinstance(data, dict) or not COCO_KEYS <= set(data):
        raise DataError(f"{path}: not a COCO annotation file (needs images, annotations and categories)")
    _entries(data, "images", ("id", "file_name"), path)
    _entries(data, "categories", ("id", "name"), path)
    _entries(data, "annotations", ("image_id", "category_id"), path)
    repeated = sorted(str(i) for i, n in Counter(str(im["id"]) for im in data["images"]).items() if n > 1)
    if repeated:  # their masks would share one cache file
        raise DataError(list_offenders(f"{path}: image ids used by more than one image entry", repeated))
    bad = [f"categories[{i}]: id {json.dumps(c['id'])[:40]} is neither a number nor a string"
           for i, c in enumerate(data["categories"]) if type(c["id"]) not in SCALAR]
    if bad:
        raise DataError(list_offenders(f"{path}: categories whose id cannot be used", bad))
    repeated = sorted(str(i) for i, n in Counter(c["id"] for c in data["categories"]).items() if n > 1)
    if repeated:  # their annotations would all go to one of them
        raise DataError(list_offenders(f"{path}: category ids used by more than one category", repeated))
    bad = []
    for i, ann in enumerate(data["annotations"]):
        category, area = ann["category_id"], ann.get("area")
        if type(category) not in SCALAR:
            bad.append(f"{_where(i, ann)}: category_id {json.dumps(category)[:40]} is not a category id (a number)")
        if area is not None and not (type(area) in NUMBER and math.isfinite(area)):
            bad.append(f"{_where(i, ann)}: area {json.dumps(area)[:40]} is not a number")
    if bad:
        raise DataError(list_offenders(f"{path}: annotations with a category_id or area that cannot be used", bad))
    return data


def _where(i: int, ann: dict) -> str:
    """How an annotation is named in messages: its place in the file and, where it has one, its id."""
    return f"annotations[{i}]" + (f" (id {str(ann['id'])[:40]})" if "id" in ann else "")


def _rle_runs(counts: str) -> list[int] | None:
    """The run lengths in a compressed COCO RLE string (read as pycocotools' rleFrString reads it), or None where
    the string is not one (a character out of range, a number cut off)."""
    runs: list[int] = []
    x = shift = 0
    for char in counts:
        c = ord(char) - 48
        if not 0 <= c < 64 or shift > 60:
            return None
        x |= (c & 0x1F) << shift
        shift += 5
        if c & 0x20:
            continue  # the number goes on in the next character
        if c & 0x10:
            x -= 1 << shift  # negative: a difference from the run two back
        runs.append(x + runs[-2] if len(runs) > 2 else x)
        x = shift = 0
    return runs if shift == 0 else None


def _segmentation_problem(seg: Any, size: tuple[int, int] | None) -> str | None:
    """Why a (non-empty) segmentation cannot be drawn on an image of ``size`` (height, width; None where it is
    not known, and then only the form is checked), or None. Nothing is decoded, so nothing large is allocated."""
    if isinstance(seg, list):  # polygons [[x1, y1, x2, y2, ...], ...]
        if not all(isinstance(p, list) for p in seg):
            if all(type(v) in NUMBER for v in seg):
                return ("is a flat list of numbers: COCO polygons are a list of lists, [[x1, y1, x2, y2, ...], "
                        "...], one list per polygon (a single polygon is [[x1, y1, ...]])")
            return f"{json.dumps(seg)[:60]} is not a list of polygons [[x1, y1, x2, y2, ...], ...]"
        h, w = size or (math.inf, math.inf)
        m = max(h, w)  # points further out than this would make pycocotools trace a long outline
        for j, poly in enumerate(seg):
            if not NUMBER_TYPES.issuperset(map(type, poly)):
                return f"polygon {j} holds something other than numbers: {json.dumps(poly)[:60]}"
            if len(poly) % 2:
                return f"polygon {j} has an odd number of coordinates ({len(poly)}); they come in x, y pairs"
            if poly and not math.isfinite(sum(poly)):
                return f"polygon {j} holds a coordinate that is not a finite number (NaN or infinity)"
            if poly and (min(poly) < -m or max(poly) > 2 * m):
                return (f"polygon {j} has coordinates from {min(poly)} to {max(poly)}, far outside its {w}x{h} "
                        "image (more than its size beyond an edge): were they made for another image size?")
        return None
    if not isinstance(seg, dict):
        return (f"{json.dumps(seg)[:60]} is neither polygons [[x1, y1, x2, y2, ...], ...] nor an RLE "
                "{'size': [height, width], 'counts': ...}")
    missing = [k for k in ("size", "counts") if k not in seg]
    if missing:
        return f"is an RLE without {' and '.join(repr(k) for k in missing)} (a COCO RLE has 'size' and 'counts')"
    rle_size = seg["size"]
    if not (isinstance(rle_size, list) and len(rle_size) == 2 and all(type(v) is int and v > 0 for v in rle_size)):
        return f"is an RLE whose size {json.dumps(rle_size)[:40]} is not [height, width]"
    if size is not None and tuple(rle_size) != size:
        return f"is an RLE of size {rle_size} (height, width), but its image is {list(size)}"
    counts = seg["counts"]
    runs = counts if isinstance(counts, list) else _rle_runs(counts) if isinstance(counts, str) else None
    if runs is None or not all(type(v) is int and v >= 0 for v in runs):
        return ("is an RLE whose counts are neither a list of run lengths nor a compressed COCO RLE string: "
                f"{json.dumps(counts)[:40]}")
    if sum(runs) != rle_size[0] * rle_size[1]:
        return (f"is an RLE whose runs cover {sum(runs):,} pixels, not the {rle_size[0] * rle_size[1]:,} of its "
                f"size {rle_size}")
    return None


def roboflow_dataset_category(categories: list[dict], used: set[Any]) -> dict | None:
    """Roboflow's COCO exports list the dataset itself as category 0 (supercategory 'none'), the parent of every
    real category (their supercategory is its name); no annotation uses it. It is not a class."""
    zero = next((c for c in categories if c["id"] == 0), None)
    others = [c for c in categories if c is not zero]
    if zero is None or not others or 0 in used or zero.get("supercategory") != "none":
        return None
    return zero if all(c.get("supercategory") == zero["name"] for c in others) else None


def coco_table(categories: list[dict], source: str = "COCO categories") -> tuple[ClassTable, dict[Any, int]]:
    """Class 0 is background; the categories follow in order of their id. Returns the table and category id ->
    class index (a category named 'background' is class 0 itself)."""
    cats = sorted(categories, key=lambda c: (isinstance(c["id"], str), c["id"]))  # numbers, then strings
    names = [str(c["name"]) for c in cats]
    seen: dict[str, Any] = {}
    for c, name in zip(cats, names, strict=True):
        if name.strip().casefold() in seen:
            raise DataError(f"{source}: categories {seen[name.strip().casefold()]} and {c['id']} are both named "
                            f"'{name}'; two classes of one name cannot be told apart: rename or merge them")
        seen[name.strip().casefold()] = c["id"]
    is_bg = [n.strip().casefold() == "background" for n in names]
    kept = [n for n, bg in zip(names, is_bg, strict=True) if not bg]
    if len(kept) + 1 >= IGNORE:
        raise DataError(f"{source}: {len(kept)} categories; at most {IGNORE - 2} fit in a semantic mask")
    index = iter(range(1, len(kept) + 1))
    class_of = {c["id"]: 0 if bg else next(index) for c, bg in zip(cats, is_bg, strict=True)}
    return ClassTable.checked(source, names=["background", *kept]), class_of


def rasterize(image: dict, annotations: list[dict], class_of: dict[Any, int]) -> np.ndarray:
    """One image's instances painted into a semantic mask (0 = background).

    Overlaps are resolved deterministically: crowd regions first, then instances from the largest area to the
    smallest (ties by annotation id), each painted over the ones before, so a small object on a large one stays.
    Polygons of fewer than 3 points have no area and draw nothing (read_coco notes them). A segmentation that
    cannot be drawn on this image is refused before anything is decoded (read_coco refuses it sooner, by file).
    """
    from pycocotools import mask as mask_utils

    h, w = int(image["height"]), int(image["width"])
    for i, ann in enumerate(annotations):
        problem = _segmentation_problem(ann.get("segmentation"), (h, w)) if ann.get("segmentation") else None
        if problem:
            raise DataError(f"image {image.get('id')}: {_where(i, ann)}: segmentation {problem}")
    out = np.zeros((h, w), dtype=np.uint8)
    order = sorted(annotations, key=lambda a: (not a.get("iscrowd", 0), -float(a.get("area") or 0), str(a.get("id"))))
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


def displayed_size(path: Path) -> tuple[int, int] | None:
    """(height, width) of an image file as pixelwise reads it (EXIF rotation applied), from its header only."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            return (w, h) if exif_orientation(im) in ROTATED else (h, w)
    except (OSError, SyntaxError, ValueError):
        return None  # unreadable: the checks name it when they decode the image


def _pairs(root: Path, path: Path, data: dict[str, Any], out_dir: Path
           ) -> tuple[list[Pair], list[dict], dict[str, tuple[int, int]], list[str]]:
    """Each image entry -> (image file inside the dataset, cached mask); entries to rasterise (sizes filled in);
    image id -> (height, width) for every image whose size is known; what is wrong with the entries."""
    dirs, limit = _image_dirs(root, path), max_pixels()
    pairs, todo, sizes, bad = [], [], {}, []
    for i, image in enumerate(sorted(data["images"], key=lambda im: str(im["id"]))):
        name, where = image["file_name"], f"{path}: images[{i}] (id {image['id']})"
        candidates = [p for d in dirs if (p := inside(root, name, start=d)) is not None]
        if not candidates:
            bad.append(outside_message(where, name, root))
            continue
        found = next((p for p in candidates if p.is_file()), candidates[0])
        mask = out_dir / f"{safe_key(image['id'])}.png"
        pairs.append(Pair(found, mask))
        size = (image.get("height"), image.get("width"))
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size):
            size = displayed_size(found)  # CVAT and hand-written files may leave the size out
            if size is None:
                continue  # no image to measure: the checks report the missing or unreadable file
        sizes[str(image["id"])] = size
        if size[0] * size[1] > limit:
            bad.append(f"{where}: declares {size[1]}x{size[0]} = {size[0] * size[1]:,} pixels, over the limit of "
                       f"{limit:,} (data.max_image_pixels)")
        elif not mask.is_file():
            todo.append({**image, "height": size[0], "width": size[1]})
    return pairs, todo, sizes, bad


def _by_image(path: Path, data: dict[str, Any], sizes: dict[str, tuple[int, int]]
              ) -> tuple[dict[str, list[dict]], list[str]]:
    """Image id -> its annotations, every segmentation checked against its image's size before anything is drawn
    (a bad one is refused, with every other); notes on the annotations that draw nothing, so none goes unsaid."""
    ids = {str(im["id"]) for im in data["images"]}
    by_image: dict[str, list[dict]] = {}
    bad, empty, thin, orphans = [], 0, 0, 0
    for i, ann in enumerate(data["annotations"]):
        key, seg = str(ann["image_id"]), ann.get("segmentation")
        by_image.setdefault(key, []).append(ann)
        orphans += key not in ids
        problem = _segmentation_problem(seg, sizes.get(key)) if seg else None
        if problem:
            bad.append(f"{_where(i, ann)}: segmentation {problem}")
        elif not seg:
            empty += 1
        elif isinstance(seg, list):
            thin += sum(len(p) < 6 for p in seg)
    if bad:
        raise DataError(list_offenders(f"{path}: annotations whose segmentation cannot be drawn", bad))
    notes = [f"{path}: {n} {text}" for n, text in (
        (empty, "annotation(s) without a segmentation (only a box?) draw nothing"),
        (thin, "polygon(s) of fewer than 3 points have no area and draw nothing (pycocotools cannot fill them)"),
        (orphans, "annotation(s) name an image_id that no image entry has; they are not drawn"),
    ) if n]
    return by_image, notes


def _category_plan(files: dict[str, Path], loaded: dict[str, dict]) -> tuple[ClassTable, dict[Any, int], list[str]]:
    """The class table every split shares, with the note of what was recognised."""
    used = {a["category_id"] for d in loaded.values() for a in d["annotations"]}
    notes, table, class_of = [], None, {}
    for split, data in loaded.items():
        cats = data["categories"]
        dropped = roboflow_dataset_category(cats, used)
        if dropped is not None:
            cats = [c for c in cats if c is not dropped]
            note = (f"COCO category 0 '{dropped['name']}' (supercategory 'none', the parent of the others, used by "
                    "no annotation) is Roboflow's dataset-level category, not a class: left out")
            notes += [] if note in notes else [note]
        this, mapping = coco_table(cats, str(files[split]))
        if table is not None and this.names != table.names:
            raise DataError(f"{files[split]}: its categories differ from the other splits' "
                            f"({', '.join(this.names[1:])} against {', '.join(table.names[1:])})")
        table, class_of = this, {**class_of, **mapping}
    if any(v == 0 for v in class_of.values()):
        notes.append("a COCO category named 'background' is class 0, with the pixels no annotation covers")
    assert table is not None
    return table, class_of, notes


def read_coco(root: Path) -> tuple[dict[str, list[Pair]], ClassTable, list[Path], list[str]]:
    files = coco_files(root, one_per_split=True)
    if not files:
        raise DataError(f"{root}: no COCO annotation files (expected annotations/instances_train.json, ...; or "
                        "train/_annotations.coco.json beside the images)")
    try:
        import pycocotools  # noqa: F401
    except ImportError:
        raise DataError("COCO masks are rasterised with pycocotools, which is not installed: pip install "
                        "'pixelwise[coco]'") from None
    loaded = {split: _load_coco(path) for split, path in files.items()}
    table, class_of, notes = _category_plan(files, loaded)
    plans = []  # every split is checked before any is drawn
    for split, path in files.items():
        data = loaded[split]
        unknown = [f"{_where(i, a)}: category_id {a['category_id']}" for i, a in enumerate(data["annotations"])
                   if a["category_id"] not in class_of]
        if unknown:
            raise DataError(list_offenders(f"{path}: annotations whose category_id is not among the categories",
                                           unknown))
        stat = path.stat()
        key = hashlib.sha1(f"{CACHE_VERSION}|{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()
        out_dir = cache_root() / "coco-masks" / key[:16]
        pairs, todo, sizes, bad = _pairs(root, path, data, out_dir)
        if bad:
            raise DataError(list_offenders(f"{path}: image entries that cannot be used", bad))
        by_image, more = _by_image(path, data, sizes)
        plans.append((split, out_dir, pairs, todo, by_image))
        notes += more
    splits: dict[str, list[Pair]] = {}
    for split, out_dir, pairs, todo, by_image in plans:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DataError(f"{out_dir}: cannot create the folder for rasterised COCO masks ({e}); set "
                            "PIXELWISE_CACHE to a writable folder") from None
        for image in track(todo, total=len(todo), label=f"Rasterising COCO {split}") if todo else []:
            mask = rasterize(image, by_image.get(str(image["id"]), []), class_of)
            atomic_write(out_dir / f"{safe_key(image['id'])}.png",
                         lambda tmp, m=mask: Image.fromarray(m).save(tmp, format="PNG"))
        splits[split] = pairs
    return splits, table, [], notes
