"""The data's statistics (z-score mean and std, the 0.5-99.5th percentile clip, what `pixelwise check` shows) come
from valid pixels only: not NaN (before data.nan_fill), not a raster's declared nodata value or outside GDAL's
internal mask, not void in the masks. Satellite tiles with a nodata border at 0 were normalised with mean ~1208 and
std ~982 instead of 2006 and 60, squeezing the classes' 160-level difference into a sixth of a standard deviation.
No training here: ``resolve_config`` writes exactly what a run's config.yaml gets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from scientific_data import rasterio, regions, write_geotiff

from pixelwise.config import load_config
from pixelwise.data.build import build_datasets
from pixelwise.data.checks import scan_pairs
from pixelwise.data.dataset import Pair
from pixelwise.data.fingerprint import fingerprint
from pixelwise.data.io import read_image
from pixelwise.data.normalization import sample_pixels, samples_per_image, zscore
from pixelwise.engine.setup import resolve_config
from pixelwise.errors import DataError

SIZE, CUT = 48, 19  # the left 40% of each tile has no data
BASE = ["data.crop_size=32", "data.num_workers=0", "model.arch=seed_cnn"]


def _config(root: Path, *overrides: str):
    return load_config(overrides=[f"data.root={root}", *BASE, *overrides])


def _as_trained(root: Path, *overrides: str) -> tuple[dict, dict]:
    """(the model section a run's config.yaml gets, `pixelwise check`'s fingerprint) for the same data."""
    cfg = _config(root, *overrides)
    run = resolve_config(cfg, build_datasets(cfg.data, cfg.augment)).model
    result = fingerprint(cfg.data)
    assert not result.errors, result.errors
    return run.model_dump(), result.fingerprint.to_dict()


def _tiles(root: Path, n: int = 6, void: bool = True, seed: int = 0) -> Path:
    """5-band 12-bit uint16 GeoTIFFs, nodata=0 declared and held by every band left of CUT, band 4 2140 on the
    class and 1980 off it; masks as GeoTIFFs on the same grid, void (255) over the nodata when ``void``."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        mask = regions(rng, SIZE)
        img = rng.integers(1900, 2100, (SIZE, SIZE, 5)).astype(np.uint16)
        img[:, :, 3] = np.where(mask == 1, 2140, 1980) + rng.integers(-10, 10, (SIZE, SIZE))
        img[:, :CUT] = 0
        if void:
            mask[:, :CUT] = 255
        write_geotiff(root / "images" / f"t{i}.tif", img)
        with rasterio().open(root / "images" / f"t{i}.tif", "r+") as ds:
            ds.nodata = 0
        write_geotiff(root / "masks" / f"t{i}.tif", mask)
    (root / "classes.yaml").write_text("names: [background, field]\n" + ("ignore_index: 255\n" if void else ""))
    return root


def test_integer_nodata_and_void_masks_stay_out_of_the_statistics(tmp_path):
    rasterio()
    model, fp = _as_trained(_tiles(tmp_path / "tiles"))
    assert model["normalization"] == "zscore"
    low, high = model["clip"][3]
    assert 1960 <= low <= 1975 and 2140 <= high <= 2150, model["clip"]  # was [0, 2148]
    assert 1990 < model["mean"][3] < 2030 and 50 < model["std"][3] < 75, (model["mean"], model["std"])  # ~1208, ~982
    assert all(c[0] >= 1900 for c in model["clip"])
    # `pixelwise check` shows the statistics training uses, and channel figures of the valid pixels
    px = fp["pixels"]
    assert px["zscore"] == {"mean": model["mean"], "std": model["std"], "clip": [list(c) for c in model["clip"]]}
    band4 = px["channels"][3]
    assert band4["min"] >= 1960 and band4["percentiles"]["0.5"] >= 1960 and band4["bits_used"] == 12
    assert 1990 < band4["mean"] < 2030 and 1990 < fp["intensity"]["mean"][3] < 2030


