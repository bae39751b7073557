"""``Segmenter``: a trained run as an object that turns images into class masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pixelwise.config import Config, read_yaml
from pixelwise.data.classes import ClassTable
from pixelwise.data.dataset import read_image
from pixelwise.engine.checkpoint import load_weights
from pixelwise.engine.runtime import resolve_runtime
from pixelwise.errors import ConfigError, PixelwiseError
from pixelwise.inference.padding import forward_padded
from pixelwise.models.factory import Normalized, build_network


def load_run_config(run_dir: Path) -> Config:
    """The resolved config of a run directory (written by training)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise PixelwiseError(f"{run_dir}: not a run directory (no config.yaml); give the --out of a training run")
    cfg = Config.model_validate(read_yaml(run_dir / "config.yaml"))
    if not isinstance(cfg.data.classes, ClassTable) or cfg.model.in_channels == "auto":
        raise ConfigError(f"{run_dir / 'config.yaml'}: not a resolved run config (classes or in_channels missing)")
    return cfg


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """HxW, HxWx1, HxWx3 or HxWx4 uint8 -> HxWx``channels`` uint8 (gray is replicated; colour -> luminance)."""
    if image.dtype != np.uint8:
        raise ValueError(
            f"images must be uint8 (0-255), got {image.dtype}; convert with np.clip(x, 0, 255).astype('uint8')"
        )
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an HxW, HxWx1, HxWx3 or HxWx4 image, got shape {image.shape}")
    image = image[:, :, :3]
    if image.shape[2] == channels:
        return image
    if channels == 1:
        return np.asarray(Image.fromarray(image).convert("L"))[:, :, None]
    return np.repeat(image, channels, axis=2)


class Segmenter:
    """Predicts class masks with a trained run.

    >>> seg = Segmenter.load("runs/camvid-unet")
    >>> mask = seg.predict(image)   # HxW uint8 class indices
    """

    def __init__(self, model: Normalized, table: ClassTable, channels: int, device: str = "auto") -> None:
        self.runtime = resolve_runtime(device, "auto", channels_last=True)
        self.model = model.to(self.runtime.device, memory_format=torch.channels_last).eval()
        self.table = table
        self.channels = channels

    @classmethod
    def load(cls, run_dir: str | Path, device: str = "auto", weights: str = "best.safetensors") -> Segmenter:
        """Load a run directory: its config.yaml and weights (safetensors; no pickled code runs)."""
        run_dir = Path(run_dir)
        cfg = load_run_config(run_dir)
        table, channels = cfg.data.classes, int(cfg.model.in_channels)
        model = build_network(cfg.model, channels, table.num_classes, pretrained=False)
        path = run_dir / weights
        if not path.is_file():
            raise PixelwiseError(f"{path}: no weights yet (training writes them after its first evaluation)")
        load_weights(model, path)
        return cls(model, table, channels, device)

    @property
    def class_names(self) -> list[str]:
        return self.table.names

    def _batch(self, image: np.ndarray | str | Path) -> torch.Tensor:
        if isinstance(image, (str, Path)):
            arr = read_image(Path(image), self.channels)
        else:
            arr = to_channels(np.asarray(image), self.channels)
        chw = np.ascontiguousarray(arr.transpose(2, 0, 1))
        if not chw.flags.writeable:  # a read-only cached array (1-channel: the transpose needed no copy)
            chw = chw.copy()
        return torch.from_numpy(chw)[None].to(self.runtime.device)

    @torch.inference_mode()
    def probabilities(self, image: np.ndarray | str | Path) -> np.ndarray:
        """Per-class probabilities, (K, H, W) float32, for an image of any size."""
        logits = forward_padded(self.model, self._batch(image), self.runtime)
        return logits.softmax(dim=1)[0].cpu().numpy()

    @torch.inference_mode()
    def predict(self, image: np.ndarray | str | Path) -> np.ndarray:
        """Class index per pixel, (H, W) uint8, for an HxW(xC) uint8 array or an image file of any size."""
        logits = forward_padded(self.model, self._batch(image), self.runtime)
        return logits.argmax(dim=1)[0].to(torch.uint8).cpu().numpy()

    def colorize(self, mask: np.ndarray) -> Image.Image:
        """The mask as a palette PNG image: pixel values are class indices, shown in the class colours."""
        out = Image.fromarray(mask.astype(np.uint8), mode="P")
        flat = [c for rgb in self.table.palette for c in rgb]
        out.putpalette(flat + [0] * (768 - len(flat)))
        return out

    def overlay(self, image: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
        """The image with the class colours blended in, HxWx3 uint8."""
        rgb = to_channels(np.asarray(image), 3).astype(np.float32)
        colours = np.asarray(self.table.palette, dtype=np.float32)[mask]
        return (rgb * (1 - alpha) + colours * alpha).clip(0, 255).astype(np.uint8)
