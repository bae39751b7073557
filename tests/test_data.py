from pathlib import Path

import numpy as np
import pytest
from conftest import write_pair
from PIL import Image

from pixelwise.config import DataConfig
from pixelwise.data.checks import check_pairs, infer_table
from pixelwise.data.classes import IGNORE, ClassTable
from pixelwise.data.dataset import DecodedCache, SegmentationDataset, read_mask
from pixelwise.data.formats import CAMVID_CLASSES, discover, holdout, select_split
from pixelwise.data.transforms import train_transform
from pixelwise.errors import DataError

RNG = np.random.default_rng(0)


def _img(h=20, w=30, c=3):
    return RNG.integers(0, 255, (h, w, c) if c > 1 else (h, w), dtype=np.uint8)


def _pool(root: Path, n=5, values=(0, 1, 2)) -> Path:
    for i in range(n):
        write_pair(root, f"s{i}", _img(), RNG.choice(values, (20, 30)).astype(np.uint8))
    return root


def test_folders_pool_with_holdout(tmp_path):
    _pool(tmp_path)
    cfg = DataConfig(root=tmp_path, val_fraction=0.4)
    layout = discover(cfg)
    assert layout.format == "folders" and len(layout.splits["train"]) == 5
    train, _ = select_split(layout, cfg, "train")
    val, note = select_split(layout, cfg, "val")
    assert len(train) == 3 and len(val) == 2 and not set(train) & set(val) and "held out" in note
    assert select_split(layout, cfg, "val")[0] == val  # seeded: the same every time


def test_folders_split_folders_and_classes_file(tmp_path):
    _pool(tmp_path / "train", 3)
    _pool(tmp_path / "val", 2)
    (tmp_path / "classes.yaml").write_text("names: [a, b, c]\n")
    layout = discover(DataConfig(root=tmp_path))
    assert set(layout.splits) == {"train", "val"} and layout.classes.names == ["a", "b", "c"]


def test_folder_names_given_and_mask_suffix(tmp_path):
    (tmp_path / "image").mkdir()
    (tmp_path / "label").mkdir()
    Image.fromarray(_img()).save(tmp_path / "image" / "a.png")
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(tmp_path / "label" / "a_mask.png")
    layout = discover(DataConfig(root=tmp_path, images="image", masks="label"))
    assert layout.splits["train"][0].mask.name == "a_mask.png"


def test_camvid_layout(tmp_path):
    for split in ("train", "val"):
        (tmp_path / split).mkdir()
        (tmp_path / f"{split}annot").mkdir()
        Image.fromarray(_img()).save(tmp_path / split / "x.png")
        Image.fromarray(np.full((20, 30), 11, np.uint8)).save(tmp_path / f"{split}annot" / "x.png")
    layout = discover(DataConfig(root=tmp_path))
    assert layout.format == "camvid" and layout.classes == CAMVID_CLASSES and set(layout.splits) == {"train", "val"}
    summary = check_pairs(layout.splits["train"], layout.classes)
    assert summary.void_pixels == 600 and summary.class_pixels.sum() == 0  # 11 is void


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(DataError, match="dataset folder not found"):
        discover(DataConfig(root=tmp_path / "nope"))
    with pytest.raises(DataError, match="no image and mask folders"):
        discover(DataConfig(root=tmp_path))
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(DataError, match="hold no images"):
        discover(DataConfig(root=tmp_path))


