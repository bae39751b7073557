"""Exports of labelling tools as semantic segmentation: CVAT for images 1.1 XML and Label Studio JSON.

- ``cvat_xml``: ``annotations.xml`` (CVAT for images 1.1) at the root, images in ``images/`` (as CVAT exports them
  with images) or beside it. ``<polygon points="x,y;x,y;...">`` and ``<mask rle="..." left top width height>``
  (CVAT's RLE: alternating runs of 0 and 1, starting with 0, row by row over the mask's box) are painted in
  ``z_order``, then file order; labels are the ones in ``<meta>`` (name, colour); ``<image subset>`` is the split,
  and ``images/SUBSET/`` is looked in first (where CVAT's project exports put each subset's images).
- ``labelstudio``: Label Studio's JSON export (a list of tasks) at the root, images in ``images/`` or beside it,
  found by the longest tail of the path in ``data.image`` that names a file (``?d=cam1/a.png`` finds
  ``images/cam1/a.png``), else by its file name (an upload's 8-character prefix may be left off). ``brushlabels``
  (Label Studio's brush RLE, ``brush_rle``) and ``polygonlabels`` (points in percent of the image) are painted in
  result order from each task's first annotation that was not cancelled; tasks with no annotation are left out, a
  task whose annotation has no brush or polygon is all background at the size read from its image's header.
  The class table is the config's (``data.classes``) or background + the label names found, sorted.
Two items that lead to the same image file are refused, both named: one mask per image, nothing merged.
Masks are drawn once into the cache beside COCO's (``coco.cache_root``); nothing is written into the data. Every
label name, polygon point and mask box is checked against the label list and the image; errors name the file and
the item.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse
from xml.etree import ElementTree

import numpy as np
from PIL import Image

from pixelwise.atomic import atomic_write
from pixelwise.config import DataConfig
from pixelwise.data import brush_rle
from pixelwise.data.classes import IGNORE, ClassTable
from pixelwise.data.coco import cache_root, displayed_size, split_name
from pixelwise.data.io import Pair, max_pixels
from pixelwise.data.paths import inside, safe_key
from pixelwise.errors import DataError, list_offenders
from pixelwise.progress import track

CACHE_VERSION = 1
TOLERANCE = 1.0  # pixels a polygon point may lie outside the image (tools round to the border)
Splits = dict[str, list[Pair]]
Shape = tuple[str, Callable[[int, int], np.ndarray], str]  # label, (h, w) -> bool mask, where (for errors)


def polygon_mask(points: np.ndarray, height: int, width: int) -> np.ndarray:
    """A polygon (N x 2 pixel coordinates, corners at integers) filled as pycocotools fills COCO polygons."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.frPyObjects([points.reshape(-1).astype(float).tolist()], height, width)
    return mask_utils.decode(mask_utils.merge(rle)).astype(bool)


def _check_points(points: np.ndarray, height: int, width: int, where: str) -> None:
    if points.ndim != 2 or points.shape[0] < 3 or not np.isfinite(points).all():
        raise DataError(f"{where}: a polygon needs at least 3 finite points")
    low, high = points.min(axis=0), points.max(axis=0)
    if low.min() < -TOLERANCE or high[0] > width + TOLERANCE or high[1] > height + TOLERANCE:
        raise DataError(f"{where}: polygon points reach ({low[0]:g}, {low[1]:g})-({high[0]:g}, {high[1]:g}), outside "
                        f"the {width}x{height} image")


def _bad_size(h: int, w: int, limit: int) -> str | None:
    """Why a declared image size cannot be used, or None; checked before anything of that size is decoded."""
    if h <= 0 or w <= 0:
        return f"declares {w}x{h} pixels, not an image size"
    return f"declares {w}x{h} pixels; the limit is {limit:,} (data.max_image_pixels)" if h * w > limit else None


def _image_file(root: Path, name: str, subset: str | None = None) -> Path | None:
    """The image ``name`` (from a data file) inside ``root``: under images/SUBSET/ first, then images/, the root."""
    folder = inside(root, subset, start=root / "images") if subset else None
    for start in (folder, root / "images", root):
        path = inside(root, name, start=start) if start is not None and start.is_dir() else None
        if path is not None and path.is_file():
            return path
    return inside(root, name, start=root / "images" if (root / "images").is_dir() else root)