def test_declared_nodata_counts_without_void_masks_band_by_band(tmp_path):
    # the masks say nothing of the border (class 0 there): the declared value alone keeps it out
    rasterio()
    root = _tiles(tmp_path / "tiles", void=False)
    model, _ = _as_trained(root)
    assert all(c[0] >= 1900 for c in model["clip"]), model["clip"]
    # GDAL's band semantics: a value equal to nodata in one band leaves the pixel's other bands valid
    img = read_image(root / "images" / "t0.tif", None).copy()
    img[:, :CUT] = 2000
    img[:, :CUT, 4] = 0  # band 5 alone has no data on the left
    write_geotiff(root / "images" / "t0.tif", img)
    with rasterio().open(root / "images" / "t0.tif", "r+") as ds:
        ds.nodata = 0
    scan = scan_pairs([Pair(root / "images" / "t0.tif", root / "masks" / "t0.tif")], None)
    info = scan.infos[0]
    assert info.valid.tolist() == [SIZE * SIZE] * 4 + [SIZE * (SIZE - CUT)]
    assert np.isnan(info.samples[:, 4]).any() and not np.isnan(info.samples[:, :4]).any()
    assert info.low[4] >= 1900 and info.low[0] >= 1900


def test_gdals_internal_mask_keeps_integer_pixels_out(tmp_path):
    rio = rasterio()
    rng = np.random.default_rng(3)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for i in range(2):
        img = rng.integers(1000, 1200, (2, SIZE, SIZE)).astype(np.uint16)
        img[:, :, :CUT] = 60000  # what the file holds where the internal mask says there is no data
        inside = np.full((SIZE, SIZE), 255, np.uint8)
        inside[:, :CUT] = 0
        with rio.Env(GDAL_TIFF_INTERNAL_MASK=True), rio.open(tmp_path / "images" / f"m{i}.tif", "w", driver="GTiff",
                                                             height=SIZE, width=SIZE, count=2, dtype="uint16") as ds:
            ds.write(img)
            ds.write_mask(inside)
        Image.fromarray(regions(rng, SIZE)).save(tmp_path / "masks" / f"m{i}.png")
    (tmp_path / "classes.yaml").write_text("names: [background, thing]\n")
    model, fp = _as_trained(tmp_path)
    assert all(c[1] <= 1200 for c in model["clip"]) and fp["pixels"]["channels"][0]["max"] < 1200, model["clip"]


def test_inferred_void_is_left_out_and_a_binary_255_is_not(tmp_path):
    # no classes.yaml: 255 is void when the masks hold other values too (then also in a mask of only 0 and 255),
    # and a class when they hold 0 and 255 only
    rng = np.random.default_rng(5)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for i, values in enumerate([(0, 1, 2), (0, 1, 2), (0, 2, 1), (0, 0, 0)]):
        img = rng.integers(100, 200, (SIZE, SIZE)).astype(np.uint16)
        mask = np.full((SIZE, SIZE), values[0], np.uint8)
        mask[10:20], mask[30:40] = values[1], values[2]
        mask[:, :CUT] = 255
        img[:, :CUT] = 9000  # nothing declares it: only the void masks keep it out
        tifffile.imwrite(tmp_path / "images" / f"s{i}.tif", img)
        Image.fromarray(mask).save(tmp_path / "masks" / f"s{i}.png")
    pairs = [Pair(tmp_path / "images" / f"s{i}.tif", tmp_path / "masks" / f"s{i}.png") for i in range(4)]
    scan = scan_pairs(pairs, None)
    assert scan.table.ignore_index == 255
    assert all(i.high[0] < 200 and i.valid[0] == SIZE * (SIZE - CUT) for i in scan.infos)  # s3 too: 0 and 255
    binary = scan_pairs(pairs[3:], None)  # masks of 0 and 255 only: 255 is a class, its pixels count
    assert binary.table.ignore_index is None and binary.infos[0].high[0] == 9000


