"""Issue 16 (and issue 25's decoding items): every pixel type, channel layout and raster kept exactly, and every
file that cannot be read exactly refused with a message naming it. No training here (see test_scientific.py)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image, ImageOps
from scientific_data import UTM33N, regions, write_geotiff

from pixelwise.config import load_config
from pixelwise.data.build import build_datasets
from pixelwise.data.dataset import SegmentationDataset
from pixelwise.data.fingerprint import fingerprint
from pixelwise.data.io import ImageSpec, orient, read_image, read_mask
from pixelwise.errors import DataError

RNG = np.random.default_rng(7)


def _build(root: Path, *overrides: str):
    # every pair trains (no held-out validation): the tests look at decoding, not at splits
    cfg = load_config(overrides=[f"data.root={root}", "data.crop_size=16", "data.val_fraction=0", "data.val_split=null",
                                 *overrides])
    return build_datasets(cfg.data, cfg.augment)


def _fails(root: Path, message: str, *overrides: str) -> None:
    with pytest.raises(DataError) as e:
        _build(root, *overrides)
    assert message in " ".join(str(e.value).split()), (message, str(e.value))


def _pairs(root: Path, images: list[tuple[str, np.ndarray]], masks: dict[str, np.ndarray] | None = None) -> Path:
    """Write images (by file name, any format) with 0/1 PNG masks beside them, and a two-class table."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for name, array in images:
        path = root / "images" / name
        if path.suffix == ".npy":
            np.save(path, array)
        elif path.suffix == ".tif":
            tifffile.imwrite(path, array, photometric="minisblack", planarconfig="contig" if array.ndim == 3 else None)
        else:
            Image.fromarray(array).save(path)
        mask = (masks or {}).get(name, RNG.integers(0, 2, array.shape[:2], dtype=np.uint8))
        Image.fromarray(mask).save(root / "masks" / f"{path.stem}.png")
    (root / "classes.yaml").write_text("names: [background, thing]\n")
    return root


# --- decoding keeps every bit ---------------------------------------------------------------------------

def test_16_bit_png_and_tiff_keep_every_value(tmp_path):
    values = RNG.integers(0, 4096, (20, 30)).astype(np.uint16)  # 12-bit data in 16-bit files
    Image.fromarray(values).save(tmp_path / "a.png")
    tifffile.imwrite(tmp_path / "a.tif", values)
    for name in ("a.png", "a.tif"):
        got = read_image(tmp_path / name, ImageSpec())
        assert got.dtype == np.uint16 and np.array_equal(got[:, :, 0], values), name


def test_48_bit_rgb_png_image_keeps_16_bits_per_channel(tmp_path):
    rgb = RNG.integers(0, 65536, (10, 12, 3)).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "rgb48.png"), rgb[:, :, ::-1])  # OpenCV writes BGR
    assert Image.open(tmp_path / "rgb48.png").mode == "RGB"  # what PIL makes of it: 8 bits per channel
    got = read_image(tmp_path / "rgb48.png", ImageSpec())
    assert got.dtype == np.uint16 and np.array_equal(got, rgb)


def test_float_int16_and_float16_tiffs_keep_their_values(tmp_path):
    reflectance = RNG.random((16, 16)).astype(np.float32)
    ct = RNG.integers(-1024, 3072, (16, 16)).astype(np.int16)  # Hounsfield units
    half = (RNG.random((16, 16)) * 100).astype(np.float16)
    for name, array in (("r.tif", reflectance), ("ct.tif", ct), ("h.tif", half)):
        tifffile.imwrite(tmp_path / name, array)
        got = read_image(tmp_path / name, ImageSpec())[:, :, 0]
        assert np.array_equal(got, array.astype(got.dtype)), name
    assert read_image(tmp_path / "ct.tif", ImageSpec()).dtype == np.int16
    assert read_image(tmp_path / "h.tif", ImageSpec()).dtype == np.float32  # exactly: float16 is a subset