def _draw_cached(kind: str, source: Path, key_extra: str, items: list[tuple[Any, int, int, list[Shape]]],
                 class_of: dict[str, int], label: str) -> dict[Any, Path]:
    """Each item (id, height, width, shapes) painted into a cached PNG (0 = background, shapes in order)."""
    stat = source.stat()
    key = hashlib.sha1(f"{kind}|{CACHE_VERSION}|{source.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{key_extra}"
                       .encode()).hexdigest()
    out_dir = cache_root() / f"{kind}-masks" / key[:16]
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{out_dir}: cannot create the folder for rasterised masks ({e}); set PIXELWISE_CACHE to a "
                        "writable folder") from None
    paths = {ident: out_dir / f"{safe_key(ident)}.png" for ident, *_ in items}
    todo = [item for item in items if not paths[item[0]].is_file()]
    for ident, h, w, shapes in track(todo, total=len(todo), label=label) if todo else []:
        mask = np.zeros((h, w), np.uint8)
        for name, draw, _ in shapes:
            mask[draw(h, w)] = class_of[name]
        atomic_write(paths[ident], lambda tmp, m=mask: Image.fromarray(m).save(tmp, format="PNG"))
    return paths


def _table(names: list[str], cfg: DataConfig, source: Path, colours: dict[str, tuple] | None = None
           ) -> tuple[ClassTable, dict[str, int]]:
    """The config's table, or background + ``names``; label name -> class index (case as written)."""
    if isinstance(cfg.classes, ClassTable):
        table = cfg.classes
    elif isinstance(cfg.classes, Path):
        table = ClassTable.from_file(cfg.classes if cfg.classes.is_absolute() or cfg.classes.exists()
                                     else source.parent / cfg.classes)
    else:
        kept = [n for n in names if n.strip().casefold() != "background"]
        if len(kept) + 1 >= IGNORE:
            raise DataError(f"{source}: {len(kept)} labels; at most {IGNORE - 2} fit in a semantic mask")
        colours = colours or {}
        table = ClassTable.checked(str(source), names=["background", *kept],
                                   **({"colors": [(0, 0, 0), *(colours[n] for n in kept)]}
                                      if kept and all(n in colours for n in kept) else {}))
    return table, {n: i for i, n in enumerate(table.names)}


def _unknown(source: Path, used: list[tuple[str, str]], class_of: dict[str, int], known: str) -> None:
    bad = [f"{where}: label '{name}'" for name, where in used if name not in class_of]
    if bad:
        raise DataError(list_offenders(f"{source}: shapes whose label is not among {known} "
                                       f"({', '.join(class_of)})", bad))


def _cache_key(table: ClassTable) -> str:
    return json.dumps(table.names)


# --- CVAT for images 1.1 ----------------------------------------------------------------------------------------

def cvat_xml_file(root: Path) -> Path | None:
    path = root / "annotations.xml"
    if not path.is_file():
        return None
    with open(path, "rb") as f:
        return path if b"<annotations" in f.read(4096) else None


def _parse_xml(path: Path) -> ElementTree.Element:
    try:
        text = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e})") from None
    if b"<!DOCTYPE" in text or b"<!ENTITY" in text:  # entities are how XML bombs expand; CVAT writes none
        raise DataError(f"{path}: declares a DOCTYPE or entities, which CVAT exports never do; refused")
    try:
        tree = ElementTree.fromstring(text)
    except ElementTree.ParseError as e:
        raise DataError(f"{path}: not well-formed XML ({e})") from None
    if tree.tag != "annotations":
        raise DataError(f"{path}: not a CVAT for images export (the root element is <{tree.tag}>, not <annotations>)")
    return tree


def _hex_colour(text: str | None) -> tuple[int, int, int] | None:
    if text and re.fullmatch(r"#[0-9a-fA-F]{6}", text.strip()):
        return tuple(int(text.strip()[i : i + 2], 16) for i in (1, 3, 5))
    return None


