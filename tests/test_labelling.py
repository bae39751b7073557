"""Issue 24: CVAT for images 1.1 XML and Label Studio JSON exports read to the masks they draw, every bad item
named; Label Studio's brush RLE both ways."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from datasets import brush_rle_literal, cvat_images_xml, labelling_truth, labelstudio_json, labelstudio_task
from PIL import Image

from pixelwise.config import DataConfig
from pixelwise.data import brush_rle
from pixelwise.data.classes import ClassTable
from pixelwise.data.formats import detect_format, discover
from pixelwise.errors import DataError


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PIXELWISE_CACHE", str(tmp_path / "cache"))


def _masks(root: Path, **cfg) -> dict[str, np.ndarray]:
    layout = discover(DataConfig(root=root, **cfg))
    return {p.image.name: np.array(Image.open(p.mask)) for pairs in layout.splits.values() for p in pairs}


def test_cvat_xml_export_reads_back_to_the_drawn_masks(tmp_path):
    root, _ = cvat_images_xml(tmp_path / "cvat")
    assert detect_format(root) == "cvat_xml"
    layout = discover(DataConfig(root=root))
    assert layout.classes.names == ["background", "car", "road"]
    assert layout.classes.colors[1] == (250, 50, 83)  # the label's colour from <meta>
    assert {k: len(v) for k, v in layout.splits.items()} == {"train": 3, "val": 1}  # <image subset>
    assert any("boxes" in n for n in layout.notes)  # the <box> is named as left out, not silently dropped
    for name, mask in _masks(root).items():
        assert np.array_equal(mask, labelling_truth()), name


def test_labelstudio_export_reads_back_to_the_drawn_masks(tmp_path):
    root, _ = labelstudio_json(tmp_path / "ls")
    assert detect_format(root) == "labelstudio"
    masks = _masks(root)
    assert sorted(masks) == [f"shot_{i}.png" for i in range(5)]  # the unlabelled task is left out
    for name, mask in masks.items():
        assert np.array_equal(mask, labelling_truth()), name
    table = ClassTable(names=["background", "road", "car"])  # the config's order wins
    for mask in _masks(root, classes=table).values():
        assert np.array_equal(mask, np.choose(labelling_truth(), [0, 2, 1]))


def test_brush_rle_agrees_with_an_independent_encoding():
    rng = np.random.default_rng(0)
    mask = rng.random((19, 23)) < 0.3
    mask[3:15, 2:20] = True
    assert np.array_equal(brush_rle.decode(brush_rle_literal(mask), 19, 23) > 0, mask)  # literal blocks
    assert np.array_equal(brush_rle.decode(brush_rle.encode(mask), 19, 23) > 0, mask)  # repeat blocks
    big = np.ones((300, 300), bool)  # one run longer than 2**16 values: split into several blocks
    assert np.array_equal(brush_rle.decode(brush_rle.encode(big), 300, 300) > 0, big)
    with pytest.raises(ValueError, match="RGBA image"):
        brush_rle.decode(brush_rle.encode(mask), 20, 23)


def _edit_xml(root: Path, old: str, new: str) -> None:
    path = root / "annotations.xml"
    path.write_text(path.read_text().replace(old, new, 1))


@pytest.mark.parametrize(("old", "new", "message"), [
    ('polygon label="car"', 'polygon label="truck"', r"not among the export's labels.*frame_000000.png.*truck"),
    ("32.00,12.00;0.00,12.00", "40.00,12.00;0.00,12.00", r"frame_000000.png.*<polygon>.*outside the 32x24 image"),
    ('left="4" top="12"', 'left="10" top="12"', r"frame_000000.png.*<mask>.*not inside the 32x24 image"),
    ('rle="', 'rle="5, ', r"frame_000000.png.*<mask>.*RLE covers 293 pixels, its 24x12 box has 288"),
    ('<?xml version="1.0" encoding="utf-8"?>', '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "y">]>', "DOCTYPE"),
    ("</meta>", '</meta><track id="0" label="car"></track>', "CVAT for video"),
    ('name="frame_000001.png"', 'name="../../outside.png"', r"<image> 1 '../../outside.png': .* not a path inside"),
])
def test_cvat_xml_problems_name_the_file_and_the_item(tmp_path, old, new, message):
    root, _ = cvat_images_xml(tmp_path / "cvat")
    _edit_xml(root, old, new)
    with pytest.raises(DataError, match="(?s)" + message) as info:
        discover(DataConfig(root=root))
    assert "annotations.xml" in str(info.value)


def _edit_tasks(root: Path, change) -> None:
    path = next(root.glob("*.json"))
    tasks = json.loads(path.read_text())
    change(tasks)
    path.write_text(json.dumps(tasks))


def test_labelstudio_problems_name_the_file_and_the_task(tmp_path):
    root, _ = labelstudio_json(tmp_path / "ls")
    with pytest.raises(DataError, match=r"(?s)not among the classes.*task 0 \(id 1\) result 1: label 'road'"):
        discover(DataConfig(root=root, classes=ClassTable(names=["background", "car"])))

    def outside(tasks):
        tasks[2]["annotations"][0]["result"][0]["value"]["points"][1] = [130, 0]

    _edit_tasks(root, outside)
    with pytest.raises(DataError, match=r"task 2 \(id 3\) result 0: polygon points .* outside the 32x24 image"):
        discover(DataConfig(root=root))

    def wrong_size(tasks):
        tasks[2]["annotations"][0]["result"][0]["value"]["points"][1] = [100, 0]
        tasks[1]["annotations"][0]["result"][1]["original_height"] = 30

    _edit_tasks(root, wrong_size)
    with pytest.raises(DataError, match=r"task 1 \(id 2\) result 1: brush RLE cannot be decoded.*32x30"):
        discover(DataConfig(root=root))

    def rotated(tasks):
        tasks[1]["annotations"][0]["result"][1]["original_height"] = 24
        tasks[3]["annotations"][0]["result"][0]["image_rotation"] = 90

    _edit_tasks(root, rotated)
    with pytest.raises(DataError, match=r"task 3 \(id 4\) result 0: drawn on the image rotated by 90 degrees"):
        discover(DataConfig(root=root))


def test_cvat_images_without_shapes_are_background_with_a_note(tmp_path):
    root, _ = cvat_images_xml(tmp_path / "cvat")
    path = root / "annotations.xml"
    text = path.read_text()
    start = text.index('<image id="3"')
    path.write_text(text[: text.index(">", start) + 1] + text[text.index("</image>", start):])
    layout = discover(DataConfig(root=root))
    assert any("1 images have no polygon or mask" in n for n in layout.notes)
    assert not _masks(root)["frame_000003.png"].any()


def test_labelstudio_brush_size_is_refused_before_the_rle_is_decoded(tmp_path, monkeypatch):
    """A few bytes of RLE may declare a 16384x16384 RGBA image (1 GiB to decode): its size is checked first."""
    root, _ = labelstudio_json(tmp_path / "ls")

    def refuse(*args):
        raise AssertionError("the brush RLE was decoded before its declared size was checked")

    monkeypatch.setattr(brush_rle, "decode", refuse)
    for size, message in ((16384, r"16384x16384 pixels; the limit is 200,000,000"), (0, "0x0 pixels, not")):
        _edit_tasks(root, lambda tasks, s=size: tasks[0]["annotations"][0]["result"][1].update(
            original_width=s, original_height=s))
        with pytest.raises(DataError, match=rf"task 0 \(id 1\) result 1: declares {message}"):
            discover(DataConfig(root=root))


def test_labelstudio_task_without_area_results_is_background_at_its_images_size(tmp_path):
    """An empty result is Label Studio's 'nothing to label here'; a task of rectangles only is named in the note."""
    root, _ = labelstudio_json(tmp_path / "ls")
    Image.fromarray(np.zeros((10, 14, 3), np.uint8)).save(root / "images" / "shot_1.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 10x14, displayed (and read by pixelwise) rotated: 14 rows, 10 columns
    Image.fromarray(np.zeros((10, 14, 3), np.uint8)).save(root / "images" / "shot_2.png", exif=exif)
    rectangle = labelstudio_task(2, "shot_2.png", [{"type": "rectanglelabels", "value": {
        "x": 10, "y": 10, "width": 50, "height": 50, "rotation": 0, "rectanglelabels": ["car"]}}], h=14, w=10)

    def without_areas(tasks):
        tasks[1]["annotations"][0]["result"] = []
        tasks[2]["annotations"] = rectangle["annotations"]

    _edit_tasks(root, without_areas)
    layout = discover(DataConfig(root=root))
    assert any("2 tasks have no brush or polygon result" in n and n.endswith("rectangles): id 3") for n in layout.notes)
    masks = _masks(root)
    assert masks["shot_1.png"].shape == (10, 14) and masks["shot_2.png"].shape == (14, 10)
    assert not masks["shot_1.png"].any() and not masks["shot_2.png"].any()
    assert np.array_equal(masks["shot_0.png"], labelling_truth())

    (root / "images" / "shot_1.png").unlink()  # nothing to measure: refused by name, not a 0x0 mask
    with pytest.raises(DataError, match=r"task 1 \(id 2\): no brush or polygon result .* cannot be read to measure"):
        discover(DataConfig(root=root))


def test_cvat_images_that_are_one_file_are_refused_naming_both(tmp_path):
    root, _ = cvat_images_xml(tmp_path / "cvat", subsets=("Train", "Validation"))
    _edit_xml(root, 'name="frame_000001.png"', 'name="frame_000000.png"')
    with pytest.raises(DataError, match=r"<image> 1 'frame_000000.png' \(id 1\): the same image file as <image> 0 "
                                        r"'frame_000000.png' \(id 0\)"):
        discover(DataConfig(root=root))
    # a CVAT project export keeps each subset's images in images/SUBSET/: two files of one name, each its own
    (root / "images" / "Train").mkdir()
    (root / "images" / "Validation").mkdir()
    (root / "images" / "frame_000000.png").rename(root / "images" / "Train" / "frame_000000.png")
    (root / "images" / "frame_000001.png").rename(root / "images" / "Validation" / "frame_000000.png")
    layout = discover(DataConfig(root=root))
    assert {s: [p.image.relative_to(root).as_posix() for p in pairs] for s, pairs in layout.splits.items()} == {
        "train": ["images/Train/frame_000000.png"], "val": ["images/Validation/frame_000000.png"]}
    assert layout.splits["train"][0].mask != layout.splits["val"][0].mask


def test_labelstudio_tasks_keep_the_folders_of_their_urls(tmp_path):
    root, _ = labelstudio_json(tmp_path / "ls")

    def two_cameras(tasks):
        for task, camera in zip(tasks[:2], ("cam1", "cam2"), strict=True):
            task["data"]["image"] = f"/data/local-files/?d={camera}/frame_0001.png"
        tasks[1]["annotations"][0]["result"] = []  # cam2's frame: all background

    _edit_tasks(root, two_cameras)
    frame = np.zeros((24, 32, 3), np.uint8)
    Image.fromarray(frame).save(root / "images" / "frame_0001.png")  # the URL's file name alone finds this one
    with pytest.raises(DataError, match=r"task 1 \(id 2\): the same image file as task 0 \(id 1\), .*frame_0001.png"):
        discover(DataConfig(root=root))
    for camera in ("cam1", "cam2"):
        (root / "images" / camera).mkdir()
        Image.fromarray(frame).save(root / "images" / camera / "frame_0001.png")
    layout = discover(DataConfig(root=root))
    masks = {p.image.relative_to(root).as_posix(): np.array(Image.open(p.mask)) for p in layout.splits["train"]}
    assert np.array_equal(masks["images/cam1/frame_0001.png"], labelling_truth())
    assert not masks["images/cam2/frame_0001.png"].any() and len(masks) == 5

    export = next(root.glob("project-*.json"))  # the same task in a second export file: refused too, not merged
    (root / "val.json").write_text(export.read_text())
    with pytest.raises(DataError, match=rf"val.json: task 0 \(id 1\): the same image file as {export}: task 0"):
        discover(DataConfig(root=root))
