"""Synthetic scientific and geospatial data, written the way instruments and GIS tools write it.

- 12-bit microscopy: 16-bit grayscale PNGs holding 0..4095, a few dead (0) and hot (4095) pixels;
- float32 reflectance in 0..1 as single-channel float TIFFs;
- 5-band uint16 multispectral TIFFs (HxWxC, contiguous), the class visible in band 4 only;
- GeoTIFFs with a real CRS (EPSG:32633, UTM 33N, 10 m pixels) written with rasterio.
Masks are 8-bit PNGs (or GeoTIFFs on the image's grid). Classes are rectangles and discs on a background.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

SIZE = 48
UTM33N = "EPSG:32633"
ORIGIN = (500_000.0, 5_000_000.0)  # upper-left corner, metres
PIXEL = 10.0  # metres


def regions(rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """(size, size) uint8 mask: 0 background, 1 on two to four rectangles and discs."""
    mask = np.zeros((size, size), np.uint8)
    yy, xx = np.mgrid[:size, :size]
    for _ in range(int(rng.integers(2, 5))):
        cy, cx = rng.integers(4, size - 4, 2)
        r = int(rng.integers(5, 11))
        if rng.random() < 0.5:
            mask[max(cy - r, 0) : cy + r, max(cx - r, 0) : cx + r] = 1
        else:
            mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
    return mask


def twelve_bit(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    """uint16 0..4095: class 0 at 1100, class 1 at 1140, noise sd 6, 0.2% dead or hot pixels.

    1100 and 1140 fall into the same 8-bit level (4) when 16 bits are scaled to 8 (/257): an 8-bit pipeline sees
    one class. The hot and dead pixels span the whole 12-bit range: min-max scaling would squeeze the classes.
    """
    img = np.where(mask == 1, 1140.0, 1100.0) + rng.normal(0, 6, mask.shape)
    spots = rng.random(mask.shape) < 0.002
    img[spots] = rng.choice([0.0, 4095.0], int(spots.sum()))
    return img.round().clip(0, 4095).astype(np.uint16)


def reflectance(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    """float32 in 0..1: class 0 at 0.40, class 1 at 0.44, noise sd 0.006 (8-bit conversion makes it all 0)."""
    return (np.where(mask == 1, 0.44, 0.40) + rng.normal(0, 0.006, mask.shape)).clip(0, 1).astype(np.float32)


def five_band(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    """(H, W, 5) uint16: bands 1, 2, 3 and 5 random (500..3000, unrelated to the class), band 4 2000 vs 2100."""
    img = rng.integers(500, 3000, (*mask.shape, 5)).astype(np.float64)
    img[:, :, 3] = np.where(mask == 1, 2100.0, 2000.0) + rng.normal(0, 10, mask.shape)
    return img.round().astype(np.uint16)


def write_dataset(root: Path, kind: str, n_train: int = 12, n_val: int = 4, seed: int = 0) -> Path:
    """A folders-layout dataset (train/, val/, images/, masks/, classes.yaml) of ``kind``: 12bit, float, 5band."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "masks").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            mask = regions(rng)
            Image.fromarray(mask).save(root / split / "masks" / f"s{i}.png")
            image_path = root / split / "images" / f"s{i}"
            if kind == "12bit":
                Image.fromarray(twelve_bit(rng, mask)).save(image_path.with_suffix(".png"))  # 16-bit PNG
            elif kind == "float":
                tifffile.imwrite(image_path.with_suffix(".tif"), reflectance(rng, mask))
            elif kind == "5band":
                tifffile.imwrite(image_path.with_suffix(".tif"), five_band(rng, mask), photometric="minisblack",
                                 planarconfig="contig")
            else:
                raise ValueError(kind)
    (root / "classes.yaml").write_text("names: [background, object]\n")
    return root


def write_geotiff(path: Path, array: np.ndarray, crs: str | None = UTM33N, origin: tuple[float, float] = ORIGIN,
                  pixel: float = PIXEL, tiled: bool = False) -> None:
    """(H, W) or (H, W, C) as a GeoTIFF (rasterio), upper-left corner at ``origin``, square pixels."""
    import rasterio
    from affine import Affine

    bands = array[:, :, None] if array.ndim == 2 else array
    options = {"tiled": True, "blockxsize": 256, "blockysize": 256} if tiled else {}
    with rasterio.open(path, "w", driver="GTiff", height=bands.shape[0], width=bands.shape[1], count=bands.shape[2],
                       dtype=bands.dtype, crs=crs, transform=Affine(pixel, 0, origin[0], 0, -pixel, origin[1]),
                       **options) as dst:
        dst.write(bands.transpose(2, 0, 1))