def cvat_rle_mask(element: ElementTree.Element, height: int, width: int, where: str
                  ) -> Callable[[int, int], np.ndarray]:
    """A ``<mask>``'s RLE checked against its box and the image; returns the function that paints it."""
    try:
        left, top, w, h = (int(float(element.get(k, ""))) for k in ("left", "top", "width", "height"))
        runs = [int(v) for v in element.get("rle", "").split(",")]
    except ValueError:
        raise DataError(f"{where}: a <mask> needs integer rle, left, top, width and height") from None
    if w <= 0 or h <= 0 or left < 0 or top < 0 or left + w > width or top + h > height:
        raise DataError(f"{where}: the mask's box {w}x{h} at ({left}, {top}) is not inside the {width}x{height} image")
    if min(runs) < 0 or sum(runs) != w * h:
        raise DataError(f"{where}: the RLE covers {sum(runs)} pixels, its {w}x{h} box has {w * h}")

    def draw(hh: int, ww: int) -> np.ndarray:
        values = np.repeat(np.arange(len(runs)) % 2, runs).astype(bool).reshape(h, w)
        out = np.zeros((hh, ww), bool)
        out[top : top + h, left : left + w] = values
        return out

    return draw


def _cvat_shapes(image: ElementTree.Element, h: int, w: int, where: str) -> tuple[list[Shape], int]:
    shapes, skipped = [], 0
    ordered = sorted(enumerate(image), key=lambda e: (float(e[1].get("z_order", 0) or 0), e[0]))
    for n, element in ordered:
        label, at = element.get("label", ""), f"{where} <{element.tag}> {n}"
        if element.tag == "polygon":
            try:
                points = np.array([[float(v) for v in p.split(",")] for p in element.get("points", "").split(";")])
            except ValueError:
                raise DataError(f"{at}: points are not 'x,y;x,y;...'") from None
            _check_points(points, h, w, at)
            shapes.append((label, lambda hh, ww, p=points: polygon_mask(p, hh, ww), at))
        elif element.tag == "mask":
            shapes.append((label, cvat_rle_mask(element, h, w, at), at))
        elif element.tag in ("box", "polyline", "points", "ellipse", "cuboid", "skeleton", "tag"):
            skipped += 1
    return shapes, skipped


def read_cvat_xml(root: Path, cfg: DataConfig) -> tuple[Splits, ClassTable, list[Path], list[str]]:
    path = cvat_xml_file(root)
    if path is None:
        raise DataError(f"{root}: no CVAT for images export (expected annotations.xml with <annotations>)")
    tree = _parse_xml(path)
    if tree.find("track") is not None:
        raise DataError(f"{path}: holds <track>s, a 'CVAT for video 1.1' export; export the task as 'CVAT for images "
                        "1.1' (shapes per image) instead")
    labels = [(lab.findtext("name", "").strip(), _hex_colour(lab.findtext("color")))
              for lab in tree.iterfind("meta//labels/label")]
    items, used, bad, skipped, empty, limit = [], [], [], 0, 0, max_pixels()
    subsets: dict[Any, str] = {}
    seen: dict[str, str] = {}  # image file -> the <image> that uses it
    for i, image in enumerate(tree.iterfind("image")):
        name, where = image.get("name", ""), f"{path}: <image> {i} '{image.get('name', '')}'"
        try:
            h, w = int(image.get("height", "")), int(image.get("width", ""))
        except ValueError:
            bad.append(f"{where}: no integer width and height")
            continue
        file = _image_file(root, name, image.get("subset"))
        if file is None:
            bad.append(f"{where}: '{name}' is not a path inside {root}")
            continue
        if str(file) in seen:
            bad.append(f"{where} (id {image.get('id')}): the same image file as {seen[str(file)]}, {file}; one mask "
                       "per image: give the images distinct names, or keep each subset's images in images/SUBSET/")
            continue
        seen[str(file)] = f"<image> {i} '{name}' (id {image.get('id')})"
        if problem := _bad_size(h, w, limit):
            bad.append(f"{where}: {problem}")
            continue
        shapes, n = _cvat_shapes(image, h, w, where)
        skipped += n
        empty += not shapes
        used += [(s[0], s[2]) for s in shapes]
        items.append((str(file), h, w, shapes))
        subsets[str(file)] = split_name(image.get("subset") or "train")
    if bad:
        raise DataError(list_offenders(f"{path}: images that cannot be used", bad))
    names = [n for n, _ in labels] or sorted({n for n, _ in used})
    table, class_of = _table(names, cfg, path, {n: c for n, c in labels if c})
    _unknown(path, used, class_of, "the export's labels" if labels and cfg.classes is None else "the classes")
    masks = _draw_cached("cvat", path, _cache_key(table), items, class_of, "Rasterising CVAT annotations")
    splits: Splits = {}
    for ident, *_ in items:
        splits.setdefault(subsets[ident], []).append(Pair(Path(ident), masks[ident]))
    notes = [f"classes from {path} (CVAT for images 1.1): background + its labels"] if cfg.classes is None else []
    if skipped:
        notes.append(f"{path}: {skipped} boxes, polylines, points or other shapes without an area drawn as such "
                     "left out (only polygons and masks label pixels)")
    if empty:
        notes.append(f"{path}: {empty} images have no polygon or mask: read as all background, as CVAT's own mask "
                     "exports do (remove them from the task if they are not labelled yet)")
    return splits, table, [], notes


