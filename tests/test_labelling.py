"""Issue 24: CVAT for images 1.1 XML and Label Studio JSON exports read to the masks they draw, every bad item
named; Label Studio's brush RLE both ways."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from datasets import brush_rle_literal, cvat_images_xml, labelling_truth, labelstudio_json
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