def test_multichannel_tiff_contiguous_planar_and_npy_layouts_agree(tmp_path):
    cube = RNG.integers(0, 10000, (24, 20, 13)).astype(np.uint16)  # 13 bands, like a Sentinel-2 tile
    tifffile.imwrite(tmp_path / "hwc.tif", cube, photometric="minisblack", planarconfig="contig")
    tifffile.imwrite(tmp_path / "chw.tif", cube.transpose(2, 0, 1), photometric="minisblack", planarconfig="separate")
    np.save(tmp_path / "hwc.npy", cube)
    np.save(tmp_path / "chw.npy", cube.transpose(2, 0, 1))
    for name, spec in (("hwc.tif", ImageSpec()), ("chw.tif", ImageSpec()), ("hwc.npy", ImageSpec()),
                       ("chw.npy", ImageSpec(channel_axis="first"))):
        assert np.array_equal(read_image(tmp_path / name, spec), cube), name
    with pytest.raises(DataError, match="looks channels-first.*data.channel_axis: first"):
        read_image(tmp_path / "chw.npy", ImageSpec())


def test_bands_are_chosen_in_order_and_a_missing_band_names_the_file(tmp_path):
    cube = RNG.integers(0, 10000, (8, 8, 5)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "five.tif", cube, photometric="minisblack", planarconfig="contig")
    got = read_image(tmp_path / "five.tif", ImageSpec(bands=(4, 3, 2)))
    assert np.array_equal(got, cube[:, :, [3, 2, 1]])
    with pytest.raises(DataError, match=r"five.tif: data.bands asks for band 8 but the file has 5 band\(s\)"):
        read_image(tmp_path / "five.tif", ImageSpec(bands=(4, 3, 2, 8)))


def test_exif_and_tiff_orientations_match_pil(tmp_path):
    stored = RNG.integers(0, 255, (6, 9, 3), dtype=np.uint8)
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        im = Image.fromarray(stored)
        im.info["exif"] = exif.tobytes()
        im.getexif()[0x0112] = orientation
        expected = np.asarray(ImageOps.exif_transpose(im))
        assert np.array_equal(orient(stored, orientation), expected), orientation
    tifffile.imwrite(tmp_path / "o.tif", stored, photometric="rgb", metadata=None, extratags=[(274, 3, 1, 6, True)])
    assert read_image(tmp_path / "o.tif", 3).shape == (9, 6, 3)  # orientation 6: shown rotated, as PIL did


def test_eight_bit_rgb_keeps_the_uint8_fast_path(tmp_path):
    root = _pairs(tmp_path, [(f"s{i}.png", RNG.integers(0, 255, (16, 16, 3), dtype=np.uint8)) for i in range(3)])
    data = _build(root)
    image, _ = data.train[0]
    assert data.summary.dtype == "uint8" and image.dtype.is_floating_point is False
    assert data.train.cache.get(data.train.pairs[0].image).dtype == np.uint8  # the cache holds uint8


# --- what cannot be read exactly is refused, naming the file ------------------------------------------

def test_multipage_tiff_is_refused_unless_pages_are_channels(tmp_path):
    pages = RNG.integers(0, 4096, (3, 16, 16)).astype(np.uint16)
    frames = [Image.fromarray(p) for p in pages]
    frames[0].save(tmp_path / "stack.tif", save_all=True, append_images=frames[1:])  # 3 pages, as ImageJ stacks
    with pytest.raises(DataError, match="stack.tif: the file holds 3 images .* data.pages_as_channels: true"):
        read_image(tmp_path / "stack.tif", ImageSpec())
    got = read_image(tmp_path / "stack.tif", ImageSpec(pages_as_channels=True))
    assert np.array_equal(got, pages.transpose(1, 2, 0))
    root = _pairs(tmp_path / "data", [("s0.png", pages[0]), ("s1.png", pages[1])])
    frames[0].save(root / "images" / "s1.tif", save_all=True, append_images=frames[1:])
    (root / "images" / "s1.png").unlink()
    _fails(root, "s1.tif: the file holds 3 images")
    tifffile.imwrite(root / "masks" / "s0.tif", np.zeros((2, 16, 16), np.uint8))  # a two-page mask
    (root / "masks" / "s0.png").unlink()
    with pytest.raises(DataError, match="s0.tif: the mask file holds 2 images"):
        read_mask(root / "masks" / "s0.tif")


