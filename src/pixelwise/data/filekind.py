"""Which decoder a file goes to, from its first bytes where its name cannot be trusted.

Uploads have no file name to trust, and files are sometimes named for another kind (a 16-bit TIFF saved as .png,
which PIL would cut to 8 bits). Whatever is not one of these goes to PIL, which recognises its formats by their
bytes too (and says "cannot identify" for anything else).
"""

from __future__ import annotations

from pathlib import Path

from pixelwise.data.pnm import MAGICS as PNM_MAGICS
from pixelwise.data.raster import RASTERIO_SUFFIXES, TIFF_SUFFIXES

_MAGIC = ((b"II*\x00", ".tif"), (b"MM\x00*", ".tif"), (b"II+\x00", ".tif"), (b"MM\x00+", ".tif"),
          (b"\x93NUMPY", ".npy"), *((magic, ".pnm") for magic in PNM_MAGICS))


def sniff_suffix(data: bytes) -> str:
    """The suffix that routes ``data`` to its decoder: .tif (tifffile), .npy, .pnm (PGM/PPM), or "" (PIL)."""
    return next((suffix for magic, suffix in _MAGIC if data.startswith(magic)), "")


def decoder_suffix(path: Path, suffix: str | None = None) -> str:
    """The decoder's suffix for a file: its name's (or ``suffix``) where that routes to tifffile, numpy or GDAL,
    else its first bytes' (a TIFF named .png, a PGM that PIL would rescale), else the name's (PIL)."""
    suffix = (path.suffix if suffix is None else suffix).lower()
    if suffix in TIFF_SUFFIXES or suffix in RASTERIO_SUFFIXES or suffix == ".npy":
        return suffix
    with open(path, "rb") as f:
        return sniff_suffix(f.read(8)) or suffix
