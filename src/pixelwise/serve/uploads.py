"""Uploads: the image bytes of a request (multipart field or raw body) and their decoding, with an HTTP status.

Decoding is pixelwise's own (``data.io.read_image_bytes``), so an upload meets the rules a file meets: the
pixel limit read from the header, one message per kind of broken file, 16-bit/grey/RGBA/palette/CMYK converted
to the model's channels, EXIF orientation applied.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from pixelwise.data.io import read_image_bytes, set_max_pixels
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
    if kind.startswith("application/x-www-form-urlencoded"):
        raise ServeError(415, f"a url-encoded form cannot carry an image; {HOW_TO_SEND}")
    return await request.body(), _name(None, request.headers.get("x-filename", "upload"))


async def read_uploads(request: Any, max_files: int) -> list[tuple[bytes, str]]:
    """The images of a /predict/batch request (multipart, field 'files' repeated)."""
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise ServeError(415, f"/predict/batch takes multipart/form-data with the field '{BATCH_FIELD}' once per "
                              "image; for one image as the raw body use /predict")
    return await _form_files(request, BATCH_FIELD, max_files)  # more files than max_files: Starlette's 400


def _status(data: bytes, limit: int) -> int:
    """The status for bytes that failed to decode, read from their header: too many pixels, not an image, broken."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
    except UnidentifiedImageError:  # not an image, or not of a kind pixelwise reads
        return 415
    except Exception:  # an image whose header itself is cut short or broken
        return 400
    return 413 if width * height > limit else 400


def decode(data: bytes, name: str, channels: int, max_pixels: int) -> np.ndarray:
    """HxWxC uint8 for the model, or a ``ServeError`` with the decoder's message (400, 413 or 415)."""
    if not data:
        raise ServeError(400, f"{name}: the upload is empty (0 bytes); {HOW_TO_SEND}")
    set_max_pixels(max_pixels)  # the one limit of this server process (data.max_image_pixels or --max-image-pixels)
    try:
        return read_image_bytes(data, channels, name)
    except DataError as e:
        raise ServeError(_status(data, max_pixels), str(e)) from None
