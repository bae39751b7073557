"""The torch Dataset of (image, mask) pairs, and the in-memory cache of decoded arrays (decoding: ``data.io``).

The cache keeps each image in its own type (uint8, uint16, int16, float32: half the memory of float32 for 16-bit
data); a sample becomes float32 only on its way to the model, so 8-bit data stays uint8 end to end.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from pixelwise.data.classes import ClassTable
from pixelwise.data.io import (  # noqa: F401  (re-exported: the decoding API lived here)
    DEFAULT_MAX_PIXELS,
    IMAGE_SUFFIXES,
    ImageSpec,
    Pair,
    as_spec,
    exif_orientation,
    image_channels,
    read_image,
    read_image_oriented,
    read_mask,
    set_max_pixels,
    spec_of,
    to_classes,
    upright,
)


class DecodedCache:
    """Decoded images (their own type) and raw masks kept in memory up to a byte limit (shared with forked workers)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._items: dict[Path, np.ndarray] = {}
        self._lock = threading.Lock()  # the checks fill the cache from a thread pool

    def get(self, path: Path) -> np.ndarray | None:
        return self._items.get(path)

    def __contains__(self, path: Path) -> bool:
        return path in self._items

    def put(self, path: Path, arr: np.ndarray) -> None:
        with self._lock:
            if path not in self._items and self.nbytes + arr.nbytes <= self.max_bytes:
                self._items[path] = arr
                self.nbytes += arr.nbytes


class SegmentationDataset(torch.utils.data.Dataset):
    """(image, mask) pairs -> (CxHxW image tensor, uint8 HxW class-index mask tensor).

    Images are uint8 for 8-bit data and float32 (exact values, not rescaled) for any other type. Normalisation
    happens inside the model (see ``models.factory.Normalized``), so 8-bit batches stay uint8.
    """

    def __init__(
        self,
        pairs: list[Pair],
        table: ClassTable,
        channels: int | ImageSpec,
        transform: Callable[..., dict] | None = None,
        cache: DecodedCache | None = None,
        seed: int = 0,
    ) -> None:
        self.pairs = pairs
        self.seed = seed
        self.spec = as_spec(channels)  # how files are read: channels, bands, pages, NaN fill, pixel type
        self.channels = self.spec.channels
        self.transform = transform
        self.cache = cache
        self.lut = table.lut()
        self.colors = table.color_codes() if table.color_masks else None

    @property
    def fully_cached(self) -> bool:
        """Every image and mask is decoded in memory: loading is then a copy, cheaper in-process than in workers."""
        return self.cache is not None and all(p.image in self.cache and p.mask in self.cache for p in self.pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    def _cached(self, path: Path, read: Callable[[Path], np.ndarray]) -> np.ndarray:
        arr = self.cache.get(path) if self.cache else None
        if arr is None:
            arr = read(path)
            if self.cache:
                self.cache.put(path, arr)
        return arr

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The decoded pair: image HxWxC in its own type and class-index mask uint8 HxW."""
        pair = self.pairs[index]
        assert pair.mask is not None, "pairs without masks are rejected by the checks"
        image = self._cached(pair.image, lambda p: read_image(p, self.spec))
        mask = to_classes(self._cached(pair.mask, lambda p: read_mask(p, self.colors)), self.lut)
        return image, mask

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``key`` is an index, or (epoch, index) from ``EpochSampler`` to seed this sample's augmentation."""
        epoch, index = key if isinstance(key, tuple) else (None, key)
        image, mask = self.load(index)
        if image.dtype != np.uint8:  # a float32 copy: transforms never touch the cached array, values stay exact
            image = image.astype(np.float32)
        if self.transform is not None:
            if epoch is not None and hasattr(self.transform, "set_random_seed"):
                state = np.random.SeedSequence([self.seed, epoch, index]).generate_state(1)[0]
                self.transform.set_random_seed(int(state))
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        if image.ndim == 2:
            image = image[:, :, None]
        # np.array copies: cached arrays are shared (and read-only), tensors must own their memory.
        return torch.from_numpy(np.array(image.transpose(2, 0, 1), order="C")), torch.from_numpy(
            np.array(mask, order="C")
        )
