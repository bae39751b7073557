"""``data.io.read_image_bytes``: an image in memory (an upload) decoded by the rules of a file, named as given."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixelwise.data import io as pio
from pixelwise.errors import DataError


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _tiff(array: np.ndarray) -> bytes:
    import tifffile

    buf = io.BytesIO()  # channels last, one page
    tifffile.imwrite(buf, array, photometric="minisblack", planarconfig="contig" if array.ndim == 3 else None)
    return buf.getvalue()


CASES = {
    "empty": (b"", "the image file is empty (0 bytes)"),
    "text": (b"hello" * 20, "cannot be read as an image"),
    "truncated": (_png(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))[:300],
                  "image file is truncated"),
    "truncated TIFF": (_tiff(np.ones((64, 64, 3), np.uint8))[:200], "cannot be read as a TIFF image"),
}


@pytest.mark.parametrize("reader", ["memfd", "folder"])
def test_uploads_meet_the_rules_of_files(tmp_path, monkeypatch, reader):
    if reader == "folder":  # the path taken where memfd does not exist (macOS, Windows)
        monkeypatch.delattr(os, "memfd_create", raising=False)
    rgba = np.random.default_rng(1).integers(0, 255, (9, 11, 4), dtype=np.uint8)
    (tmp_path / "a.png").write_bytes(_png(rgba))
    assert (pio.read_image_bytes(_png(rgba), 3, "a.png") == pio.read_image(tmp_path / "a.png", 3)).all()
    assert pio.read_image_bytes(_png(rgba), 1, "a.png").shape == (9, 11, 1)
    for name, (data, phrase) in CASES.items():
        file = tmp_path / f"{name}{pio.sniff_suffix(data) or '.png'}"
        file.write_bytes(data)
        with pytest.raises(DataError) as from_file:
            pio.read_image(file, 3)
        with pytest.raises(DataError) as from_memory:
            pio.read_image_bytes(data, 3, file.name)
        assert phrase in str(from_memory.value)
        assert str(from_memory.value) == str(from_file.value).replace(str(file), file.name)
    pio.set_max_pixels(50)
    try:
        with pytest.raises(DataError, match=r"up.png: the image would decode to 11x9 = 99 pixels, over the limit"):
            pio.read_image_bytes(_png(rgba), 3, "up.png")
    finally:
        pio.set_max_pixels(pio.DEFAULT_MAX_PIXELS)
    deep = np.arange(99, dtype=np.uint16).reshape(9, 11) * 600
    assert (pio.read_image_bytes(_tiff(deep), None, "scan") == deep[:, :, None]).all()  # a TIFF, read by tifffile
    floats = np.linspace(-1, 1, 9 * 11 * 5, dtype=np.float32).reshape(9, 11, 5)
    assert (pio.read_image_bytes(_tiff(floats), 5) == floats).all()
    assert (pio.read_image_bytes(_tiff(floats), pio.ImageSpec(bands=(5, 1))) == floats[:, :, [4, 0]]).all()
    with pytest.raises(pio.DtypeMismatch, match=r"^grey.png: pixels are uint16, but the images are uint8"):
        pio.read_image_bytes(_png(deep), pio.ImageSpec(dtype="uint8"), "grey.png")  # the kind of error is kept
    if Path("/proc/self/fd").is_dir():
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(20):
            pio.read_image_bytes(_png(rgba), 3)
            with pytest.raises(DataError):
                pio.read_image_bytes(b"x", 3)
        assert len(os.listdir("/proc/self/fd")) <= before  # no descriptor left per upload