def test_animated_gif_is_refused(tmp_path):
    frames = [Image.fromarray(RNG.integers(0, 255, (16, 16), dtype=np.uint8)) for _ in range(3)]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    with pytest.raises(DataError, match="a.gif: the GIF file holds 3 frames"):
        read_image(tmp_path / "a.gif", 1)
    frames[0].save(tmp_path / "m.gif", save_all=True, append_images=frames[1:])
    with pytest.raises(DataError, match="m.gif: the GIF file holds 3 frames.*as a file of its own"):
        read_mask(tmp_path / "m.gif")


def test_48_bit_rgb_mask_holds_class_indices_in_16_bits(tmp_path):
    classes = RNG.integers(0, 3, (12, 12)).astype(np.uint16)  # 0, 1, 2 in every channel: the low byte
    cv2.imwrite(str(tmp_path / "m.png"), np.repeat(classes[:, :, None], 3, axis=2))
    assert np.array_equal(read_mask(tmp_path / "m.png"), classes)  # not all class 0 (PIL's high byte)
    assert (np.asarray(Image.open(tmp_path / "m.png")) == 0).all()  # what the old decoding saw


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
def test_fifo_in_a_list_is_refused_without_hanging(tmp_path):
    _pairs(tmp_path, [("s0.png", RNG.integers(0, 255, (16, 16), dtype=np.uint8))])
    os.mkfifo(tmp_path / "images" / "pipe.png")
    (tmp_path / "list.csv").write_text("images/s0.png,masks/s0.png\nimages/pipe.png,masks/s0.png\n")
    signal.alarm(30)  # a hang fails the test instead of the suite
    try:
        cfg = load_config(overrides=[f"data.root={tmp_path / 'list.csv'}", "data.format=list"])
        result = fingerprint(cfg.data)
        with pytest.raises(DataError, match="pipe.png: is a named pipe"):
            read_image(tmp_path / "images" / "pipe.png", 1)
    finally:
        signal.alarm(0)
    assert any("pipe.png: is a named pipe (FIFO), not a regular file" in e for e in result.errors)


def test_nan_pixels_are_an_error_or_the_configured_fill(tmp_path):
    values = RNG.random((16, 16)).astype(np.float32)
    values[2, 3] = np.nan
    values[5, 5] = np.inf
    root = _pairs(tmp_path, [("a.tif", values), ("b.tif", RNG.random((16, 16)).astype(np.float32))])
    _fails(root, "a.tif: 2 pixel value(s) are NaN or infinite (the first at row 2, column 3, channel 1); fix the "
                 "file, or set data.nan_fill")
    data = _build(root, "data.nan_fill=-1")
    image = data.train.load([p.image.name for p in data.train.pairs].index("a.tif"))[0]
    assert image[2, 3, 0] == -1 and image[5, 5, 0] == -1 and np.isfinite(image).all()


def test_mixed_pixel_types_and_channel_counts_are_one_error_naming_the_files(tmp_path):
    root = _pairs(tmp_path / "types", [("a.png", RNG.integers(0, 4096, (16, 16)).astype(np.uint16)),
                                       ("b.png", RNG.integers(0, 4096, (16, 16)).astype(np.uint16)),
                                       ("c.png", RNG.integers(0, 255, (16, 16), dtype=np.uint8))])
    _fails(root, "images of different pixel types in one dataset: uint16: 2 image(s) (a.png, b.png); uint8: 1 "
                 "image(s) (c.png). pixelwise does not rescale")
    root = _pairs(tmp_path / "bands", [(f"{n}.tif", RNG.integers(0, 999, (16, 16, c)).astype(np.uint16))
                                       for n, c in (("a", 5), ("b", 5), ("c", 4))])
    _fails(root, "images with different channel counts in one dataset: 5 channel(s): 2 image(s) (a.tif, b.tif); "
                 "4 channel(s): 1 image(s) (c.tif)")
    data = _build(root, "data.bands=[1,2,3,4]")  # the same four bands of each: fine
    assert data.summary.channels == 4 and data.train[0][0].shape[0] == 4
    _fails(root, "the images are not uint8 (data.dtype, the type the model was trained on): uint16: 3 image(s)",
           "data.bands=[1,2,3,4]", "data.dtype=uint8")  # e.g. evaluating an 8-bit run on 16-bit images


