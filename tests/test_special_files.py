"""Files that are not what they first seem.

Special files (a named pipe, a socket, a device) among a folder dataset's images or masks are an error naming the
file, as in a list of pairs: never dropped as "masks without an image", and never opened (reading a FIFO blocks
until a writer comes, so those tests run under an alarm).

A TIFF written with plain ``tifffile.imwrite(path, HxWxC array)`` (C not 3 or 4) is stored as one page per row
(WxC) with the array's shape in tifffile's "shaped" description: pixelwise reads it as HxWxC, as tifffile.imread
returns it, in training, check and prediction, where it once said "64 images" and its hint led to a 5x64 image.
"""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from pixelwise.config import DataConfig, load_config
from pixelwise.data import raster
from pixelwise.data.fingerprint import fingerprint
from pixelwise.data.formats import discover
from pixelwise.data.io import ImageSpec, probe, read_image
from pixelwise.errors import DataError, PixelwiseError

fifos = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")


def _folders(root: Path, n: int = 3) -> Path:
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    for i in range(n):
        Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(root / "images" / f"{i}.png")
        Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / "masks" / f"{i}.png")
    return root


@pytest.fixture
def no_hang():
    signal.alarm(30)  # a read of the FIFO would block: the test fails instead of the suite hanging
    yield
    signal.alarm(0)


def _refused(root: Path) -> str:
    with pytest.raises(DataError) as e:
        discover(DataConfig(root=root))
    return " ".join(str(e.value).split())


@fifos
@pytest.mark.usefixtures("no_hang")
def test_a_fifo_among_the_images_is_named_not_dropped(tmp_path):
    root = _folders(tmp_path / "data")
    (root / "images" / "0.png").unlink()
    os.mkfifo(root / "images" / "0.png")  # its mask stays: once reported only as a mask without an image
    message = _refused(root)
    assert f"{root / 'images' / '0.png'}: is a named pipe (FIFO), not a regular file; pixelwise reads images only " \
           "from regular files (reading this one could block forever)" in message
    assert "images: image files that are not regular files" in message


@fifos
@pytest.mark.usefixtures("no_hang")
def test_a_fifo_among_the_masks_of_a_split_is_named(tmp_path):
    root = tmp_path / "data"
    _folders(root / "train")
    _folders(root / "val")
    (root / "val" / "masks" / "1.png").unlink()
    os.mkfifo(root / "val" / "masks" / "1.png")
    assert f"{root / 'val' / 'masks' / '1.png'}: is a named pipe (FIFO), not a regular file; pixelwise reads masks " \
           "only" in _refused(root)


@fifos
@pytest.mark.usefixtures("no_hang")
def test_a_socket_and_a_link_to_a_device_or_a_fifo_are_named(tmp_path):
    root = _folders(tmp_path / "d")
    os.mkfifo(tmp_path / "pipe")
    os.symlink(tmp_path / "pipe", root / "images" / "linked.png")  # a link that leads to a FIFO, not a broken link
    os.symlink("/dev/null", root / "images" / "null.png")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(root / "masks" / "s.png"))
        message = _refused(root)
    finally:
        sock.close()
    assert f"{root / 'images' / 'linked.png'}: is a named pipe (FIFO), not a regular file" in message
    assert f"{root / 'images' / 'null.png'}: is a character device, not a regular file" in message
    assert "broken or a loop" not in message
    (root / "images" / "linked.png").unlink()
    (root / "images" / "null.png").unlink()
    assert f"{root / 'masks' / 's.png'}: is a socket, not a regular file; pixelwise reads masks" in _refused(root)


@fifos
@pytest.mark.usefixtures("no_hang")
def test_check_fails_on_a_fifo_and_says_which(tmp_path):
    from typer.testing import CliRunner

    from pixelwise.cli import app

    root = _folders(tmp_path / "data", n=4)
    (root / "images" / "0.png").unlink()
    os.mkfifo(root / "images" / "0.png")
    result = CliRunner().invoke(app, ["check", str(root)])
    said = " ".join((result.output + str(result.exception or "")).split())
    assert result.exit_code != 0 and isinstance(result.exception, (PixelwiseError, SystemExit)), said
    assert "0.png: is a named pipe (FIFO), not a regular file" in said and "without an image" not in said


