"""Files read as they are, whatever their name says: Netpbm samples as stored, a TIFF under another name, a raster's
nodata pixels and GDAL's internal mask, arrays with no pixels, and a dataset root that is neither a folder nor a
file. Each case was once read wrongly or failed inside a library."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tifffile
from scientific_data import rasterio, write_geotiff

from pixelwise.config_sections import DataConfig
from pixelwise.data import io
from pixelwise.data.checks import scan_pairs
from pixelwise.data.formats import discover
from pixelwise.data.io import Pair
from pixelwise.data.transforms import train_transform
from pixelwise.errors import ConfigError, DataError


def _pnm(path, magic: bytes, samples: np.ndarray, maxval: int, comment: bool = False) -> None:
    """A Netpbm file as its specification writes it: magic, width, height, maxval, then the samples (binary:
    one byte each below 256, else two, most significant first; plain: decimal numbers)."""
    h, w = samples.shape[:2]
    head = magic + (b"\n# written by a test\n" if comment else b"\n") + b"%d %d\n%d\n" % (w, h, maxval)
    if magic in (b"P5", b"P6"):
        body = samples.astype(np.uint8 if maxval < 256 else ">u2").tobytes()
    else:
        body = " ".join(map(str, samples.ravel().tolist())).encode() + b"\n"
    path.write_bytes(head + body)


@pytest.mark.parametrize("magic", [b"P5", b"P2"])
def test_a_pgm_mask_with_a_small_maxval_keeps_its_class_indices(tmp_path, magic):
    # PIL scaled maxval 10 to 0-255: class 1 became 26, class 10 became 255 (void)
    classes = (np.arange(24).reshape(4, 6) % 11).astype(np.uint8)
    _pnm(tmp_path / "m.pgm", magic, classes, 10, comment=True)
    assert np.array_equal(io.read_mask(tmp_path / "m.pgm"), classes)
    assert np.array_equal(io.read_image(tmp_path / "m.pgm", None)[:, :, 0], classes)


@pytest.mark.parametrize("maxval", [65535, 4095])
def test_deep_ppm_keeps_every_bit(tmp_path, maxval):
    # PIL cut a 16-bit PPM to 8 bits, and stretched a 12-bit one
    rgb = (np.arange(4 * 6 * 3).reshape(4, 6, 3) * 50 % (maxval + 1)).astype(np.uint16)
    _pnm(tmp_path / "c.ppm", b"P6", rgb, maxval)
    out = io.read_image(tmp_path / "c.ppm", None)
    assert out.dtype == np.uint16 and np.array_equal(out, rgb)
    assert io.probe(tmp_path / "c.ppm").dtype == "uint16"
    with open(tmp_path / "c.ppm", "rb") as f:  # the same bytes as an upload
        assert np.array_equal(io.read_image_bytes(f.read(), None, "up.ppm"), rgb)


def test_broken_netpbm_files_are_named(tmp_path):
    _pnm(tmp_path / "over.pgm", b"P5", np.array([[0, 9]], np.uint8), 5)
    (tmp_path / "short.ppm").write_bytes(b"P6\n4 4\n255\n" + bytes(10))
    (tmp_path / "head.pgm").write_bytes(b"P5\n4 x\n255\n")
    (tmp_path / "huge.pgm").write_bytes(b"P5\n100000 100000\n255\n" + bytes(16))
    for name, message in [("over.pgm", "the sample 9, above its maxval 5"), ("short.ppm", "cut short"),
                          ("head.pgm", "header is broken"), ("huge.pgm", "over the limit")]:
        with pytest.raises(DataError, match=message):
            io.read_image(tmp_path / name, None)


def test_a_16_bit_tiff_named_png_is_read_as_a_tiff(tmp_path):
    rgb = (np.arange(20 * 30 * 3).reshape(20, 30, 3) * 17).astype(np.uint16)
    tifffile.imwrite(tmp_path / "scan.png", rgb, photometric="rgb")  # PIL kept the high byte of each sample
    out = io.read_image(tmp_path / "scan.png", None)
    assert out.dtype == np.uint16 and np.array_equal(out, rgb)


def test_a_float_geotiffs_nodata_is_nan_and_an_integer_ones_is_noted(tmp_path):
    rasterio()
    values = np.linspace(100, 500, 32 * 32, dtype=np.float32).reshape(32, 32)
    values[:, :8] = -9999  # outside the scene
    write_geotiff(tmp_path / "f.tif", values)
    with rasterio().open(tmp_path / "f.tif", "r+") as ds:
        ds.nodata = -9999
    with pytest.raises(DataError, match="256 pixel value.*NaN.*nan_fill.*declared nodata pixels count as NaN"):
        io.read_image(tmp_path / "f.tif", None)
    filled = io.read_image(tmp_path / "f.tif", io.ImageSpec(nan_fill=0.0))
    assert (filled[:, :8] == 0).all() and filled[:, 8:].min() >= 100

    counts = (np.arange(32 * 32).reshape(32, 32) % 900 + 1).astype(np.uint16)
    counts[:4] = 0
    write_geotiff(tmp_path / "i.tif", counts)
    with rasterio().open(tmp_path / "i.tif", "r+") as ds:
        ds.nodata = 0
    write_geotiff(tmp_path / "m.tif", np.zeros((32, 32), np.uint8))
    assert np.array_equal(io.read_image(tmp_path / "i.tif", None)[:, :, 0], counts)  # integers as stored
    scan = scan_pairs([Pair(tmp_path / "i.tif", tmp_path / "m.tif")], None)
    assert any("hold pixels equal to their declared nodata value (e.g. i.tif: 128 pixels)" in n for n in scan.notes)


def test_gdals_internal_mask_is_not_a_second_image(tmp_path):
    # GDAL_TIFF_INTERNAL_MASK: the image, then a 1-bit page marked as a mask (NewSubfileType 4), 0 where no data
    rio = rasterio()
    image = (np.arange(3 * 16 * 20).reshape(3, 16, 20) % 4000).astype(np.float32)
    valid = np.full((16, 20), 255, np.uint8)
    valid[:, :5] = 0
    with rio.Env(GDAL_TIFF_INTERNAL_MASK=True), rio.open(tmp_path / "masked.tif", "w", driver="GTiff", height=16,
                                                         width=20, count=3, dtype="float32") as ds:
        ds.write(image)
        ds.write_mask(valid)
    with pytest.raises(DataError, match="240 pixel value.*NaN"):  # the masked-out pixels have no data
        io.read_image(tmp_path / "masked.tif", None)
    out = io.read_image(tmp_path / "masked.tif", io.ImageSpec(nan_fill=-1.0))
    assert (out[:, :5] == -1).all() and np.array_equal(out[:, 5:], image.transpose(1, 2, 0)[:, 5:])


def test_separate_tiff_images_of_one_shape_are_not_called_different(tmp_path):
    for _ in range(2):
        tifffile.imwrite(tmp_path / "two.tif", np.zeros((8, 9), np.uint8), append=True)  # a series each
    with pytest.raises(DataError, match=r"holds 2 separate images \(8x9, 8x9\)"):
        io.read_image(tmp_path / "two.tif", None)


def test_an_array_with_no_pixels_is_refused_by_name(tmp_path):
    np.save(tmp_path / "e.npy", np.zeros((0, 64), np.float32))
    np.save(tmp_path / "m.npy", np.zeros((0, 64), np.uint8))
    scan = scan_pairs([Pair(tmp_path / "e.npy", tmp_path / "m.npy")], None)
    assert any("e.npy: array of shape (0, 64) holds no pixels" in p for p in scan.problems)


def test_a_dataset_root_that_is_a_pipe_is_refused(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(DataError, match="neither a folder nor a regular file"):
        discover(DataConfig(root=tmp_path / "pipe"))


def test_listed_transforms_that_clip_to_0_1_are_refused_for_deep_data():
    ranges = [(0.0, 4000.0)]
    for name in ("RandomBrightnessContrast", "GaussNoise", "GaussianBlur"):
        with pytest.raises(ConfigError, match=f"augment.transforms \\({name}\\): it clips images to 0-1"):
            train_transform((16, 16), 255, 1, specs=[{"name": name, "p": 0.2}], seed=0, ranges=ranges)
    kept = train_transform((16, 16), 255, 1, specs=[{"name": "HorizontalFlip"}, {"name": "RandomGamma"}], seed=0,
                           ranges=ranges)
    image = np.linspace(0, 4000, 256, dtype=np.float32).reshape(16, 16, 1)
    assert kept(image=image, mask=np.zeros((16, 16), np.uint8))["image"].max() > 1
    train_transform((16, 16), 255, 1, specs=[{"name": "GaussNoise"}], seed=0, ranges=[(0.0, 1.0)])  # 0-1 data
    train_transform((16, 16), 255, 3, specs=[{"name": "GaussNoise"}], seed=0)  # 8-bit data


def test_postscript_is_not_an_image_and_never_reaches_ghostscript(tmp_path, monkeypatch):
    # PIL's EPS plugin runs Ghostscript on the file: an upload's PostScript, with no time limit
    import subprocess

    def no_ghostscript(*args, **kwargs):
        raise AssertionError(f"a program was started: {args[0]}")

    monkeypatch.setattr(subprocess, "check_call", no_ghostscript)
    monkeypatch.setattr(subprocess, "Popen", no_ghostscript)
    eps = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n{ } loop\n%%EOF\n")
    (tmp_path / "a.eps").write_bytes(eps)
    for read in (lambda: io.read_image(tmp_path / "a.eps", None), lambda: io.read_image_bytes(eps, None, "up")):
        with pytest.raises(DataError, match="cannot identify"):
            read()


def test_a_tiff_of_height_0_is_refused_by_name(tmp_path):
    from PIL import Image

    Image.new("RGB", (20, 24)).save(tmp_path / "z.tif")
    data = bytearray((tmp_path / "z.tif").read_bytes())
    with tifffile.TiffFile(tmp_path / "z.tif") as tif:  # ImageLength (tag 257) set to 0, as a broken writer would
        tag = tif.pages[0].tags["ImageLength"]
        width = 2 if int(tag.dtype) == 3 else 4  # SHORT or LONG
    data[tag.valueoffset : tag.valueoffset + width] = bytes(width)
    (tmp_path / "z.tif").write_bytes(bytes(data))
    with pytest.raises(DataError, match="z.tif: the TIFF image has a size of 0"):
        io.read_image(tmp_path / "z.tif", None)
    with pytest.raises(DataError, match="has a size of 0"):
        io.read_image_bytes(bytes(data), None, "up")


def test_streamed_prediction_reads_nodata_as_the_whole_file_readers_do(tmp_path):
    # a raster predicted window by window meets its nodata pixels as NaN, as training read them
    from pixelwise.inference.geo import WindowReader

    values = np.linspace(100, 500, 32 * 32, dtype=np.float32).reshape(32, 32)
    values[:, :8] = -9999
    write_geotiff(tmp_path / "f.tif", values)
    with rasterio().open(tmp_path / "f.tif", "r+") as ds:
        ds.nodata = -9999
    with rasterio().open(tmp_path / "f.tif") as ds:
        window = WindowReader(ds, tmp_path / "f.tif", io.ImageSpec(nan_fill=0.0))[0:16, 0:16]
        assert (window[:, :8] == 0).all() and window[:, 8:].min() >= 100
        whole = io.read_image(tmp_path / "f.tif", io.ImageSpec(nan_fill=0.0))
        assert np.array_equal(window, whole[:16, :16])
        with pytest.raises(DataError, match="NaN.*in the window at row 0, column 0"):
            WindowReader(ds, tmp_path / "f.tif", io.ImageSpec())[0:16, 0:16]


def test_raster_formats_pillow_reads_stay_readable(tmp_path):
    # the allow-list that keeps EPS away must not drop what users have: AVIF and QOI among them
    from PIL import Image

    pixels = np.arange(8 * 9 * 3, dtype=np.uint8).reshape(8, 9, 3)
    for suffix in (".png", ".bmp", ".webp", ".gif", ".tga", ".qoi", ".avif"):
        Image.fromarray(pixels).save(tmp_path / f"a{suffix}", **({"lossless": True} if suffix == ".webp" else {}))
        assert io.read_image(tmp_path / f"a{suffix}", None).shape == (8, 9, 3), suffix