# --- Label Studio JSON ------------------------------------------------------------------------------------------

def labelstudio_files(root: Path) -> list[Path]:
    """JSON files at the root that look like Label Studio exports (a list of tasks with data and annotations)."""
    found = []
    for path in sorted(root.glob("*.json")):
        with open(path, "rb") as f:
            head = f.read(65536)
        tasks = b'"annotations"' in head or b'"predictions"' in head
        if head.lstrip()[:1] == b"[" and tasks and any(k in head for k in (b'"data"', b'"result"', b'"from_name"')):
            found.append(path)
    return found


def _task_image(task: dict) -> str | None:
    data = task.get("data")
    if not isinstance(data, dict):
        return None
    value = data.get("image", next((v for v in data.values() if isinstance(v, str)), None))
    if not isinstance(value, str):
        return None
    url = urlparse(value)
    local = parse_qs(url.query).get("d")  # /data/local-files/?d=folder/name.jpg, decoded once by parse_qs
    return posixpath.normpath("/" + (local[0] if local else unquote(url.path)).replace("\\", "/")).lstrip("/")


def _task_file(root: Path, name: str) -> Path | None:
    """The image at the longest tail of ``name`` (the URL's path, folders kept) that is a file, else by file name."""
    parts = name.split("/")
    tails = ["/".join(parts[i:]) for i in range(len(parts))]
    for candidate in (*tails, re.sub(r"^[0-9a-f]{8}-", "", parts[-1])):  # uploads are stored as 1a2b3c4d-NAME
        path = _image_file(root, candidate)
        if path is not None and path.is_file():
            return path
    return _image_file(root, parts[-1])


def _ls_shapes(result: list, where: str, limit: int) -> tuple[list[Shape], int, set[tuple[int, int]]]:
    shapes, skipped, sizes = [], 0, set()
    for n, r in enumerate(result if isinstance(result, list) else []):
        at = f"{where} result {n}"
        kind, value = (r.get("type"), r.get("value")) if isinstance(r, dict) else (None, None)
        if kind not in ("brushlabels", "polygonlabels") or not isinstance(value, dict):
            skipped += 1
            continue
        names = value.get(kind)
        if not isinstance(names, list) or not names or not isinstance(names[0], str):
            raise DataError(f"{at}: no label name in value.{kind}")
        try:
            h, w = int(r["original_height"]), int(r["original_width"])
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{at}: no original_width and original_height") from None
        if problem := _bad_size(h, w, limit):  # before the RLE is decoded: a small file may declare a huge image
            raise DataError(f"{at}: {problem}")
        sizes.add((h, w))
        if r.get("image_rotation") not in (None, 0):
            raise DataError(f"{at}: drawn on the image rotated by {r['image_rotation']} degrees; not supported: "
                            "annotate the image unrotated")
        if kind == "brushlabels":
            rle = value.get("rle")
            brush_rle.decode_checked(rle, h, w, at)  # checked now: errors name the task, not the cache
            shapes.append((names[0], lambda hh, ww, v=rle: brush_rle.decode(v, hh, ww) > 0, at))
        else:
            try:
                points = np.array(value.get("points"), float) * [w / 100, h / 100]
            except (TypeError, ValueError):
                raise DataError(f"{at}: points are not [[x%, y%], ...]") from None
            _check_points(points, h, w, at)
            shapes.append((names[0], lambda hh, ww, p=points: polygon_mask(p, hh, ww), at))
    return shapes, skipped, sizes


