"""Every dataset layout, built tiny in a temporary folder and read back: VOC, Cityscapes, COCO, colour masks, lists."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixelwise.config import DataConfig
from pixelwise.data.checks import check_pairs
from pixelwise.data.classes import IGNORE, ClassTable
from pixelwise.data.dataset import SegmentationDataset
from pixelwise.data.formats import discover, select_split
from pixelwise.data.public_formats import CITYSCAPES_CLASSES, VOC_CLASSES, rasterize, voc_colormap
from pixelwise.errors import DataError

RNG = np.random.default_rng(3)


def image(h: int = 24, w: int = 32) -> Image.Image:
    return Image.fromarray(RNG.integers(0, 255, (h, w, 3), dtype=np.uint8))


def classes_of(layout, split: str, table: ClassTable | None = None) -> list[np.ndarray]:
    """The class-index masks of a split as training reads them."""
    pairs = layout.splits[split]
    summary = check_pairs(pairs, table or layout.classes)
    ds = SegmentationDataset(pairs, summary.table, summary.channels)
    return [ds.load(i)[1] for i in range(len(ds))]


def test_voc_palette_masks_splits_and_void(tmp_path):
    base = tmp_path / "VOCdevkit" / "VOC2012"
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / d).mkdir(parents=True)
    palette = [c for rgb in voc_colormap(256) for c in rgb]
    for i, stem in enumerate(["2007_000032", "2007_000039", "2007_000063"]):
        image().save(base / "JPEGImages" / f"{stem}.jpg")
        mask = np.zeros((24, 32), np.uint8)
        mask[4:12, 4:12] = 15  # person
        mask[12, :] = 255  # the void outline VOC draws around objects
        mask[20:, 20:] = i + 1
        m = Image.fromarray(mask, mode="P")
        m.putpalette(palette)
        m.save(base / "SegmentationClass" / f"{stem}.png")
    (base / "ImageSets/Segmentation/train.txt").write_text("2007_000032\n2007_000039\n")
    (base / "ImageSets/Segmentation/val.txt").write_text("2007_000063\n")
    (base / "ImageSets/Segmentation/trainval.txt").write_text("2007_000032\n2007_000039\n2007_000063\n")
    layout = discover(DataConfig(root=tmp_path))
    assert layout.format == "voc" and set(layout.splits) == {"train", "val"}  # trainval is not a split
    assert layout.classes.names[15] == "person" and layout.classes.palette[15] == (192, 128, 128)
    val = classes_of(layout, "val")[0]
    assert val[5, 5] == 15 and val[12, 0] == IGNORE and val[21, 21] == 3 and val[0, 0] == 0
    (base / "ImageSets/Segmentation/val.txt").write_text("2007_000063\n2007_999999\n")
    with pytest.raises(DataError, match="2007_999999"):
        discover(DataConfig(root=tmp_path))


def test_voc_color_table_is_the_published_one():
    assert VOC_CLASSES.num_classes == 21 and VOC_CLASSES.ignore_index == 255
    assert voc_colormap(4) == [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0)]
    assert voc_colormap(21)[20] == (0, 64, 128)  # tvmonitor


def test_cityscapes_label_ids_map_to_the_19_train_ids(tmp_path):
    for split, city in (("train", "aachen"), ("val", "frankfurt")):
        (tmp_path / "leftImg8bit" / split / city).mkdir(parents=True)
        (tmp_path / "gtFine" / split / city).mkdir(parents=True)
        stem = f"{city}_000000_000019"
        image().save(tmp_path / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
        ids = np.full((24, 32), 7, np.uint8)  # road
        ids[:8] = 23  # sky
        ids[8:10] = 1  # ego vehicle: void
        ids[10:12] = 33  # bicycle
        ids[12:14] = 30  # trailer: void
        Image.fromarray(ids).save(tmp_path / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png")
        Image.fromarray(ids).save(tmp_path / "gtFine" / split / city / f"{stem}_gtFine_color.png")  # not read
    layout = discover(DataConfig(root=tmp_path))
    assert layout.format == "cityscapes" and set(layout.splits) == {"train", "val"}
    assert layout.classes.num_classes == 19 and layout.classes.names[18] == "bicycle"
    mask = classes_of(layout, "train")[0]
    assert mask[0, 0] == 10 and mask[8, 0] == IGNORE and mask[10, 0] == 18 and mask[12, 0] == IGNORE
    assert mask[20, 0] == 0
    assert CITYSCAPES_CLASSES.lut()[34] < 0  # an id Cityscapes does not have is reported, not guessed


def _coco(root: Path, split: str, files: list[str], anns: list[dict]) -> None:
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / split).mkdir(exist_ok=True)
    images = []
    for i, name in enumerate(files, 1):
        image(40, 50).save(root / split / name)
        images.append({"id": i, "file_name": name, "height": 40, "width": 50})
    cats = [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}]
    (root / "annotations" / f"instances_{split}.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": cats}))


def test_coco_polygons_and_rle_rasterised_with_deterministic_overlaps(tmp_path, monkeypatch):
    from pycocotools import mask as mask_utils

    monkeypatch.setenv("PIXELWISE_CACHE", str(tmp_path / "cache"))
    square = np.zeros((40, 50), np.uint8, order="F")
    square[10:20, 10:20] = 1
    rle = mask_utils.encode(np.asfortranarray(square))
    rle["counts"] = rle["counts"].decode()
    anns = [
        # a large dog (polygon), a person inside it (compressed RLE): the smaller one is painted last
        {"id": 1, "image_id": 1, "category_id": 18, "segmentation": [[0, 0, 40, 0, 40, 30, 0, 30]], "area": 1200,
         "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 1, "segmentation": rle, "area": 100, "iscrowd": 0},
    ]
    _coco(tmp_path / "data", "train2017", ["a.jpg", "b.jpg"], anns)
    _coco(tmp_path / "data", "val2017", ["c.jpg"], [])
    layout = discover(DataConfig(root=tmp_path / "data"))
    assert layout.format == "coco" and set(layout.splits) == {"train", "val"}
    assert layout.classes.names == ["background", "person", "dog"]  # categories in id order
    a, b = classes_of(layout, "train")
    assert a[15, 15] == 1 and a[5, 30] == 2 and a[35, 45] == 0  # person on the dog, dog, background
    assert (b == 0).all()  # an image without annotations is background
    # the order of annotations in the file does not matter
    flipped = rasterize({"height": 40, "width": 50}, anns[::-1], {18: 2, 1: 1})
    assert (flipped == a).all()
    assert not any((tmp_path / "data").rglob("*.png"))  # nothing written into the dataset


def test_color_coded_masks_read_through_the_class_table(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    colours = [(0, 0, 0), (255, 0, 0), (0, 255, 0)]
    for i in range(2):
        image().save(tmp_path / "images" / f"t{i}.png")
        rgb = np.zeros((24, 32, 3), np.uint8)
        rgb[:8] = colours[1]
        rgb[8:16] = colours[2]
        rgb[16:18] = (255, 255, 255)  # void
        Image.fromarray(rgb).save(tmp_path / "masks" / f"t{i}.png")
    table = ClassTable(names=["bg", "red", "green"], colors=colours, color_masks=True, void_colors=[(255, 255, 255)])
    layout = discover(DataConfig(root=tmp_path, classes=table))
    mask = classes_of(layout, "train")[0]
    assert mask[0, 0] == 1 and mask[10, 0] == 2 and mask[16, 0] == IGNORE and mask[20, 0] == 0
    # without the table: the error says how to declare the colours
    with pytest.raises(DataError, match="color_masks"):
        check_pairs(discover(DataConfig(root=tmp_path)).splits["train"], None)
    # a colour the table does not know is named, with the file
    bad = np.zeros((24, 32, 3), np.uint8)
    bad[0, 0] = (1, 2, 3)
    Image.fromarray(bad).save(tmp_path / "masks" / "t1.png")
    with pytest.raises(DataError, match=r"t1.png: 1 pixels in colours not in the class table: \(1, 2, 3\)"):
        check_pairs(layout.splits["train"], table)


def test_list_files_with_header_relative_paths_and_bad_lines(tmp_path):
    for i in range(3):
        image().save(tmp_path / f"im{i}.png")
        Image.fromarray(np.full((24, 32), i % 2, np.uint8)).save(tmp_path / f"lab{i}.png")
    (tmp_path / "train.csv").write_text("image,mask\nim0.png,lab0.png\nim1.png,lab1.png\n")
    (tmp_path / "val.txt").write_text("# held out\nim2.png\tlab2.png\n")
    layout = discover(DataConfig(root=tmp_path))
    assert layout.format == "list" and len(layout.splits["train"]) == 2 and len(layout.splits["val"]) == 1
    assert layout.splits["val"][0].mask == tmp_path / "lab2.png"
    # one file: the whole pool, validation held out
    pool = discover(DataConfig(root=tmp_path / "train.csv"))
    assert len(select_split(pool, DataConfig(root=tmp_path / "train.csv", val_fraction=0.5), "val")[0]) == 1
    (tmp_path / "val.txt").write_text("im2.png,lab2.png,extra\n")
    with pytest.raises(DataError, match=r"val.txt:1: expected 'image,mask', got 3 fields"):
        discover(DataConfig(root=tmp_path))


def test_ambiguous_layouts_ask_for_a_format(tmp_path):
    (tmp_path / "leftImg8bit" / "train").mkdir(parents=True)
    (tmp_path / "gtFine" / "train").mkdir(parents=True)
    (tmp_path / "JPEGImages").mkdir()
    (tmp_path / "SegmentationClass").mkdir()
    with pytest.raises(DataError, match="more than one dataset layout .*--format"):
        discover(DataConfig(root=tmp_path))


# --- pixelwise check ----------------------------------------------------------------------------------------

def _check(args: list[str]):
    from typer.testing import CliRunner

    from pixelwise.cli import app

    return CliRunner().invoke(app, ["check", *args])


def test_check_lists_every_problem_with_its_file_and_exits_1(tmp_path):
    from conftest import write_pair

    for i in range(3):
        write_pair(tmp_path / "train", f"ok{i}", np.asarray(image()), np.full((24, 32), i % 2, np.uint8))
    write_pair(tmp_path / "val", "ok0", np.asarray(image()), np.zeros((24, 32), np.uint8))
    same = np.asarray(Image.open(tmp_path / "train" / "images" / "ok1.png"))
    write_pair(tmp_path / "val", "copy", same, np.ones((24, 32), np.uint8))  # leaks train into val
    write_pair(tmp_path / "train", "small_mask", np.asarray(image()), np.zeros((12, 32), np.uint8))
    write_pair(tmp_path / "train", "value9", np.asarray(image()), np.full((24, 32), 9, np.uint8))
    (tmp_path / "train" / "images" / "broken.png").write_bytes(b"not a png")
    Image.fromarray(np.zeros((24, 32), np.uint8)).save(tmp_path / "train" / "masks" / "broken.png")
    image().save(tmp_path / "train" / "images" / "unlabelled.png")
    Image.fromarray(np.zeros((24, 32), np.uint8)).save(tmp_path / "train" / "masks" / "lonely.png")
    (tmp_path / "classes.yaml").write_text("names: [bg, fg]\n")

    result = _check([str(tmp_path), "--json"])
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    errors, warnings = "\n".join(report["errors"]), "\n".join(report["warnings"])
    assert "small_mask.png: mask is 32x12 but its image is 32x24" in errors
    assert "value9.png: values 9 not in the class table" in errors
    assert "broken.png: cannot be read as an image" in errors
    assert "unlabelled.png: no mask found for this image" in errors
    assert "lonely.png" in warnings and "masks without an image" in warnings
    assert "identical pixels (across splits train and val)" in warnings and "copy.png" in warnings
    fp = report["fingerprint"]
    assert fp["splits"] == {"train": 7, "val": 2} and fp["pairs_readable"] == 5 and fp["channels"] == 3
    assert fp["image_size"]["most_common"][0] == {"size": [24, 32], "images": 5}
    assert [c["name"] for c in fp["classes"]] == ["bg", "fg"]
    # human output: the same problems, and the exit code
    text = _check([str(tmp_path)])
    flat = text.output.replace("\n", "")  # rich wraps long paths
    assert text.exit_code == 1 and "value9.png: values 9" in flat and "cannot be trained on" in flat


def test_check_fingerprint_of_a_clean_dataset(tmp_path):
    from conftest import write_pair

    for i in range(4):
        mask = np.zeros((24, 32), np.uint8)
        mask[: 6 * (i + 1)] = 255 if i % 2 else 0  # 255 = void in half the images
        mask[:, :8] = 1
        write_pair(tmp_path, f"g{i}", np.full((24, 32), 100 + 20 * i, np.uint8), mask)
    (tmp_path / "classes.yaml").write_text("names: [bg, fg, never]\nignore_index: 255\n")
    result = _check([str(tmp_path), "--json", "--set", "data.crop_size=16"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    fp = report["fingerprint"]
    assert fp["channels"] == 1 and fp["files"] == {"grayscale": 4, "colour": 0}
    assert fp["intensity"]["mean"] == [130.0] and fp["intensity"]["std"] == [pytest.approx(22.36, abs=0.01)]
    void = 12 * 24 + 24 * 24  # images 1 and 3: rows 0-11 and 0-23, less the 8 fg columns painted over them
    assert fp["void_share"] == pytest.approx(void / (4 * 24 * 32))
    fg = fp["classes"][1]
    assert fg["pixels"] == 4 * 24 * 8 and fg["image_share"] == 1.0
    assert "classes with no pixel in any mask: never" in "\n".join(report["warnings"])
    assert "validation" in fp  # no val split: the held-out share is said
