"""Label Studio's brush RLE (``value.format == "rle"``), decoded and encoded with numpy; no torch.

The format (label-studio-converter's ``brush.py``, which pulls in pandas, nltk and more for this one function) is a
bit stream over the flattened RGBA image (H x W x 4 values; the mask is the alpha channel): 32 bits value count,
5 bits word size - 1, four 4-bit run-length field sizes - 1, then blocks: 1 bit kind, 2 bits which field size, that
many bits run length - 1, then one word repeated (kind 1) or one word per value (kind 0). Bytes are MSB first.
"""

from __future__ import annotations

import numpy as np

from pixelwise.errors import DataError

RLE_SIZES = (3, 4, 8, 16)  # the field sizes Label Studio's own encoder writes


class _Bits:
    def __init__(self, data: list[int] | bytes) -> None:
        self.text = (np.unpackbits(np.asarray(bytearray(data), np.uint8)) + ord("0")).tobytes()
        self.i = 0

    def read(self, n: int) -> int:
        if self.i + n > len(self.text):
            raise ValueError("the stream ends inside a block")
        value = int(self.text[self.i : self.i + n], 2) if n else 0
        self.i += n
        return value


def decode(rle: list[int], height: int, width: int) -> np.ndarray:
    """The HxW mask (the alpha channel: 0 = not painted) of one brush result; ValueError if it does not fit."""
    if not isinstance(rle, list) or not all(isinstance(v, int) and 0 <= v <= 255 for v in rle):
        raise ValueError("'rle' is not a list of byte values (0-255)")
    bits = _Bits(rle)
    num, word = bits.read(32), bits.read(5) + 1
    if num != height * width * 4:
        raise ValueError(f"it holds {num} values, a {width}x{height} RGBA image has {height * width * 4}")
    sizes = [bits.read(4) + 1 for _ in range(4)]
    out = np.zeros(num, np.uint8)
    i = 0
    while i < num:
        repeat = bits.read(1)
        j = i + 1 + bits.read(sizes[bits.read(2)])
        if j > num:
            raise ValueError(f"a run goes past the {num} values")
        if repeat:
            out[i:j] = bits.read(word)
        else:
            out[i:j] = [bits.read(word) for _ in range(j - i)]
        i = j
    return out.reshape(height, width, 4)[:, :, 3]


def decode_checked(rle: list[int], height: int, width: int, where: str) -> np.ndarray:
    try:
        return decode(rle, height, width)
    except ValueError as e:
        raise DataError(f"{where}: brush RLE cannot be decoded ({e})") from None


def encode(mask: np.ndarray) -> list[int]:
    """A boolean HxW mask as brush RLE (painted pixels 255 in all four channels, as Label Studio's brush paints)."""
    flat = np.repeat(mask.astype(np.uint8).reshape(-1) * 255, 4)
    edges = np.flatnonzero(np.diff(flat)) + 1
    starts, ends = np.r_[0, edges], np.r_[edges, flat.size]
    parts = [f"{flat.size:032b}", f"{8 - 1:05b}", *(f"{s - 1:04b}" for s in RLE_SIZES)]
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        value = int(flat[start])
        while start < end:
            n = min(end - start, 1 << RLE_SIZES[-1])
            code = next(c for c, s in enumerate(RLE_SIZES) if n - 1 < 1 << s)
            parts.append(f"1{code:02b}{n - 1:0{RLE_SIZES[code]}b}{value:08b}")
            start += n
    text = "".join(parts)
    text += "0" * (-len(text) % 8)
    return np.packbits(np.frombuffer(text.encode(), np.uint8) - ord("0")).tolist()