def test_float_nodata_counts_as_nan_and_the_nan_fill_stays_out(tmp_path):
    rio = rasterio()
    rng = np.random.default_rng(1)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for i in range(4):
        mask = regions(rng, SIZE)
        img = rng.normal(0.40, 0.01, (SIZE, SIZE, 3)).astype(np.float32)
        img[:, :, 1] = np.where(mask == 1, 0.44, 0.40) + rng.normal(0, 0.005, (SIZE, SIZE))
        img[:, :CUT] = -9999
        img[5, 30, 0] = np.nan  # a NaN of the file's own, in one band
        write_geotiff(tmp_path / "images" / f"f{i}.tif", img)
        with rio.open(tmp_path / "images" / f"f{i}.tif", "r+") as ds:
            ds.nodata = -9999
        write_geotiff(tmp_path / "masks" / f"f{i}.tif", mask)  # not void: the NaN alone keeps them out
    (tmp_path / "classes.yaml").write_text("names: [background, field]\n")
    model, fp = _as_trained(tmp_path, "data.nan_fill=0")
    assert all(0.3 < c[0] < 0.4 for c in model["clip"]), model["clip"]  # was [0, 0.424]
    assert all(0.39 < m < 0.42 for m in model["mean"]) and all(s < 0.03 for s in model["std"]), model
    assert fp["pixels"]["channels"][0]["min"] > 0.3 and fp["intensity"]["mean"][0] > 0.39
    assert not any("integer image" in n for n in fingerprint(_config(tmp_path, "data.nan_fill=0").data).notes)


def test_a_channel_without_any_valid_pixel_is_an_error_naming_it(tmp_path):
    images = tmp_path / "images"
    images.mkdir(parents=True)
    (tmp_path / "masks").mkdir()
    rng = np.random.default_rng(2)
    for i in range(2):
        img = rng.random((16, 16, 3)).astype(np.float32)
        img[:, :, 1] = np.nan
        tifffile.imwrite(images / f"n{i}.tif", img, photometric="minisblack", planarconfig="contig")
        Image.fromarray(regions(rng, 16)).save(tmp_path / "masks" / f"n{i}.png")
    (tmp_path / "classes.yaml").write_text("names: [background, thing]\n")
    cfg = _config(tmp_path, "data.nan_fill=0", "data.crop_size=16")
    with pytest.raises(DataError, match="channel 2 has no valid pixel"):
        build_datasets(cfg.data, cfg.augment)
    result = fingerprint(cfg.data)
    assert any("channel 2 has no valid pixel" in e for e in result.errors), result.errors
    with pytest.raises(DataError, match="channels 1, 2, 3 have no valid pixel"):
        zscore(np.zeros((0, 3), np.uint16))


def test_sampling_draws_valid_pixels_only_and_stays_bounded():
    image = np.arange(200 * 300 * 2, dtype=np.uint16).reshape(200, 300, 2)
    valid = np.zeros((200, 300, 2), bool)
    valid[50:60, 100:290] = True
    valid[55, 100:200, 1] = False
    drawn = sample_pixels(image, 500, 3, valid)
    assert drawn.shape == (500, 2) and drawn.dtype == np.float32
    rows, cols = np.divmod(drawn[:, 0].astype(np.int64) // 2, 300)
    assert ((rows >= 50) & (rows < 60) & (cols >= 100) & (cols < 290)).all()
    hole = (rows == 55) & (cols < 200)
    assert np.isnan(drawn[hole, 1]).all() and not np.isnan(drawn[~hole, 1]).any()
    few = np.zeros((200, 300, 1), bool)
    few[7, 9] = few[150, 3] = True  # fewer valid pixels than asked for: all of them, once
    assert sorted(sample_pixels(image, 500, 3, few)[:, 0].tolist()) == [image[7, 9, 0], image[150, 3, 0]]


def test_8_bit_data_keeps_encoder_normalisation_and_its_samples(tmp_path):
    rng = np.random.default_rng(4)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(tmp_path / "images" / f"c{i}.png")
        Image.fromarray(regions(rng, SIZE)).save(tmp_path / "masks" / f"c{i}.png")
    (tmp_path / "classes.yaml").write_text("names: [background, thing]\nignore_index: 255\n")
    model, fp = _as_trained(tmp_path)
    assert model["normalization"] == "encoder" and model["clip"] is None
    assert model["mean"] == pytest.approx([0.485, 0.456, 0.406]) and fp["pixels"]["dtype"] == "uint8"
    # no nodata, no void: each image's sample is what it always was, in its own type
    pairs = [Pair(tmp_path / "images" / f"c{i}.png", tmp_path / "masks" / f"c{i}.png") for i in range(4)]
    scan = scan_pairs(pairs, None)
    for k, info in enumerate(scan.infos):
        expected = sample_pixels(read_image(pairs[k].image, 3), samples_per_image(4), k)
        assert info.samples.dtype == np.uint8 and np.array_equal(info.samples, expected)
