"""Netpbm gray and colour maps (PGM, PPM: P2, P3, P5, P6) read with every sample as stored.

PIL scales a Netpbm file's samples to 0-255 unless its maxval is 255: a PGM mask of class indices 0..10 saved with
maxval 10 came back as 0, 26, 51, ...; a 16-bit PPM (maxval 65535) and a 12-bit one (4095) came back cut to 8 bits.
Here samples keep their stored values: uint8 when maxval is below 256, uint16 (big-endian in the file, as the format
says) otherwise; a sample above maxval is an error. Bitmaps (PBM: P1, P4) and PAM/PFM stay with PIL.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pixelwise.errors import DataError

MAGICS = {b"P2": (1, False), b"P3": (3, False), b"P5": (1, True), b"P6": (3, True)}  # channels, binary
_SPACE = b" \t\r\n\v\f"


def is_pnm(path: Path) -> bool:
    """Whether the file starts as a PGM or PPM (from its first two bytes; the suffix is not trusted)."""
    with open(path, "rb") as f:
        return f.read(2) in MAGICS


def _header(data: bytes, path: Path, what: str) -> tuple[int, int, int, int, bool, int]:
    """(height, width, channels, maxval, binary, offset of the first sample) from the header; '#' comments skipped."""
    channels, binary = MAGICS[data[:2]]
    fields, pos = [], 2
    while len(fields) < 3:
        while pos < len(data) and data[pos : pos + 1] in (b"#", *(bytes([c]) for c in _SPACE)):
            if data[pos : pos + 1] == b"#":  # a comment runs to the end of its line
                end = data.find(b"\n", pos)
                pos = len(data) if end < 0 else end
            pos += 1
        start = pos
        while pos < len(data) and data[pos] not in _SPACE and data[pos : pos + 1] != b"#":
            pos += 1
        if start == pos or not data[start:pos].isdigit():
            raise DataError(f"{path}: the {what}'s Netpbm header is broken (width, height and maxval expected); "
                            "re-export or remove the file")
        fields.append(int(data[start:pos]))
    width, height, maxval = fields
    if not (0 < maxval < 65536) or width == 0 or height == 0:
        raise DataError(f"{path}: the {what}'s Netpbm header gives {width}x{height} with maxval {maxval}; a size "
                        "of 0 or a maxval outside 1..65535 is not a valid file")
    return height, width, channels, maxval, binary, pos + 1  # one whitespace byte ends the header


def pnm_header(path: Path, what: str) -> tuple[int, int, int, str]:
    """(height, width, channels, dtype) from the header alone."""
    with open(path, "rb") as f:
        head = f.read(4096)
    h, w, c, maxval, _, _ = _header(head, path, what)
    return h, w, c, "uint8" if maxval < 256 else "uint16"


def read_pnm(path: Path, what: str, limit: int) -> np.ndarray:
    """(H, W, C) samples as stored, C = 1 (PGM) or 3 (PPM); the size is checked against ``limit`` before reading."""
    from pixelwise.data.raster import bomb_message

    with open(path, "rb") as f:
        h, w, c, maxval, binary, offset = _header(f.read(4096), path, what)
        if h * w > limit:
            raise DataError(bomb_message(path, what, w, h, limit))
        f.seek(offset)
        data = f.read()
    count = h * w * c
    if binary:
        dtype = np.dtype(np.uint8) if maxval < 256 else np.dtype(">u2")
        if len(data) < count * dtype.itemsize:
            raise DataError(f"{path}: the {what} is cut short ({len(data):,} bytes of samples, {w}x{h}x{c} need "
                            f"{count * dtype.itemsize:,}); re-export or remove the file")
        samples = np.frombuffer(data, dtype=dtype, count=count)
    else:
        tokens = data.split()
        if len(tokens) < count or not all(t.isdigit() for t in tokens[:count]):
            raise DataError(f"{path}: the {what} holds fewer than the {count:,} whole-number samples its header "
                            "promises; re-export or remove the file")
        samples = np.array(tokens[:count], dtype=np.int64)
    if samples.size and int(samples.max()) > maxval:
        raise DataError(f"{path}: the {what} holds the sample {int(samples.max())}, above its maxval {maxval}; "
                        "re-export or remove the file")
    return samples.astype(np.uint8 if maxval < 256 else np.uint16).reshape(h, w, c)
