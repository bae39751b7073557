"""Tiny datasets in every layout pixelwise reads, written as the tools that make them write them.

Each builder writes into ``root`` and returns (the path to give as data.root, extra --set overrides). The
third-party exports follow their tools' documented formats:
- Roboflow "COCO Segmentation": train/, valid/, test/ each with _annotations.coco.json beside the images;
  category 0 is the project itself (supercategory "none"), the parent of every class; image ids start at 0.
- CVAT "Segmentation mask 1.1": VOC layout with one subset, ImageSets/Segmentation/default.txt, labelmap.txt
  (``name:r,g,b::``), SegmentationClass/ painted in the label map's colours (RGB PNGs, as Datumaro writes them).
- CVAT "COCO 1.0": annotations/instances_default.json and images/default/; ids from 1, supercategory "".
- CVAT "CVAT for images 1.1": annotations.xml (<meta><job><labels>, <image subset> with <polygon points="x,y;...">
  and <mask rle left top width height>, CVAT's RLE: runs of 0 and 1 alternating from 0, row-major in the box) and
  images/ holding the frames.
- Label Studio "JSON" export: a list of tasks (data.image = /data/upload/PROJECT/HASH-NAME, annotations[].result[]
  with brushlabels in Label Studio's RLE over the RGBA image and polygonlabels in percent), images given beside it.
- Cityscapes as downloaded for validation only: leftImg8bit/val/CITY/*_leftImg8bit.png, gtFine/val/CITY/
  *_gtFine_labelIds.png.
- The Kaggle aerial set (Dubai): folders 'Tile 1' .. 'Tile 8', each with images/ and masks/ (RGB colour masks),
  and a Supervisely classes.json (``{"classes": [{"title", "color": "#RRGGBB", ...}]}``) at the root.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from pixelwise.data import synthetic
from pixelwise.data.public_formats import voc_colormap

RNG = np.random.default_rng(25)
Built = tuple[Path, list[str]]


def _image(h: int = 24, w: int = 32) -> np.ndarray:
    return RNG.integers(0, 255, (h, w, 3), dtype=np.uint8)


def _labels(h: int = 24, w: int = 32, k: int = 3) -> np.ndarray:
    """Horizontal bands of classes 0..k-1 (every class in every mask)."""
    return (np.arange(h)[:, None] * k // h).repeat(w, axis=1).astype(np.uint8)


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _pair(folder: Path, stem: str, h: int = 24, w: int = 32, k: int = 3, suffix: str = ".png") -> None:
    _save(folder / "images" / f"{stem}{suffix}", _image(h, w))
    _save(folder / "masks" / f"{stem}.png", _labels(h, w, k))


def folders_pool(root: Path) -> Built:
    for i in range(5):
        _pair(root, f"p{i}")
    (root / "classes.yaml").write_text("names: [bg, road, roof]\n")
    return root, []


def folders_splits(root: Path) -> Built:
    for split, n in (("train", 4), ("val", 2)):
        for i in range(n):
            _pair(root / split, f"{split}{i}")
    return root, []  # table inferred: class_0..class_2


def camvid(root: Path) -> Built:
    for split, n in (("train", 3), ("val", 2), ("test", 2)):
        for i in range(n):
            _save(root / split / f"{split}{i}.png", _image())
            _save(root / f"{split}annot" / f"{split}{i}.png", _labels(k=12))  # 11 = void
    return root, []


def voc(root: Path) -> Built:
    base = root / "VOCdevkit" / "VOC2012"
    palette = [c for rgb in voc_colormap(256) for c in rgb]
    stems = [f"2007_00{i:04d}" for i in range(5)]
    for stem in stems:
        _save(base / "JPEGImages" / f"{stem}.jpg", _image())
        mask = Image.fromarray(_labels(k=21), mode="P")
        mask.putpalette(palette)
        (base / "SegmentationClass").mkdir(parents=True, exist_ok=True)
        mask.save(base / "SegmentationClass" / f"{stem}.png")
    (base / "ImageSets" / "Segmentation").mkdir(parents=True)
    (base / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(stems[:3]) + "\n")
    (base / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(stems[3:]) + "\n")
    return root, []


CVAT_LABELS = [("background", (0, 0, 0)), ("car", (250, 50, 83)), ("road", (61, 61, 245))]


def cvat_segmentation_mask(root: Path) -> Built:
    lines = ["# label:color_rgb:parts:actions"] + [f"{n}:{r},{g},{b}::" for n, (r, g, b) in CVAT_LABELS]
    root.mkdir(parents=True, exist_ok=True)
    (root / "labelmap.txt").write_text("\n".join(lines) + "\n")
    colours = np.array([c for _, c in CVAT_LABELS], np.uint8)
    stems = [f"frame_{i:06d}" for i in range(6)]
    for stem in stems:
        _save(root / "JPEGImages" / f"{stem}.jpg", _image())
        _save(root / "SegmentationClass" / f"{stem}.png", colours[_labels(k=3)])  # painted RGB
        _save(root / "SegmentationObject" / f"{stem}.png", colours[_labels(k=3)])  # instances: not read
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "default.txt").write_text("\n".join(stems) + "\n")
    return root, []


def _polygon_annotations(image_id: int, first_id: int, category: int) -> list[dict]:
    """A rectangle polygon of ``category`` over the top half of a 24x32 image."""
    ann = {"id": first_id, "image_id": image_id, "category_id": category, "iscrowd": 0, "area": 32 * 12,
           "bbox": [0, 0, 32, 12], "segmentation": [[0, 0, 32, 0, 32, 12, 0, 12]]}
    return [ann]


def roboflow_coco(root: Path) -> Built:
    categories = [{"id": 0, "name": "cells-xyz", "supercategory": "none"},
                  {"id": 1, "name": "cell", "supercategory": "cells-xyz"},
                  {"id": 2, "name": "nucleus", "supercategory": "cells-xyz"}]
    for split, n in (("train", 4), ("valid", 2), ("test", 1)):
        images, annotations = [], []
        for i in range(n):
            name = f"img{i}_png.rf.{i:032x}.jpg"
            _save(root / split / name, _image())
            images.append({"id": i, "license": 1, "file_name": name, "height": 24, "width": 32,
                           "date_captured": "2024-01-01T00:00:00+00:00"})
            annotations += _polygon_annotations(i, 2 * i, 1 + i % 2)
        doc = {"info": {"description": "Exported from roboflow.com"}, "licenses": [{"id": 1, "name": "CC BY 4.0"}],
               "categories": categories, "images": images, "annotations": annotations}
        (root / split / "_annotations.coco.json").write_text(json.dumps(doc))
    return root, []


def cvat_coco(root: Path) -> Built:
    images, annotations = [], []
    for i in range(1, 6):
        name = f"frame_{i:06d}.PNG"
        _save(root / "images" / "default" / name, _image())
        images.append({"id": i, "width": 32, "height": 24, "file_name": name, "license": 0, "flickr_url": "",
                       "coco_url": "", "date_captured": 0})
        annotations += [{**a, "attributes": {"occluded": False}} for a in _polygon_annotations(i, i, 1 + i % 2)]
    doc = {"licenses": [{"name": "", "id": 0, "url": ""}], "info": {"contributor": "", "version": ""},
           "categories": [{"id": 1, "name": "car", "supercategory": ""},
                          {"id": 2, "name": "road", "supercategory": ""}],
           "images": images, "annotations": annotations}
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances_default.json").write_text(json.dumps(doc))
    return root, []


def labelling_truth(h: int = 24, w: int = 32) -> np.ndarray:
    """What the CVAT XML and Label Studio builders draw: class 1 (car) over the top half, class 2 (road) on the
    bottom half's columns 4-27, background elsewhere."""
    truth = np.zeros((h, w), np.uint8)
    truth[: h // 2] = 1
    truth[h // 2 :, 4 : w - 4] = 2
    return truth


def cvat_runs(box: np.ndarray) -> str:
    """CVAT's mask RLE written by hand: run lengths alternating 0, 1, 0, ... (first may be 0), row-major."""
    flat, runs, value, n = box.reshape(-1).astype(int).tolist(), [], 0, 0
    for v in flat:
        if v != value:
            runs.append(n)
            value, n = v, 0
        n += 1
    return ", ".join(map(str, [*runs, n]))


def cvat_images_xml(root: Path, subsets: tuple[str, ...] = ("Train", "Train", "Train", "Validation")) -> Built:
    labels = "".join(f"<label><name>{n}</name><color>#{r:02x}{g:02x}{b:02x}</color><type>any</type>"
                     "<attributes></attributes></label>" for n, (r, g, b) in CVAT_LABELS[1:])
    images = []
    for i, subset in enumerate(subsets):
        name = f"frame_{i:06d}.png"
        _save(root / "images" / name, _image())
        box = np.ones((12, 24), np.uint8)
        images.append(
            f'  <image id="{i}" name="{name}" subset="{subset}" task_id="1" width="32" height="24">\n'
            f'    <mask label="road" source="manual" occluded="0" rle="{cvat_runs(box)}" left="4" top="12" '
            'width="24" height="12" z_order="0">\n    </mask>\n'
            '    <polygon label="car" source="manual" occluded="0" points="0.00,0.00;32.00,0.00;32.00,12.00;0.00,12.00"'
            ' z_order="0">\n    </polygon>\n'
            '    <box label="car" source="manual" occluded="0" xtl="1" ytl="1" xbr="5" ybr="5" z_order="0"></box>\n'
            "  </image>")
    xml = ('<?xml version="1.0" encoding="utf-8"?>\n<annotations>\n  <version>1.1</version>\n  <meta>\n    <job>'
           f"<id>1</id><size>{len(subsets)}</size><mode>annotation</mode><overlap>0</overlap><labels>{labels}</labels>"
           "</job>\n    <dumped>2024-05-01 10:00:00.000000+00:00</dumped>\n  </meta>\n" + "\n".join(images)
           + "\n</annotations>\n")
    root.mkdir(parents=True, exist_ok=True)
    (root / "annotations.xml").write_text(xml)
    return root, []


def brush_rle_literal(mask: np.ndarray) -> list[int]:
    """Label Studio's brush RLE written independently of pixelwise's encoder: header, then one literal block (kind
    0) per 8 values, each value an 8-bit word, over the RGBA image whose alpha (and colour) is 255 where painted."""
    flat = np.repeat(mask.reshape(-1).astype(np.uint8) * 255, 4)
    bits = [format(flat.size, "032b"), format(7, "05b"), *(format(s - 1, "04b") for s in (3, 4, 8, 16))]
    for start in range(0, flat.size, 8):
        chunk = flat[start : start + 8]
        bits.append("0" + "00" + format(len(chunk) - 1, "03b") + "".join(format(int(v), "08b") for v in chunk))
    text = "".join(bits)
    text += "0" * (-len(text) % 8)
    return [int(text[i : i + 8], 2) for i in range(0, len(text), 8)]


def labelstudio_task(i: int, name: str, results: list[dict], h: int = 24, w: int = 32) -> dict:
    return {"id": i + 1, "annotations": [{
        "id": 100 + i, "completed_by": 1, "result": [{"original_width": w, "original_height": h, "image_rotation": 0,
                                                      "id": f"r{i}{n}", "from_name": "tag", "to_name": "image",
                                                      "origin": "manual", **r} for n, r in enumerate(results)],
        "was_cancelled": False, "ground_truth": False, "created_at": "2024-05-01T10:00:00.000000Z",
        "updated_at": "2024-05-01T10:00:00.000000Z", "lead_time": 12.5, "prediction": {}, "result_count": 0,
        "task": i + 1, "project": 1, "parent_prediction": None, "parent_annotation": None}],
        "file_upload": f"1a2b3c{i:02d}-{name}", "drafts": [], "predictions": [],
        "data": {"image": f"/data/upload/1/1a2b3c{i:02d}-{name}"}, "meta": {}, "created_at": "2024-05-01T09:00:00Z",
        "updated_at": "2024-05-01T10:00:00Z", "inner_id": i + 1, "total_annotations": 1, "cancelled_annotations": 0,
        "total_predictions": 0, "comment_count": 0, "unresolved_comment_count": 0, "last_comment_updated_at": None,
        "project": 1, "updated_by": 1, "comment_authors": []}


def labelstudio_json(root: Path) -> Built:
    tasks = []
    for i in range(5):
        name = f"shot_{i}.png"
        _save(root / "images" / name, _image())
        road = np.zeros((24, 32), bool)
        road[12:, 4:28] = True
        tasks.append(labelstudio_task(i, name, [
            {"type": "polygonlabels", "value": {"points": [[0, 0], [100, 0], [100, 50], [0, 50]], "closed": True,
                                                "polygonlabels": ["car"]}},
            {"type": "brushlabels", "value": {"format": "rle", "rle": brush_rle_literal(road),
                                              "brushlabels": ["road"]}}]))
    tasks.append({**labelstudio_task(5, "shot_5.png", []), "annotations": []})  # not labelled yet
    (root / "project-1-at-2024-05-01-10-00-0a1b2c3d.json").write_text(json.dumps(tasks, indent=2))
    return root, []


def cityscapes_val_only(root: Path) -> Built:
    for i in range(5):
        stem = f"frankfurt_000000_{i:06d}"
        _save(root / "leftImg8bit" / "val" / "frankfurt" / f"{stem}_leftImg8bit.png", _image())
        ids = np.full((24, 32), 7, np.uint8)  # road
        ids[:8] = 23  # sky
        ids[8:10] = 1  # ego vehicle: void
        _save(root / "gtFine" / "val" / "frankfurt" / f"{stem}_gtFine_labelIds.png", ids)
    return root, []


AERIAL = [("Building", "#3C1098"), ("Land (unpaved area)", "#8429F6"), ("Road", "#6EC1E4"),
          ("Vegetation", "#FEDD3A"), ("Water", "#E2A929"), ("Unlabeled", "#9B9B9B")]


def _hex(colour: str) -> tuple[int, int, int]:
    return tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))


