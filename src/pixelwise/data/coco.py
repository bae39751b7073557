"""COCO JSON (instances) as semantic segmentation: annotation files per split, checked, rasterised once.

Found as MS COCO's ``annotations/instances_SPLIT.json`` (CVAT's COCO export: ``instances_default.json``), or
Roboflow's ``SPLIT/_annotations.coco.json`` beside the images. Masks are drawn with pycocotools into a cache
outside the dataset (``$PIXELWISE_CACHE``, else ``$XDG_CACHE_HOME/pixelwise`` or ``~/.cache/pixelwise``);
nothing is written into the user's data. Everything taken from the JSON is checked before it is used: entries
have the keys they need, file names stay inside the dataset, cache files are named by a hash of the image id,
sizes are bounded like decoded images (a declared 10^5 x 10^5 image is refused, not allocated).
"""

from __future__ import annotations

import hashlib
import json
import os
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


def split_name(name: str) -> str:
    """'train2017' -> 'train', 'valid'/'validation'/'val2017' -> 'val', 'test-dev' -> 'test'; others unchanged."""
    low = name.lower()
    for prefix, split in (("train", "train"), ("valid", "val"), ("val", "val"), ("test", "test")):
        if low.startswith(prefix):
            return split
    return name


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
    return data


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
    cats = sorted(categories, key=lambda c: c["id"])
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
    """
    from pycocotools import mask as mask_utils

    h, w = int(image["height"]), int(image["width"])
    out = np.zeros((h, w), dtype=np.uint8)
    order = sorted(annotations, key=lambda a: (not a.get("iscrowd", 0), -float(a.get("area", 0)), str(a.get("id"))))
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


def _displayed_size(path: Path) -> tuple[int, int] | None:
    """(height, width) of an image file as pixelwise reads it (EXIF rotation applied), from its header only."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            return (w, h) if exif_orientation(im) in ROTATED else (h, w)
    except (OSError, SyntaxError, ValueError):
        return None  # unreadable: the checks name it when they decode the image


def _pairs(root: Path, path: Path, data: dict[str, Any], out_dir: Path) -> tuple[list[Pair], list[dict], list[str]]:
    """Each image entry -> (image file inside the dataset, cached mask); entries to rasterise (sizes filled in)."""
    dirs, limit = _image_dirs(root, path), max_pixels()
    pairs, todo, bad = [], [], []
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
            size = _displayed_size(found)  # CVAT and hand-written files may leave the size out
            if size is None:
                continue  # no image to measure: the checks report the missing or unreadable file
        if size[0] * size[1] > limit:
            bad.append(f"{where}: declares {size[1]}x{size[0]} = {size[0] * size[1]:,} pixels, over the limit of "
                       f"{limit:,} (data.max_image_pixels)")
        elif not mask.is_file():
            todo.append({**image, "height": size[0], "width": size[1]})
    return pairs, todo, bad


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
    files = coco_files(root)
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
    splits: dict[str, list[Pair]] = {}
    for split, path in files.items():
        data = loaded[split]
        unknown = [f"annotations[{i}]: category_id {a['category_id']}" for i, a in enumerate(data["annotations"])
                   if a["category_id"] not in class_of]
        if unknown:
            raise DataError(list_offenders(f"{path}: annotations whose category_id is not among the categories",
                                           unknown))
        stat = path.stat()
        key = hashlib.sha1(f"{CACHE_VERSION}|{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()
        out_dir = cache_root() / "coco-masks" / key[:16]
        pairs, todo, bad = _pairs(root, path, data, out_dir)
        if bad:
            raise DataError(list_offenders(f"{path}: image entries that cannot be used", bad))
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DataError(f"{out_dir}: cannot create the folder for rasterised COCO masks ({e}); set "
                            "PIXELWISE_CACHE to a writable folder") from None
        by_image: dict[str, list[dict]] = {}
        for ann in data["annotations"]:
            by_image.setdefault(str(ann["image_id"]), []).append(ann)
        for image in track(todo, total=len(todo), label=f"Rasterising COCO {split}") if todo else []:
            mask = rasterize(image, by_image.get(str(image["id"]), []), class_of)
            atomic_write(out_dir / f"{safe_key(image['id'])}.png",
                         lambda tmp, m=mask: Image.fromarray(m).save(tmp, format="PNG"))
        splits[split] = pairs
    return splits, table, [], notes
