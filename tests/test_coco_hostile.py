"""COCO files that are malformed or hostile: each is refused in words, naming the file and the annotation, before
anything is drawn; MS COCO's annotations/ folder is read for its instances files only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixelwise.config import DataConfig
from pixelwise.data import coco
from pixelwise.data.formats import discover
from pixelwise.errors import DataError

H, W = 20, 30
TRIANGLE = [[1, 1, 10, 1, 10, 10]]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PIXELWISE_CACHE", str(tmp_path / "cache"))  # masks are rasterised here, not in the data


def _dataset(root: Path, anns: list[dict], images: list[dict] | None = None, split: str = "train") -> Path:
    """annotations/instances_SPLIT.json with one 20x30 image, a.png, in SPLIT/, and one category, 'cat'."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / split).mkdir(exist_ok=True)
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(root / split / "a.png")
    doc = {"images": images or [{"id": 1, "file_name": "a.png", "height": H, "width": W}],
           "annotations": anns, "categories": [{"id": 1, "name": "cat"}]}
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(doc))
    return root


def _ann(segmentation, **more) -> dict:
    return {"id": 17, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": segmentation, **more}


def _compressed(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode()}


def test_a_huge_rle_size_is_refused_before_anything_is_decoded(tmp_path, monkeypatch):
    from pycocotools import mask as mask_utils

    def never(*args, **kwargs):
        raise AssertionError("nothing may be decoded or drawn for a file that is refused")

    for name in ("decode", "frPyObjects", "merge"):
        monkeypatch.setattr(mask_utils, name, never)
    monkeypatch.setattr(coco, "rasterize", never)
    # 900,000,000 pixels declared in a few bytes of JSON, for a 20x30 image: pycocotools would allocate them
    root = _dataset(tmp_path / "data", [_ann({"size": [30000, 30000], "counts": [0, 30000 * 30000]})])
    with pytest.raises(DataError, match=r"instances_train\.json: annotations whose segmentation cannot be drawn"
                                        r"[^\n]*\n  - annotations\[0\] \(id 17\): segmentation is an RLE of size "
                                        r"\[30000, 30000\] \(height, width\), but its image is \[20, 30\]"):
        discover(DataConfig(root=root))
    assert not list((tmp_path / "cache").rglob("*.png"))


@pytest.mark.parametrize("ann, expected", [
    # an RLE made for another mask size, compressed and uncompressed
    (_ann(None), "is an RLE of size [10, 10] (height, width), but its image is [20, 30]"),
    (_ann({"size": [10, 10], "counts": [0, 100]}), "is an RLE of size [10, 10] (height, width), but its image is"),
    (_ann({"size": [H, W]}), "is an RLE without 'counts' (a COCO RLE has 'size' and 'counts')"),
    (_ann({"counts": [0, H * W]}), "is an RLE without 'size'"),
    (_ann({"size": [H], "counts": [0, H * W]}), "is an RLE whose size [20] is not [height, width]"),
    (_ann({"size": [H, W], "counts": [0, 100]}), "is an RLE whose runs cover 100 pixels, not the 600 of its size"),
    (_ann({"size": [H, W], "counts": [0, -5, 605]}), "counts are neither a list of run lengths nor a compressed"),
    (_ann({"size": [H, W], "counts": "\x7f\x7f"}), "counts are neither a list of run lengths nor a compressed"),
    (_ann({"size": [H, W], "counts": 600}), "counts are neither a list of run lengths nor a compressed"),
    (_ann("abc"), 'segmentation "abc" is neither polygons [[x1, y1, x2, y2, ...], ...] nor an RLE'),
    (_ann(5), "segmentation 5 is neither polygons"),
    # a flat polygon, as some tools write it, is refused rather than guessed at
    (_ann([1, 2, 3, 4, 5, 6]), "is a flat list of numbers: COCO polygons are a list of lists"),
    (_ann([[1, 2, 3, 4, 5, 6], 7]), "is not a list of polygons [[x1, y1, x2, y2, ...], ...]"),
    (_ann([{"size": [H, W], "counts": [0, H * W]}]), "is not a list of polygons"),
    (_ann([[1, 2, "x", 4, 5, 6]]), 'polygon 0 holds something other than numbers: [1, 2, "x", 4, 5, 6]'),
    (_ann([TRIANGLE[0], [1, 2, True, 4, 5, 6]]), "polygon 1 holds something other than numbers"),
    (_ann([[1, 2, 3, 4, 5, 6, 7]]), "polygon 0 has an odd number of coordinates (7); they come in x, y pairs"),
    (_ann([[1, 2, 3, float("nan"), 5, 6]]), "polygon 0 holds a coordinate that is not a finite number"),
    # points a billion pixels away would make pycocotools trace gigabytes of outline
    (_ann([[0, 0, 1e9, 0, 1e9, 1e9]]), "polygon 0 has coordinates from 0 to 1000000000.0, far outside its 30x20 "
                                       "image"),
    (_ann([TRIANGLE[0], [-31, 0, 10, 0, 10, 10]]), "polygon 1 has coordinates from -31 to 10, far outside"),
    (_ann(TRIANGLE, category_id=[1]), "category_id [1] is not a category id (a number)"),
    (_ann(TRIANGLE, category_id={"id": 1}), 'category_id {"id": 1} is not a category id'),
    (_ann(TRIANGLE, area="big"), 'area "big" is not a number'),
    (_ann(TRIANGLE, area=[1]), "area [1] is not a number"),
])
def test_malformed_annotations_are_refused_in_words(tmp_path, ann, expected):
    if ann["segmentation"] is None:
        square = np.zeros((10, 10), bool)
        square[2:5, 2:5] = True
        ann["segmentation"] = _compressed(square)
    root = _dataset(tmp_path / "data", [_ann(TRIANGLE, id=3), ann])
    with pytest.raises(DataError) as caught:
        discover(DataConfig(root=root))
    message = str(caught.value)
    assert str(root / "annotations" / "instances_train.json") in message
    assert "annotations[1] (id 17): " in message and expected in message, message
    assert "annotations[0]" not in message  # the good annotation is not named


def test_every_bad_annotation_is_listed_at_once(tmp_path):
    anns = [_ann([1, 2, 3, 4, 5, 6], id=i) for i in range(12)] + [_ann(TRIANGLE, id=99)]
    with pytest.raises(DataError, match=r"(?s)\(12 files\):\n  - annotations\[0\] \(id 0\).*\n  ... and 2 more"):
        discover(DataConfig(root=_dataset(tmp_path / "data", anns)))


def test_an_image_without_a_declared_size_is_measured_for_the_check(tmp_path):
    root = _dataset(tmp_path / "data", [_ann({"size": [W, H], "counts": [0, H * W]})],
                    images=[{"id": 1, "file_name": "a.png"}])  # CVAT-style: no height and width
    with pytest.raises(DataError, match=r"RLE of size \[30, 20\] \(height, width\), but its image is \[20, 30\]"):
        discover(DataConfig(root=root))


def test_good_rles_and_polygons_are_drawn_and_what_draws_nothing_is_noted(tmp_path):
    square = np.zeros((H, W), bool)
    square[12:18, 20:28] = True
    anns = [
        _ann(_compressed(square), id=1, area=48),
        _ann({"size": [H, W], "counts": [0, H * W]}, id=2, iscrowd=1, area=600.0),  # uncompressed: all of it
        _ann([[1, 1, 10, 1, 10, 10], [1, 1, 5, 5]], id=3, area=None),  # a line beside a triangle
        _ann([], id=4),  # a box without a segmentation, as CVAT writes rectangles
        _ann([[3, 3]], id=5),  # a single point
        _ann(TRIANGLE, id=6, image_id=404),  # no such image
        _ann([[-0.5, -0.5, 30.5, -0.5, 30.5, 20.5]], id=7),  # points a little outside the image are fine
    ]
    root = _dataset(tmp_path / "data", anns)
    layout = discover(DataConfig(root=root))
    mask = np.asarray(Image.open(layout.splits["train"][0].mask))
    assert mask.shape == (H, W) and (mask == 1).all()  # the crowd region covers everything
    notes = "\n".join(layout.notes)
    assert "1 annotation(s) without a segmentation (only a box?) draw nothing" in notes
    assert "2 polygon(s) of fewer than 3 points have no area and draw nothing" in notes
    assert "1 annotation(s) name an image_id that no image entry has; they are not drawn" in notes
    # a compressed RLE draws exactly its mask, and a polygon on top of it is painted too
    drawn = coco.rasterize({"id": 1, "height": H, "width": W}, anns[:1] + anns[2:3], {1: 1})
    assert (drawn[square] == 1).all() and drawn[5, 8] == 1 and drawn[0, 0] == 0 and drawn[15, 10] == 0


def test_compressed_rle_strings_are_read_as_pycocotools_reads_them():
    rng = np.random.default_rng(0)
    for shape, p in [((20, 30), 0.5), ((64, 48), 0.02), ((7, 300), 0.98), ((40, 40), 0.0), ((40, 40), 1.0)]:
        mask = rng.random(shape) < p
        mask[:, : shape[1] // 3] = False  # long runs as well as short ones
        expected, value = [0], False  # runs of 0s and 1s down the columns, starting with 0s
        for v in mask.ravel(order="F"):
            if v != value:
                expected.append(0)
                value = v
            expected[-1] += 1
        assert coco._rle_runs(_compressed(mask)["counts"]) == expected
    assert coco._rle_runs("0") == [0] and coco._rle_runs("") == []
    assert coco._rle_runs("\x00") is None and coco._rle_runs("o") is None  # a NUL byte; a number cut off


def test_rasterize_itself_refuses_a_segmentation_that_does_not_fit_its_image():
    huge = _ann({"size": [30000, 30000], "counts": [0, 30000 * 30000]})
    with pytest.raises(DataError, match=r"image 1: annotations\[0\] \(id 17\): segmentation is an RLE of size"):
        coco.rasterize({"id": 1, "height": H, "width": W}, [huge], {1: 1})


def test_ms_coco_annotations_folder_reads_only_the_instances_files(tmp_path):
    root = tmp_path / "coco"
    _dataset(root, [_ann(TRIANGLE)], split="train2017")
    _dataset(root, [], split="val2017")
    images = [{"id": 1, "file_name": "a.png", "height": H, "width": W}]
    ann_dir = root / "annotations"
    # captions: no categories, so not a COCO instances file; keypoints: people only, not a split of its own
    (ann_dir / "captions_train2017.json").write_text(json.dumps(
        {"images": images, "annotations": [{"id": 1, "image_id": 1, "caption": "a cat"}]}))
    (ann_dir / "person_keypoints_train2017.json").write_text(json.dumps(
        {"images": images, "annotations": [], "categories": [{"id": 1, "name": "person", "keypoints": []}]}))
    (ann_dir / "person_keypoints_val2017.json").write_text("{}")
    assert coco.coco_files(root) == {"train": ann_dir / "instances_train2017.json",
                                     "val": ann_dir / "instances_val2017.json"}
    layout = discover(DataConfig(root=root))
    assert set(layout.splits) == {"train", "val"} and layout.classes.names == ["background", "cat"]
    assert np.asarray(Image.open(layout.splits["train"][0].mask))[5, 8] == 1
    # without any instances_ file, any annotations/*.json is a split, as before
    other = tmp_path / "other"
    (other / "annotations").mkdir(parents=True)
    (other / "annotations" / "train.json").write_text("{}")
    (other / "annotations" / "annotations_val.json").write_text("{}")
    assert coco.coco_files(other) == {"train": other / "annotations" / "train.json",
                                      "val": other / "annotations" / "annotations_val.json"}


def test_two_annotation_files_for_one_split_are_refused_naming_both(tmp_path):
    """instances_train2014.json beside instances_train2017.json: both are 'train'. Reading the first and leaving the
    other out unsaid would train on part of what the user meant; the error names both."""
    root = tmp_path / "coco"
    _dataset(root, [_ann(TRIANGLE)], split="train2014")
    _dataset(root, [_ann(TRIANGLE)], split="train2017")
    with pytest.raises(DataError, match=r"train: instances_train2014\.json, instances_train2017\.json"):
        discover(DataConfig(root=root))
    roboflow = tmp_path / "roboflow"  # two exports in one split folder: the same
    for name in ("_annotations.coco.json", "old.coco.json"):
        (roboflow / "train").mkdir(parents=True, exist_ok=True)
        (roboflow / "train" / name).write_text("{}")
    with pytest.raises(DataError, match=r"train: _annotations\.coco\.json, old\.coco\.json"):
        coco.read_coco(roboflow)


def test_coco_2014_val_beside_its_parts_reads_val2014_for_val(tmp_path):
    """Detectron's COCO 2014 folder: instances_val2014.json with its parts minival2014 and valminusminival2014
    ('val...' too). The file named for the split itself is 'val'; the parts are splits of their own names."""
    ann_dir = tmp_path / "coco" / "annotations"
    ann_dir.mkdir(parents=True)
    for split in ("train2014", "val2014", "minival2014", "valminusminival2014"):
        (ann_dir / f"instances_{split}.json").write_text("{}")
    files = coco.coco_files(tmp_path / "coco", one_per_split=True)
    assert files == {"train": ann_dir / "instances_train2014.json", "val": ann_dir / "instances_val2014.json",
                     "minival2014": ann_dir / "instances_minival2014.json",
                     "valminusminival2014": ann_dir / "instances_valminusminival2014.json"}