def read_labelstudio(root: Path, cfg: DataConfig) -> tuple[Splits, ClassTable, list[Path], list[str]]:
    files = labelstudio_files(root)
    if not files:
        raise DataError(f"{root}: no Label Studio JSON export (a .json file holding a list of tasks)")
    splits: Splits = {}
    notes: list[str] = []
    per_file, seen = [], {}  # image file -> the task that uses it, over all the files
    for path in files:
        try:
            tasks = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as e:
            raise DataError(f"{path}: cannot be read as JSON ({e})") from None
        if not isinstance(tasks, list):
            raise DataError(f"{path}: not a Label Studio export (a list of tasks)")
        items, used, bad, unlabelled, skipped, limit, empty, other = [], [], [], 0, 0, max_pixels(), 0, []
        for i, task in enumerate(tasks):
            where = f"{path}: task {i} (id {task.get('id') if isinstance(task, dict) else None})"
            name = _task_image(task) if isinstance(task, dict) else None
            if name is None:
                bad.append(f"{where}: no image in data")
                continue
            done = [a for a in task.get("annotations") or [] if isinstance(a, dict) and not a.get("was_cancelled")]
            if not done:
                unlabelled += 1
                continue
            file = _task_file(root, name)
            if file is None:
                bad.append(f"{where}: '{name}' is not a file name inside {root}")
                continue
            if str(file) in seen:
                bad.append(f"{where}: the same image file as {seen[str(file)].removeprefix(f'{path}: ')}, {file}; one "
                           "mask per image: keep the URLs' folders under images/ (?d=cam1/a.png: images/cam1/a.png), "
                           "or remove one of the tasks")
                continue
            seen[str(file)] = where
            shapes, n, sizes = _ls_shapes(done[0].get("result"), where, limit)
            skipped += n
            if len(sizes) > 1:
                bad.append(f"{where}: results disagree on the image size ({sorted(sizes)})")
                continue
            if not sizes:  # no brush or polygon; an empty result is Label Studio's "nothing to label here"
                size = displayed_size(file) if file.is_file() else None  # is_file: never open a FIFO
                if size is None or (problem := _bad_size(*size, limit)):
                    bad.append(f"{where}: no brush or polygon result gives the image's size, and {file} " +
                               (problem if size else "cannot be read to measure it"))
                    continue
                sizes, empty = {size}, empty + 1
                other += [f"id {task.get('id')}"] if n else []
            h, w = next(iter(sizes))
            used += [(s[0], s[2]) for s in shapes]
            items.append((str(file), int(h), int(w), shapes))
        if bad:
            raise DataError(list_offenders(f"{path}: tasks that cannot be used", bad))
        if unlabelled:
            notes.append(f"{path}: {unlabelled} tasks without an annotation (unlabelled) left out")
        if skipped:
            notes.append(f"{path}: {skipped} results that are not brush or polygon labels left out")
        if empty:
            notes.append(f"{path}: {empty} tasks have no brush or polygon result: read as all background, at their "
                         "image's size" + (f"; {len(other)} of them hold only results without pixels (such as "
                                           f"rectangles): {', '.join(other[:5])}{', ...' if len(other) > 5 else ''}"
                                           if other else ""))
        stem = split_name(path.stem)
        per_file.append((path, stem if stem in ("train", "val", "test") else "train", items, used))
    names = sorted({n for *_, used in per_file for n, _ in used})
    table, class_of = _table(names, cfg, files[0])
    for path, split, items, used in per_file:
        _unknown(path, used, class_of, "the classes")
        masks = _draw_cached("labelstudio", path, _cache_key(table), items, class_of, "Rasterising Label Studio tasks")
        splits.setdefault(split, []).extend(Pair(Path(ident), masks[ident]) for ident, *_ in items)
    if cfg.classes is None:
        notes.append(f"classes: background + the label names found, sorted ({', '.join(table.names[1:])}); give "
                     "data.classes to fix their order")
    return splits, table, [], notes