def test_float_masks_integer_values_are_noted_fractions_refused(tmp_path):
    root = _pairs(tmp_path, [("a.png", RNG.integers(0, 255, (16, 16), dtype=np.uint8))])
    (root / "masks" / "a.png").unlink()
    tifffile.imwrite(root / "masks" / "a.tif", RNG.integers(0, 2, (16, 16)).astype(np.float32))
    data = _build(root)
    assert any("stored as floating point (e.g. a.tif, float32)" in n for n in data.notes)
    tifffile.imwrite(root / "masks" / "a.tif", np.full((16, 16), 0.5, np.float32))
    _fails(root, "a.tif: mask holds non-integer or NaN values")


def test_integers_beyond_float32_precision_are_refused(tmp_path):
    tifffile.imwrite(tmp_path / "big.tif", np.full((8, 8), 2**24 + 1, np.uint32))
    with pytest.raises(DataError, match="big.tif: uint32 values up to 16,777,217, beyond 2"):
        read_image(tmp_path / "big.tif", ImageSpec())


def test_pixel_type_of_a_run_is_enforced(tmp_path):
    np.save(tmp_path / "a.npy", RNG.random((8, 8, 2)).astype(np.float32))
    with pytest.raises(DataError, match="a.npy: pixels are float32, but the images are uint16"):
        read_image(tmp_path / "a.npy", ImageSpec(dtype="uint16"))
    assert read_image(tmp_path / "a.npy", ImageSpec(dtype="float64")).dtype == np.float32  # floats are one kind


# --- GeoTIFF grids ---------------------------------------------------------------------------------------

def test_geotiff_masks_must_lie_on_their_images_grid(tmp_path):
    for name in ("images", "masks"):
        (tmp_path / name).mkdir()
    for i in range(2):
        mask = regions(RNG, 32)
        write_geotiff(tmp_path / "images" / f"t{i}.tif", RNG.integers(0, 4096, (32, 32, 3)).astype(np.uint16))
        write_geotiff(tmp_path / "masks" / f"t{i}.tif", mask)
    (tmp_path / "classes.yaml").write_text("names: [background, field]\n")
    assert _build(tmp_path).summary.channels == 3  # same grid: fine
    write_geotiff(tmp_path / "masks" / "t1.tif", regions(RNG, 32), origin=(500_100.0, 5_000_000.0))
    _fails(tmp_path, "t1.tif: the mask lies on another grid than its image (t1.tif)")
    write_geotiff(tmp_path / "masks" / "t1.tif", regions(RNG, 32), crs="EPSG:32632")
    _fails(tmp_path, f"t1.tif: the mask's CRS (EPSG:32632) is not its image's ({UTM33N}")


# --- pixelwise check: per-channel report --------------------------------------------------------------

def test_check_reports_type_bits_range_and_percentiles_per_channel(tmp_path):
    images = []
    for i in range(3):
        cube = np.stack([RNG.integers(0, 4096, (16, 16)), RNG.integers(-1000, 1000, (16, 16))], axis=2)
        images.append((f"s{i}.tif", cube.astype(np.int16)))
    root = _pairs(tmp_path, images)
    result = fingerprint(load_config(overrides=[f"data.root={root}", "data.crop_size=16"]).data)
    assert not result.errors, result.errors
    px = result.fingerprint.pixels
    assert px.dtype == "int16" and px.model_input == "float32" and px.files_by_channels == {"2": 3}
    first, second = px.channels
    assert first.bits_used == 12 and 0 <= first.min and first.max <= 4095
    assert second.min < 0 and set(second.percentiles) == {"0.5", "1", "50", "99", "99.5"}
    assert len(px.zscore.clip) == 2 and result.fingerprint.intensity.scale == "the data's own units"
    assert result.to_dict()["fingerprint"]["pixels"]["channels"][0]["bits_used"] == 12  # `check --json`


def test_dataset_batches_non_8_bit_data_as_exact_float32(tmp_path):
    values = RNG.integers(0, 4096, (16, 16)).astype(np.uint16)
    root = _pairs(tmp_path, [("a.png", values)])
    data = _build(root, "augment.preset=none")
    ds = SegmentationDataset(data.train.pairs, data.summary.table, data.summary.spec)
    image, _ = ds[0]
    assert image.dtype.is_floating_point and np.array_equal(image[0].numpy(), values.astype(np.float32))