# --- TIFFs as tifffile.imwrite writes an HxWxC array -----------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_a_tifffile_written_hxwx5_array_reads_as_tifffile_reads_it(tmp_path, dtype):
    cube = (np.random.default_rng(0).random((24, 20, 5)) * 3000).astype(dtype)
    path = tmp_path / "five.tif"
    tifffile.imwrite(path, cube)  # no photometric or planarconfig: 24 pages of 20x5 and {"shape": [24, 20, 5]}
    with tifffile.TiffFile(path) as tif:
        assert tif.series[0].axes == "QYX" and len(tif.pages) == 24 and tif.shaped_metadata[0]["shape"] == [24, 20, 5]
    for spec in (ImageSpec(), ImageSpec(pages_as_channels=True)):  # one image: the pages are its rows
        header = probe(path, spec)
        assert (header.height, header.width, header.channels, header.pages) == (24, 20, 5, 1)
        got = read_image(path, spec)
        assert got.dtype == dtype and np.array_equal(got, cube) and np.array_equal(got, tifffile.imread(path))
    assert np.array_equal(read_image(path, ImageSpec(bands=(4, 2))), cube[:, :, [3, 1]])
    assert raster.tiff_header(path, "image").rows_as_pages  # GDAL would read the first row only
    pytest.importorskip("rasterio")
    with pytest.raises(DataError, match="five.tif: an HxWxC array that tifffile stored as one page per row"):
        with raster.open_raster(path):
            pass


def test_a_folder_of_tifffile_written_multiband_images_checks_clean(tmp_path):
    rng = np.random.default_rng(1)
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
    for i in range(3):
        tifffile.imwrite(tmp_path / "images" / f"{i}.tif", rng.integers(0, 3000, (32, 32, 5)).astype(np.uint16))
        Image.fromarray(rng.integers(0, 2, (32, 32), dtype=np.uint8)).save(tmp_path / "masks" / f"{i}.png")
    (tmp_path / "classes.yaml").write_text("names: [background, thing]\n")
    for extra in ([], ["data.pages_as_channels=true"]):
        result = fingerprint(load_config(overrides=[f"data.root={tmp_path}", *extra]).data)
        assert result.errors == [] and result.fingerprint.channels == 5, result.errors
        assert result.fingerprint.pixels.dtype == "uint16"


def test_channels_first_and_stacked_tifffile_arrays_stay_pages(tmp_path):
    rng = np.random.default_rng(2)
    chw, stack = rng.integers(0, 3000, (5, 24, 20)).astype(np.uint16), rng.integers(0, 9, (3, 24, 20, 5)).astype(
        np.uint16)
    tifffile.imwrite(tmp_path / "chw.tif", chw)  # 5 pages of 24x20: the bands, one per page
    tifffile.imwrite(tmp_path / "stack.tif", stack)  # three HxWx5 images in one file
    with pytest.raises(DataError, match=r"chw.tif: the file holds 5 images .*data.pages_as_channels: true"):
        read_image(tmp_path / "chw.tif", ImageSpec())
    assert np.array_equal(read_image(tmp_path / "chw.tif", ImageSpec(pages_as_channels=True)), chw.transpose(1, 2, 0))
    with pytest.raises(DataError, match="stack.tif: the file holds 3 images"):
        read_image(tmp_path / "stack.tif", ImageSpec())
    got = read_image(tmp_path / "stack.tif", ImageSpec(pages_as_channels=True))  # 24x20, image-major channels
    assert np.array_equal(got, stack.transpose(1, 2, 0, 3).reshape(24, 20, 15))
    for planar in ("contig", "separate"):  # written with a planar configuration: one page, as before
        cube = rng.integers(0, 3000, (24, 20, 5)).astype(np.uint16)
        stored = cube if planar == "contig" else cube.transpose(2, 0, 1)
        tifffile.imwrite(tmp_path / f"{planar}.tif", stored, photometric="minisblack", planarconfig=planar)
        assert not raster.tiff_header(tmp_path / f"{planar}.tif", "image").rows_as_pages
        assert np.array_equal(read_image(tmp_path / f"{planar}.tif", ImageSpec()), cube)


@fifos
@pytest.mark.usefixtures("no_hang")
def test_predict_reports_a_fifo_in_its_input_folder_and_predicts_the_rest(tmp_path):
    from pixelwise.data.classes import ClassTable
    from pixelwise.inference.files import predict_files
    from pixelwise.inference.predictor import Segmenter

    def backend(batch):
        return np.stack([np.full(batch.shape[2:], 0.6), np.full(batch.shape[2:], 0.4)])[None].repeat(len(batch), 0)

    folder = _folders(tmp_path / "data") / "images"
    os.mkfifo(folder / "pipe.png")
    seg = Segmenter(backend, ClassTable(names=["a", "b"]), 3, (16, 16), ImageSpec())
    report = predict_files(seg, [folder], tmp_path / "out")
    assert len(report.failed) == 1 and "pipe.png: is a named pipe (FIFO)" in report.failed[0]
    assert {p.name for p in report.written} == {"0.png", "1.png", "2.png", "0_overlay.jpg", "1_overlay.jpg",
                                                "2_overlay.jpg"}