def test_checks_name_every_problem(tmp_path):
    _pool(tmp_path, 2)
    write_pair(tmp_path, "small", _img(), np.zeros((10, 30), np.uint8))  # size mismatch
    write_pair(tmp_path, "bad", _img(), np.full((20, 30), 7, np.uint8))  # value outside the table
    (tmp_path / "images" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(tmp_path / "masks" / "corrupt.png")
    Image.fromarray(_img()).save(tmp_path / "images" / "lonely.png")  # no mask
    pairs = discover(DataConfig(root=tmp_path)).splits["train"]
    with pytest.raises(DataError) as e:
        check_pairs(pairs, ClassTable(names=["a", "b", "c"]))
    msg = str(e.value)
    for heading in ("files that cannot be read as images (1 file)", "images without a mask (1 file)",
                    "masks whose size differs from their image's (1 file)",
                    "masks with values that are not in the class table (1 file)"):  # grouped by kind of problem
        assert heading in msg, msg
    assert "small.png: mask is 30x10 but its image is 30x20" in msg
    assert "bad.png: values 7 not in the class table (valid: 0..2)" in msg
    assert "corrupt.png: cannot be read as an image" in msg
    assert "lonely.png: no mask found" in msg


def test_offender_list_is_capped(tmp_path):
    for i in range(13):
        write_pair(tmp_path, f"b{i:02d}", _img(), np.full((20, 30), 9, np.uint8))
    with pytest.raises(DataError) as e:
        check_pairs(discover(DataConfig(root=tmp_path)).splits["train"], ClassTable(names=["a", "b"]))
    assert "(13 files)" in str(e.value) and "... and 3 more" in str(e.value)


def test_inferred_tables():
    table, note = infer_table([0, 255])
    assert table.mapping == {0: 0, 255: 1} and "binary" in note
    table, _ = infer_table([0, 1, 3, 255])
    assert table.num_classes == 4 and table.ignore_index == 255
    with pytest.raises(DataError, match="too many"):
        infer_table(range(200))


def test_check_infers_binary_and_counts(tmp_path):
    write_pair(tmp_path, "a", _img(c=1), np.array([[0, 255], [255, 255]], np.uint8).repeat(10, 0).repeat(15, 1))
    summary = check_pairs(discover(DataConfig(root=tmp_path)).splits["train"], None)
    assert summary.channels == 1 and summary.table.num_classes == 2
    assert summary.class_pixels.tolist() == [150, 450] and summary.notes


def test_channels_follow_the_data(tmp_path):
    write_pair(tmp_path, "g", _img(c=1), np.zeros((20, 30), np.uint8))
    write_pair(tmp_path, "c", _img(), np.zeros((20, 30), np.uint8))
    pairs = discover(DataConfig(root=tmp_path)).splits["train"]
    assert check_pairs(pairs, ClassTable(names=["a"])).channels == 3  # mixed: gray images are replicated
    ds = SegmentationDataset(pairs, ClassTable(names=["a"]), 3)
    assert all(ds[i][0].shape == (3, 20, 30) for i in range(2))


def test_masks_palette_16bit_and_rgb(tmp_path):
    pal = Image.fromarray(np.array([[0, 1], [2, 1]], np.uint8), mode="P")
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    pal.save(tmp_path / "p.png")
    assert read_mask(tmp_path / "p.png").tolist() == [[0, 1], [2, 1]]  # indices, not colours
    Image.fromarray(np.array([[0, 1000]], np.uint16)).save(tmp_path / "w.png")
    assert read_mask(tmp_path / "w.png").tolist() == [[0, 1000]]
    Image.fromarray(np.stack([np.eye(2, dtype=np.uint8) * 3] * 3, -1)).save(tmp_path / "g.png")
    assert read_mask(tmp_path / "g.png").tolist() == [[3, 0], [0, 3]]  # gray stored as RGB is fine
    Image.fromarray(RNG.integers(0, 255, (2, 2, 3), dtype=np.uint8)).save(tmp_path / "c.png")
    with pytest.raises(DataError, match="RGB colour image"):
        read_mask(tmp_path / "c.png")


def test_mapping_and_void(tmp_path):
    write_pair(tmp_path, "m", _img(), np.array([[10, 20, 99]], np.uint8).repeat(20, 0).repeat(10, 1))
    table = ClassTable(names=["x", "y"], mapping={10: 0, 20: 1}, ignore_index=99)
    pairs = discover(DataConfig(root=tmp_path)).splits["train"]
    check_pairs(pairs, table)
    _, mask = SegmentationDataset(pairs, table, 3).load(0)
    assert set(np.unique(mask).tolist()) == {0, 1, IGNORE}


def test_cache_holds_decoded_arrays_within_limit(tmp_path):
    _pool(tmp_path, 3)
    pairs = discover(DataConfig(root=tmp_path)).splits["train"]
    cache = DecodedCache(max_bytes=20 * 30 * 3 * 2 + 20 * 30)  # room for two images and one mask
    check_pairs(pairs, ClassTable(names=["a", "b", "c"]), cache=cache)
    cached = [p for pair in pairs for p in (pair.image, pair.mask) if cache.get(p) is not None]
    assert cache.nbytes <= cache.max_bytes and len(cached) >= 2  # filled, in whatever order threads finished


def test_holdout_keeps_both_sides_nonempty():
    train, val = holdout(list(range(3)), 0.01, 0)
    assert len(val) == 1 and len(train) == 2


@pytest.mark.parametrize("preset", ["none", "light", "default", "strong"])
@pytest.mark.parametrize("channels", [1, 3])
def test_augmentation_keeps_masks_aligned(preset, channels):
    # The image is the mask scaled, so any misalignment or non-nearest mask resampling shows up.
    mask = np.zeros((40, 50), np.uint8)
    mask[5:25, 10:30], mask[20:35, 30:45] = 1, 2
    image = np.repeat((mask * 100)[:, :, None], channels, axis=2).astype(np.uint8)
    t = train_transform((32, 32), IGNORE, channels, preset, seed=3)
    for _ in range(10):
        out = t(image=image, mask=mask)
        img, m = out["image"], out["mask"]
        assert img.shape[:2] == m.shape == (32, 32)
        assert set(np.unique(m).tolist()) <= {0, 1, 2, IGNORE}
        if preset in ("none", "light"):  # no photometric change: exact correspondence
            labelled = m != IGNORE
            assert (img[..., 0][labelled] == m[labelled] * 100).all()


def test_crop_pads_with_void():
    t = train_transform((64, 64), IGNORE, 3, "none", seed=0)
    out = t(image=np.zeros((20, 20, 3), np.uint8), mask=np.zeros((20, 20), np.uint8))
    assert out["mask"].shape == (64, 64) and (out["mask"] == IGNORE).sum() == 64 * 64 - 400
