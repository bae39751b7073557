"""Uploads: the image bytes of a request (multipart field or raw body) and their decoding, with an HTTP status.

Decoding is pixelwise's own (``data.io.read_image_bytes``), so an upload meets the rules a file meets in
``pixelwise predict``: the pixel limit read from the header, one message per kind of broken file, EXIF orientation
applied, 8-bit grey/RGBA/palette/CMYK converted to the model's channels, and any other pixel type (16-bit, float)
taken only by a model trained on it: refused with a message, never rescaled.
"""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from pixelwise.data.io import PIL_FORMATS, read_image_bytes, set_max_pixels, sniff_suffix
from pixelwise.data.pixels import ChannelMismatch, Decoded, ImageSpec, dtype_class, fit_channels
from pixelwise.errors import DataError
from pixelwise.serve.guard import ServeError

FIELD = "file"  # multipart field of /predict
BATCH_FIELD = "files"  # repeated multipart field of /predict/batch
HOW_TO_SEND = "send the image as the multipart field 'file' or as the raw request body"


def _name(upload: Any, fallback: str) -> str:
    """The client's file name, reduced to its last part (it only ever names the upload in messages)."""
    name = str(getattr(upload, "filename", "") or fallback)
    return name.replace("\\", "/").rsplit("/", 1)[-1][:200] or fallback


async def _form_files(request: Any, field: str, max_files: int) -> list[tuple[bytes, str]]:
    # Starlette keeps parts up to 1 MiB in memory and larger ones in anonymous temporary files (unlinked at
    # creation), closed when the response is sent: nothing can be left behind, even by a killed process.
    form = await request.form(max_files=max_files, max_fields=16)
    uploads = [u for u in form.getlist(field) if hasattr(u, "read")]
    if not uploads:
        others = ", ".join(repr(k) for k in form.keys()) or "none"
        raise ServeError(400, f"no file in the multipart field '{field}' (fields sent: {others}); {HOW_TO_SEND}")
    return [(await u.read(), _name(u, f"upload {i + 1}")) for i, u in enumerate(uploads)]


async def read_upload(request: Any) -> tuple[bytes, str]:
    """The bytes and a name of the one image in a request."""
    kind = request.headers.get("content-type", "").lower()
    if kind.startswith("multipart/form-data"):
        return (await _form_files(request, FIELD, 1))[0]
    data = await request.body()
    # Any other body is the image itself, whatever its declared type: `curl --data-binary @photo.png` declares a
    # url-encoded form. Only a body that is really a form (`curl -d file=...`) is refused, with how to send one.
    if kind.startswith("application/x-www-form-urlencoded") and data and not is_image(data):
        raise ServeError(415, "the body is a url-encoded form, not an image (curl -d sends one); send the image "
                              "as the multipart field 'file' (curl -F file=@photo.png) or as the raw request body "
                              "(curl --data-binary @photo.png)")
    return data, _name(None, request.headers.get("x-filename", "upload"))


async def read_uploads(request: Any, max_files: int) -> list[tuple[bytes, str]]:
    """The images of a /predict/batch request (multipart, field 'files' repeated)."""
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise ServeError(415, f"/predict/batch takes multipart/form-data with the field '{BATCH_FIELD}' once per "
                              "image; for one image as the raw body use /predict")
    return await _form_files(request, BATCH_FIELD, max_files)  # more files than max_files: Starlette's 400


def is_image(data: bytes) -> bool:
    """Whether the bytes begin as an image of a kind pixelwise reads (a broken one too); only the header is read."""
    if sniff_suffix(data):  # a TIFF or .npy
        return True
    try:
        with Image.open(io.BytesIO(data), formats=PIL_FORMATS):  # EPS, PSD, ...: not images pixelwise reads
            return True
    except UnidentifiedImageError:  # not an image, or not of a kind pixelwise reads
        return False
    except Exception:  # an image whose header itself is cut short or broken
        return True


def _status(data: bytes, message: str) -> int:
    """The status of bytes that failed to decode: too many pixels (413), not an image (415), a broken one (400)."""
    if "(data.max_image_pixels)" in message:  # the header check's message (io and raster share it)
        return 413
    return 400 if is_image(data) else 415


def _bits(dtype: str) -> str:
    d = np.dtype(dtype)
    return "floating-point" if d.kind == "f" else f"{d.itemsize * 8}-bit"


def fit_to_model(pixels: np.ndarray, spec: ImageSpec, name: str) -> np.ndarray:
    """Decoded pixels (the file's own type and channels) with the model's channels, or a 422 saying what it takes.

    The rules of ``pixelwise predict``: 8-bit grey and colour convert into each other; another pixel type is refused,
    not rescaled (a 16-bit image squeezed into 8 bits, or 8-bit pixels given to a 16-bit model, would be misread).
    """
    expected = spec.dtype or "uint8"
    if dtype_class(pixels.dtype) != dtype_class(expected):
        raise ServeError(422, f"{name}: the pixels are {pixels.dtype} ({_bits(pixels.dtype)}), but this model was "
                              f"trained on {expected} ({_bits(expected)}) images; pixelwise does not rescale one pixel "
                              f"type to another: send the image as {_bits(expected)} "
                              f"{'(e.g. a PNG or JPEG photo)' if expected == 'uint8' else 'pixels'}")
    try:
        return fit_channels(Decoded(pixels, 1), spec.channels, Path(name))
    except ChannelMismatch as e:
        raise ServeError(422, f"{name}: the image has {e.found} channel(s), but this model takes {e.expected}; "
                              "send an image with that many channels") from None


def decode(data: bytes, name: str, spec: ImageSpec, max_pixels: int) -> np.ndarray:
    """(H, W, C) pixels of the model's type and channels (what ``Segmenter.predict`` takes), or a ``ServeError``."""
    if not data:
        raise ServeError(400, f"{name}: the upload is empty (0 bytes); {HOW_TO_SEND}")
    set_max_pixels(max_pixels)  # the one limit of this server process (data.max_image_pixels or --max-image-pixels)
    try:  # as stored first (bands, pages, NaN rules applied), so a wrong type is named before a channel count
        pixels = read_image_bytes(data, replace(spec, channels=None, dtype=None), name)
    except DataError as e:
        raise ServeError(_status(data, str(e)), str(e)) from None
    return fit_to_model(pixels, spec, name)