def aerial_tiles(root: Path, supervisely_classes: bool = False) -> Built:
    colours = np.array([_hex(c) for _, c in AERIAL], np.uint8)
    for t in range(1, 9):
        for j in range(1, 3):
            _save(root / f"Tile {t}" / "images" / f"image_part_{j:03d}.jpg", _image())
            _save(root / f"Tile {t}" / "masks" / f"image_part_{j:03d}.png", colours[_labels(k=len(AERIAL))])
    if supervisely_classes:
        (root / "classes.json").write_text(json.dumps({"classes": [
            {"title": n, "shape": "polygon", "color": c, "geometry_config": {}} for n, c in AERIAL]}))
        return root, []
    table = {"names": [n for n, _ in AERIAL], "colors": [list(_hex(c)) for _, c in AERIAL], "color_masks": True}
    (root / "pixelwise-classes.json").write_text(json.dumps(table))
    return root, [f"data.classes={root / 'pixelwise-classes.json'}"]


def lists(root: Path) -> Built:
    """Tab-separated lists whose paths hold spaces, and a CSV with a header."""
    for i in range(5):
        _save(root / "my images" / f"shot {i}.png", _image())
        _save(root / "my masks" / f"shot {i}.png", _labels())
    (root / "train.tsv").write_text("".join(f"my images/shot {i}.png\tmy masks/shot {i}.png\n" for i in range(3)))
    (root / "val.csv").write_text("image,mask\n" + "".join(f"my images/shot {i}.png,my masks/shot {i}.png\n"
                                                           for i in range(3, 5)))
    return root, []


def demo_synthetic(root: Path) -> Built:
    return synthetic.write_dataset(root, n_train=6, n_val=2, size=32, seed=3), []


def broken_image_in_training(root: Path) -> Built:
    folders_splits(root)
    (root / "train" / "images" / "train1.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    return root, []


def broken_image_in_test_split(root: Path) -> Built:
    """A split training does not use: its problems do not stop training (check warns)."""
    camvid(root)
    (root / "test" / "test0.png").write_bytes(b"not an image")
    return root, []


def no_validation_possible(root: Path) -> Built:
    folders_pool(root)
    return root, ["data.val_fraction=0"]


def crop_larger_than_every_image(root: Path) -> Built:
    folders_splits(root)
    return root, ["data.crop_size=64"]


DATASETS: dict[str, Callable[[Path], Built]] = {f.__name__: f for f in (
    folders_pool, folders_splits, camvid, voc, cvat_segmentation_mask, roboflow_coco, cvat_coco, cvat_images_xml,
    labelstudio_json,
    cityscapes_val_only, aerial_tiles, lists, demo_synthetic, broken_image_in_training, broken_image_in_test_split,
    no_validation_possible, crop_larger_than_every_image,
)}
