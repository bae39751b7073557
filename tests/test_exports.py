"""Issue 25: real third-party exports read right, `check` deciding exactly as `train`, and what data files say
(paths, ids, sizes, class names, list separators) never taken on trust."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_or_skip, write_pair
from datasets import DATASETS, aerial_tiles, cvat_segmentation_mask, roboflow_coco
from PIL import Image

from pixelwise.config import DataConfig, load_config
from pixelwise.data.build import build_datasets
from pixelwise.data.checks import check_pairs
from pixelwise.data.classes import ClassTable
from pixelwise.data.dataset import SegmentationDataset
from pixelwise.data.fingerprint import fingerprint
from pixelwise.data.formats import discover
from pixelwise.errors import ConfigError, DataError, PixelwiseError


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PIXELWISE_CACHE", str(tmp_path / "cache"))  # COCO masks are rasterised here


def _real_subsets(root: Path) -> dict[str, tuple[Path, list[str]]]:
    """A few real images of each shared dataset, linked (never copied) into the layouts they come in."""
    out = {}
    camvid = shared_or_skip("camvid")
    for split, n in (("train", 3), ("val", 2)):
        for f in sorted((camvid / split).glob("*.png"))[:n]:
            for folder in (split, f"{split}annot"):
                (root / "camvid" / folder).mkdir(parents=True, exist_ok=True)
                (root / "camvid" / folder / f.name).symlink_to(camvid / folder / f.name)
    out["real_camvid"] = (root / "camvid", [])
    membrane = shared_or_skip("membrane")
    for folder in ("image", "label"):
        (root / "membrane" / folder).mkdir(parents=True)
        for i in range(4):
            (root / "membrane" / folder / f"{i}.png").symlink_to(membrane / folder / f"{i}.png")
    out["real_membrane"] = (root / "membrane", ["data.val_fraction=0.25"])
    return out


def _decisions_agree(root: Path, overrides: list[str]) -> None:
    cfg = load_config(overrides=[f"data.root={root}", "data.crop_size=32", *overrides])
    checked = fingerprint(cfg.data)
    try:
        built = build_datasets(cfg.data, cfg.augment)
    except PixelwiseError as e:
        assert checked.errors, f"train refused ({e}) but check found no error"
        return
    assert not checked.errors, f"check refused ({checked.errors}) but train accepted"
    assert checked.decisions == {"train": [str(p.image) for p in built.train.pairs],
                                    "val": [str(p.image) for p in (built.val.pairs if built.val else [])]}
    fp = checked.fingerprint
    assert [c.name for c in fp.classes] == built.summary.table.names and fp.channels == built.summary.channels
    crop = [w for w in checked.warnings if "larger than every training image" in w]
    assert crop == built.warnings
    for note in built.notes:  # everything train says about the layout and the split, check says too
        if not note.startswith("training on"):
            assert note in checked.notes, (note, checked.notes)
        else:
            assert fp.split_decision == note


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_check_and_train_decide_alike_on_every_test_dataset(name, tmp_path):
    root, overrides = DATASETS[name](tmp_path / name)
    _decisions_agree(root, overrides)


def test_check_and_train_decide_alike_on_the_real_data(tmp_path):
    for root, overrides in _real_subsets(tmp_path).values():
        _decisions_agree(root, overrides)


def test_the_agreement_test_sees_a_disagreement(tmp_path, monkeypatch):
    """If check scanned every split again (as it did), a broken test image would fail check but not train."""
    import pixelwise.data.fingerprint as fpm

    root, overrides = DATASETS["broken_image_in_test_split"](tmp_path / "d")
    real = fpm.plan_splits
    monkeypatch.setattr(fpm, "plan_splits", lambda splits, cfg, root=None: (_ for _ in ()).throw(DataError("x")))
    with pytest.raises(AssertionError, match="check refused"):
        _decisions_agree(root, overrides)
    monkeypatch.setattr(fpm, "plan_splits", real)
    _decisions_agree(root, overrides)


# --- third-party exports -------------------------------------------------------------------------------------

def _train_notes(root: Path, *overrides: str) -> tuple[object, str]:
    cfg = load_config(overrides=[f"data.root={root}", "data.crop_size=16", *overrides])
    data = build_datasets(cfg.data, cfg.augment)
    return data, "\n".join(data.notes)


def test_roboflow_coco_export_has_the_classes_of_its_project(tmp_path):
    root, _ = roboflow_coco(tmp_path / "rf")
    data, notes = _train_notes(root)
    assert data.summary.table.names == ["background", "cell", "nucleus"]  # not 4 classes with 'cells-xyz'
    assert "category 0 'cells-xyz'" in notes and "Roboflow's dataset-level category" in notes
    assert len(data.train) == 4 and len(data.val) == 2  # train/ and valid/ (test/ is left for eval)
    mask = data.train.load(1)[1]
    assert mask[0, 0] == 2 and mask[20, 0] == 0  # image 1's polygon is 'nucleus' (category 2)
    # a category 0 that annotations do use is a class like any other
    doc = json.loads((root / "train" / "_annotations.coco.json").read_text())
    doc["annotations"][0]["category_id"] = 0
    (root / "train" / "_annotations.coco.json").write_text(json.dumps(doc))
    assert _train_notes(root)[0].summary.table.names == ["background", "cells-xyz", "cell", "nucleus"]


def test_cvat_segmentation_mask_export_uses_its_label_map(tmp_path):
    root, _ = cvat_segmentation_mask(tmp_path / "cvat")
    data, notes = _train_notes(root)
    assert data.summary.table.names == ["background", "car", "road"]  # not VOC's aeroplane, bicycle
    assert "labelmap.txt" in notes and "no 'train' split: training on its only split ('default')" in notes
    assert len(data.train) + len(data.val) == 6
    assert set(np.unique(data.train.load(0)[1])) == {0, 1, 2}  # painted colours -> class indices


def test_cvat_coco_export_and_cityscapes_with_only_val(tmp_path):
    data, notes = _train_notes(DATASETS["cvat_coco"](tmp_path / "cc")[0])
    assert data.summary.table.names == ["background", "car", "road"] and len(data.train) == 4
    assert "training on its only split ('default')" in notes
    data, notes = _train_notes(DATASETS["cityscapes_val_only"](tmp_path / "cs")[0])
    assert data.summary.table.num_classes == 19 and len(data.train) == 4 and len(data.val) == 1
    assert "no 'train' split: training on its only split ('val')" in notes and "held out from 'val'" in notes


def test_split_folders_without_a_train_split_are_pooled(tmp_path):
    root, overrides = aerial_tiles(tmp_path / "tiles")
    data, notes = _train_notes(root, *overrides)
    assert len(data.train) + len(data.val) == 16 and len(data.val) == 3  # 8 tiles x 2, 20% held out
    assert "training on 8 split folders pooled ('Tile 1', 'Tile 2'" in notes
    from pixelwise.plan import train_images, val_images

    fp = fingerprint(load_config(overrides=[f"data.root={root}", *overrides]).data).fingerprint
    assert (train_images(fp), val_images(fp)) == (13, 3)  # `plan` sizes epochs from the same decision
    # a split chosen by name must exist: no pooling over a typo
    with pytest.raises(DataError, match="no split 'Tile 9' .data.train_split.; the data has 'Tile 1'"):
        _train_notes(root, *overrides, "data.train_split=Tile 9")


def test_a_foreign_classes_json_says_how_to_give_the_table(tmp_path):
    root, _ = aerial_tiles(tmp_path / "tiles", supervisely_classes=True)
    with pytest.raises(DataError) as e:
        _train_notes(root)
    assert "classes.json: invalid classes file" in str(e.value)
    assert "--set data.classes=FILE" in str(e.value) and "names: [...]" in str(e.value)
    table = {"names": ["Building", "Land", "Road", "Vegetation", "Water", "Unlabeled"], "color_masks": True,
             "colors": [[60, 16, 152], [132, 41, 246], [110, 193, 228], [254, 221, 58], [226, 169, 41],
                        [155, 155, 155]]}
    (tmp_path / "mine.yaml").write_text(json.dumps(table))
    data, _ = _train_notes(root, f"data.classes={tmp_path / 'mine.yaml'}")
    assert data.summary.table.names[0] == "Building"


# --- class names ----------------------------------------------------------------------------------------------

def test_two_classes_of_one_name_are_refused_wherever_the_table_comes_from(tmp_path):
    with pytest.raises(ValueError, match="classes 1 and 3 are both named 'Car'"):
        ClassTable(names=["bg", "car", "road", "Car"])
    with pytest.raises(ConfigError, match="data.classes.*classes 0 and 1 are both named"):
        load_config(overrides=["data.classes={names: [road, 'road ']}"])
    (tmp_path / "classes.yaml").write_text("names: [a, b, a]\n")
    with pytest.raises(ConfigError, match="classes.yaml: invalid classes file.*classes 0 and 2 are both named 'a'"):
        ClassTable.from_file(tmp_path / "classes.yaml")
    root, _ = roboflow_coco(tmp_path / "rf")
    for split in ("train", "valid", "test"):
        path = root / split / "_annotations.coco.json"
        doc = json.loads(path.read_text())
        doc["categories"][2]["name"] = "Cell"
        path.write_text(json.dumps(doc))
    with pytest.raises(DataError, match="_annotations.coco.json: categories 1 and 2 are both named 'Cell'"):
        discover(DataConfig(root=root))
    cvat, _ = cvat_segmentation_mask(tmp_path / "cvat")
    (cvat / "labelmap.txt").write_text("background:0,0,0::\ncar:1,2,3::\ncar:4,5,6::\n")
    with pytest.raises(DataError, match="labelmap.txt: not a usable class table.*both named 'car'"):
        discover(DataConfig(root=cvat))


# --- what data files say is not taken on trust -------------------------------------------------------------------

def _coco_doc(root: Path, images: list[dict], anns: list[dict] | None = None) -> Path:
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    doc = {"images": images, "annotations": anns or [], "categories": [{"id": 1, "name": "thing"}]}
    (root / "annotations" / "instances_train.json").write_text(json.dumps(doc))
    return root


def test_paths_and_ids_from_coco_files_stay_inside_the_dataset_and_the_cache(tmp_path):
    secret = tmp_path / "secret.png"
    Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(secret)
    root = tmp_path / "deep" / "data"
    (root / "train").mkdir(parents=True)
    Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(root / "train" / "ok.png")
    for name in ("../../secret.png", str(secret), "..\\..\\secret.png", "C:\\data\\x.png", ""):
        _coco_doc(root, [{"id": 1, "file_name": "ok.png", "height": 24, "width": 32},
                         {"id": 2, "file_name": name, "height": 24, "width": 32}])
        with pytest.raises(DataError, match=r"images\[1\] \(id 2\): '.*' is not a path inside"):
            discover(DataConfig(root=root))
    # an id is never part of a file name: '../../evil' cannot write outside the cache
    evil = "../../../evil"
    _coco_doc(root, [{"id": evil, "file_name": "ok.png", "height": 24, "width": 32}],
              [{"id": 1, "image_id": evil, "category_id": 1, "segmentation": [[0, 0, 10, 0, 10, 10]]}])
    layout = discover(DataConfig(root=root))
    mask = layout.splits["train"][0].mask
    assert mask.parent.parent.parent == tmp_path / "cache" and ".." not in mask.name and mask.is_file()
    assert not list(tmp_path.rglob("evil*"))
    assert SegmentationDataset(layout.splits["train"], layout.classes, 3).load(0)[1][2, 5] == 1


def test_coco_image_entries_are_checked_and_sizes_read_from_the_file(tmp_path):
    root = tmp_path / "data"
    (root / "train").mkdir(parents=True)
    Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(root / "train" / "a.png")
    square = [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[0, 0, 8, 0, 8, 8, 0, 8]]}]
    _coco_doc(root, [{"id": 1, "file_name": "a.png"}], square)  # CVAT-style entry without height/width
    layout = discover(DataConfig(root=root))
    mask = np.asarray(Image.open(layout.splits["train"][0].mask))
    assert mask.shape == (24, 32) and mask[4, 4] == 1
    check_pairs(layout.splits["train"], layout.classes)
    for images, expected in [
        ([{"file_name": "a.png"}], r"images entries without id, file_name .1 file.:\s+- images\[0\]"),
        ([{"id": 1, "file_name": "a.png"}, {"id": 1, "file_name": "b.png"}], "image ids used by more than one"),
        ([{"id": 1, "file_name": "a.png", "height": 100_000, "width": 100_000}],
         "declares 100000x100000 = 10,000,000,000 pixels, over the limit"),
    ]:
        _coco_doc(root, images)
        with pytest.raises(DataError, match=expected):
            discover(DataConfig(root=root))


def test_list_files_keep_tabs_headers_and_their_folder(tmp_path):
    root, _ = DATASETS["lists"](tmp_path / "l")
    layout = discover(DataConfig(root=root))
    assert layout.splits["train"][0].image == root / "my images" / "shot 0.png"  # a tab separates, not spaces
    assert len(layout.splits["val"]) == 2 and any("first line 'image,mask' taken as a header" in n
                                                    for n in layout.notes)
    # a first line that is data stays data, even without file suffixes
    for name in ("a", "b", "m"):
        (root / name).write_bytes(b"")
    (root / "train.tsv").write_text("a\tm\nb\tm\n")
    assert [p.image.name for p in discover(DataConfig(root=root)).splits["train"]] == ["a", "b"]
    (root / "train.tsv").unlink()
    (root / "train.txt").write_text("my images/shot 0.png my masks/shot 0.png\n")
    with pytest.raises(DataError, match="got 6 fields.*separate paths that hold spaces with a comma or a tab"):
        discover(DataConfig(root=root))
    outside = tmp_path / "elsewhere.png"
    for line in ("../elsewhere.png,my masks/shot 0.png", f"{outside},my masks/shot 0.png", "sub/../../x.png"):
        (root / "train.txt").write_text(line + "\n")
        with pytest.raises(DataError, match=r"train.txt:1: '.*' is not a path inside"):
            discover(DataConfig(root=root))


def test_voc_lists_cannot_name_files_outside_the_dataset(tmp_path):
    root, _ = DATASETS["voc"](tmp_path / "voc")
    lists = root / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation"
    (lists / "val.txt").write_text("../../../../secret\n")
    with pytest.raises(DataError, match=r"lists '\.\./\.\./\.\./\.\./secret', which has no image"):
        discover(DataConfig(root=root))


# --- problems grouped, crops larger than the images -------------------------------------------------------------

def test_check_groups_failing_files_by_problem_as_train_does(tmp_path):
    from typer.testing import CliRunner

    from pixelwise.cli import app

    rng = np.random.default_rng(0)
    for i in range(15):
        write_pair(tmp_path, f"small{i:02d}", rng.integers(0, 255, (24, 32, 3), dtype=np.uint8),
                   np.zeros((12, 32), np.uint8))
    write_pair(tmp_path, "ok", rng.integers(0, 255, (24, 32, 3), dtype=np.uint8), np.zeros((24, 32), np.uint8))
    result = CliRunner().invoke(app, ["check", str(tmp_path), "--json"])
    report = json.loads(result.stdout)
    assert result.exit_code == 1 and len(report["errors"]) == 1 and len(report["problems"]) == 15
    block = report["errors"][0]
    assert block.startswith("masks whose size differs from their image's (15 files):")
    assert block.count("mask is 32x12 but its image is 32x24") == 10 and block.endswith("... and 5 more")
    with pytest.raises(DataError) as e:
        build_datasets(*(lambda c: (c.data, c.augment))(load_config(overrides=[f"data.root={tmp_path}"])))
    assert block in str(e.value)  # the same block, word for word
    text = CliRunner().invoke(app, ["check", str(tmp_path)]).output
    assert text.count("mask is 32x12") == 10 and "... and 5 more" in text


def test_a_crop_larger_than_every_training_image_is_a_warning_at_train_time(tmp_path):
    root, overrides = DATASETS["crop_larger_than_every_image"](tmp_path / "d")
    cfg = load_config(overrides=[f"data.root={root}", *overrides])
    (warning,) = build_datasets(cfg.data, cfg.augment).warnings
    assert "data.crop_size [64, 64] is larger than every training image (the largest is 24x32" in warning
    assert "81% of each crop is void padding" in warning and "e.g. [24, 32]" in warning
    cfg = load_config(overrides=[f"data.root={root}", "data.crop_size=[24, 16]"])
    assert build_datasets(cfg.data, cfg.augment).warnings == []  # a crop that fits one image is fine


def test_split_decisions_say_where_each_side_comes_from(tmp_path):
    from pixelwise.data.splits import plan_splits

    for name, expected in [
        ("folders_splits", "training on 'train' (4 images), validating on 'val' (2 images)"),
        ("folders_pool", "training on 'train' less a held-out 20% (4 images), validating on 20% held out from "
                         "'train' (data.split_seed 0) (1 images)"),
        ("cvat_coco", "training on 'default' less a held-out 20% (4 images), validating on 20% held out from "
                      "'default' (data.split_seed 0) (1 images)"),
    ]:
        root, _ = DATASETS[name](tmp_path / name)
        cfg = DataConfig(root=root)
        assert plan_splits(discover(cfg).splits, cfg).summary() == expected
    splits = {"Tile 1": ["a", "b"], "Tile 2": ["c"], "val": ["v"], "test": ["t"]}
    plan = plan_splits(splits, DataConfig())
    assert plan.train == ["a", "b", "c"] and plan.val == ["v"]
    assert plan.summary() == "training on 'Tile 1', 'Tile 2' pooled (3 images), validating on 'val' (1 images)"
    assert "split(s) 'test' not trained on" in plan.notes[1]
    assert plan_splits(splits, DataConfig(val_split=None)).val == []
