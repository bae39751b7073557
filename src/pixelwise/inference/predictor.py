"""``Segmenter``: a trained run or an exported model as an object that turns images into class masks.

Imports no torch at module level: with an .onnx model, prediction runs on numpy and ONNX Runtime alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pixelwise.config import Config, load_run_config
from pixelwise.data.classes import ClassTable
from pixelwise.data.io import read_image
from pixelwise.data.pixels import ImageSpec, check_pixels, dtype_class, model_dtype, model_input, spec_of
from pixelwise.display import display_rgb
from pixelwise.errors import PixelwiseError
from pixelwise.inference.sliding_window import sliding_window_mask, sliding_window_probs
from pixelwise.inference.tta import FLIPS, tta_probs
from pixelwise.memory import require_memory


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """An HxW or HxWxC uint8 array -> HxWx``channels`` uint8, by the rules of image files (``fit_channels``): an
    equal count passes; gray and colour convert into each other (gray replicated, colour to luminance), RGBA as
    colour (alpha dropped, as an RGBA file's is); any other count is refused, never dropped or copied."""
    if image.dtype != np.uint8:
        raise ValueError(
            f"images must be uint8 (0-255), got {image.dtype}; convert with np.clip(x, 0, 255).astype('uint8')"
        )
    shape = image.shape
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3:
        raise ValueError(f"expected an HxW or HxWxC image array, got shape {shape}")
    found = image.shape[2]
    if found == channels:
        return image
    if found == 4 and channels in (1, 3):  # RGBA for a gray or colour model: the alpha is not a pixel value
        rgb = image[:, :, :3]
        return rgb if channels == 3 else to_channels(rgb, 1)
    if found in (1, 3) and channels in (1, 3):
        if channels == 3:
            return np.ascontiguousarray(np.repeat(image, 3, axis=2))
        return np.asarray(Image.fromarray(np.ascontiguousarray(image)).convert("L"))[:, :, None]
    hint = ("; a channel-first CxHxW array? pass HxWxC: x.transpose(1, 2, 0)" if image.shape[0] == channels else
            "; only gray (1) and colour (3, or RGBA 4) 8-bit arrays are converted: pass the model's channels (those "
            "it was trained on), in the same order")
    raise ValueError(f"the image array of shape {shape} (HxW[xC]) has {found} channel(s), but the model takes "
                     f"{channels}{hint}")


def _is_many(x: Any) -> bool:
    """A collection of images rather than one image (an array, a path)."""
    return not isinstance(x, (np.ndarray, str, Path, Image.Image)) and isinstance(x, Iterable)


def as_model_input(image: np.ndarray, spec: ImageSpec) -> np.ndarray:
    """An array given by the caller, checked against what the model was trained on and made its input.

    8-bit models take uint8 HxW(xC) images with their channel count, or gray/colour/RGBA converted as for files
    (``to_channels``). Other models take HxW(xC) arrays of the training images' type with their channel count;
    the type is checked, not converted, since a value in another type means something else (a 12-bit model given
    8-bit pixels would see near-black images).
    """
    dtype = spec.dtype or "uint8"
    if model_dtype(dtype) == "uint8":
        return to_channels(image, spec.channels or 3)
    arr = image[:, :, None] if image.ndim == 2 else image
    if arr.ndim != 3 or arr.shape[2] != spec.channels:
        raise ValueError(f"expected an HxWx{spec.channels} array (the model's {spec.channels} channel(s)), got shape "
                         f"{image.shape}")
    if dtype_class(arr.dtype) != dtype_class(dtype):
        raise ValueError(f"the model was trained on {dtype} images, got {arr.dtype}; pass the pixels in the "
                         f"training type (e.g. x.astype('{dtype}') when the values are {dtype} values)")
    return model_input(check_pixels(arr, spec, Path("<array>")))


AUTO_TILE_AREA = 16  # tile automatically when an image has more than this many training crops' worth of pixels
DEFAULT_OVERLAP = 0.25


class Segmenter:
    """Predicts class masks with a trained run (PyTorch) or an exported model (ONNX Runtime, no torch needed).

    >>> seg = Segmenter.load("runs/camvid-unet")      # or Segmenter.load("model.onnx")
    >>> mask = seg.predict(image)   # HxW uint8 class indices
    >>> mask = seg.predict(big_image, tile=512, tta=True)
    """

    def __init__(self, backend: Any, table: ClassTable, channels: int, crop_size: tuple[int, int] = (512, 512),
                 spec: ImageSpec | None = None) -> None:
        """``backend``: uint8 or float32 (N, C, H, W) -> float32 probabilities (N, K, H, W) (``TorchBackend``,
        ``OnnxBackend``). ``spec``: how image files are read (bands, pages, NaN fill, the training pixel type)."""
        self.backend = backend
        self.table = table
        self.channels = channels
        self.crop_size = crop_size
        self.spec = (spec or ImageSpec()).with_channels(channels)

    @property
    def input_dtype(self) -> str:
        """The network's input type: uint8 for 8-bit models, float32 for any other pixel type."""
        return model_dtype(self.spec.dtype or "uint8")

    @classmethod
    def load(cls, path: str | Path | list[str | Path], device: str = "auto", weights: str = "best.safetensors",
             threads: int | None = None, amp: str = "auto", model: Any = None, calibrated: bool = True) -> Segmenter:
        """Load a run directory (config.yaml + safetensors weights; no pickled code runs), an exported .onnx, or
        ``hf://USER/REPO[/PATH][@REVISION]`` (a run or export on the Hugging Face Hub, as ``pixelwise push`` puts it).
        A cross-validation parent (``train --folds K``) or a list of run directories loads as one model averaging
        their probabilities (``inference.ensemble``; the folds' own temperatures are not applied).

        Args:
            device, amp: PyTorch only: device, and autocast ("auto": bf16 where the hardware computes it
                natively, "off": fp32).
            threads: ONNX Runtime only: intra-op threads (default: its own choice).
            model: for a run that trained your own ``nn.Module``: an instance of it (its weights are loaded).
            calibrated: apply the run's temperature (RUN/calibration.json, ``pixelwise calibrate``) to the
                probabilities; masks are the same either way. An exported model has it folded into its graph.
        """
        if isinstance(path, (list, tuple)):  # several runs: their probabilities averaged (an ensemble)
            from pixelwise.inference.ensemble import load_ensemble

            backend, cfg = load_ensemble([Path(p) for p in path], device, amp, weights)
            return cls._of_run(backend, cfg)
        if str(path).startswith("hf://"):  # the run's files, downloaded once into the Hugging Face cache
            from pixelwise.hubfiles import hub_model

            path = hub_model(str(path))
        path = Path(path)
        if path.suffix.lower() == ".onnx":
            from pixelwise.inference.onnx_backend import OnnxBackend

            backend = OnnxBackend(path, threads)
            meta = backend.meta  # validated by read_metadata
            read = meta.get("read", {})
            spec = ImageSpec(meta["channels"], tuple(read["bands"]) if read.get("bands") else None,
                             bool(read.get("pages_as_channels", False)), read.get("channel_axis", "auto"),
                             read.get("nan_fill"), meta.get("dtype"))
            return cls(backend, meta["classes"], meta["channels"], meta["crop_size"], spec)
        from pixelwise.inference.torch_backend import load_torch_backend

        cfg = load_run_config(path)
        backend = load_torch_backend(path, cfg, device, weights, amp, network=model)
        if calibrated:
            from pixelwise.inference.calibration import read_temperature

            backend.temperature = read_temperature(path) or 1.0
        return cls._of_run(backend, cfg)

    @classmethod
    def _of_run(cls, backend: Any, cfg: Config) -> Segmenter:
        """A Segmenter of a PyTorch backend and its run's config (classes, channels, crop, how images are read)."""
        channels = int(cfg.model.in_channels)
        return cls(backend, cfg.data.classes, channels, tuple(cfg.data.crop_size), spec_of(cfg.data, channels))

    @property
    def model(self) -> Any:
        """The PyTorch network (``Normalized``) of a run; not available for an ONNX model."""
        if not hasattr(self.backend, "model"):
            raise PixelwiseError("this Segmenter runs an ONNX model; it has no PyTorch network")
        return self.backend.model

    @property
    def temperature(self) -> float:
        """The temperature the probabilities are divided by (1: uncalibrated); an ONNX model's is folded into its
        graph (its metadata says which)."""
        folded = getattr(self.backend, "meta", {}).get("temperature")
        return float(folded if folded is not None else getattr(self.backend, "temperature", 1.0))

    def logits(self, image: np.ndarray | str | Path) -> np.ndarray:
        """(K, H, W) float32 logits of a whole image (not tiled), before any temperature the run applies."""
        img = self._image(image)
        return self.backend.logits(img.transpose(2, 0, 1)[None])[0]

    @property
    def runtime(self) -> Any:
        return self.backend.runtime

    @property
    def class_names(self) -> list[str]:
        return self.table.names

    def _image(self, image: np.ndarray | str | Path) -> np.ndarray:
        """(H, W, C) model input: uint8, or float32 in the data's units."""
        if isinstance(image, (str, Path)):
            return model_input(read_image(Path(image), self.spec))
        return as_model_input(np.asarray(image), self.spec)

    def _tile(self, shape: tuple[int, ...], tile: int | tuple[int, int] | None) -> tuple[int, int] | None:
        """The tile size to use: given, none (0), or automatic for images much larger than the training crops."""
        if tile is not None:
            if isinstance(tile, int):
                return (tile, tile) if tile > 0 else None
            return tuple(tile) if min(tile) > 0 else None
        ch, cw = self.crop_size
        if shape[0] * shape[1] <= AUTO_TILE_AREA * ch * cw:
            return None
        side = max(512, ch, cw)
        return (side + (-side) % 32, side + (-side) % 32)

    def _probs_fn(self, tile: int | tuple[int, int] | None, overlap: float, backend: Any = None) -> Any:
        """(H, W, C) -> (K, H, W) probabilities; the tile size is decided per image it is called on, so a copy
        scaled up for TTA is tiled as its own size requires (not whole, as the original would be). ``backend``:
        another (N, C, h, w) -> (N, K, h, w) function run on the same tiles (default: the model's)."""
        backend = self.backend if backend is None else backend

        def probs_of(img: np.ndarray) -> np.ndarray:
            size = self._tile(img.shape, tile)
            if size is None:
                return backend(img.transpose(2, 0, 1)[None])[0]
            return sliding_window_probs(backend, img, size, overlap)

        return probs_of

    def _require_memory(self, shape: tuple[int, ...], scales: Sequence[float]) -> None:
        """Refuse before predicting when the probability maps alone cannot fit (a lower bound; tiles bound the
        network's own share). Per pixel of the largest scaled copy: the image, its probabilities and their
        stitched copy; per pixel of the image: the map resized back and the running mean. (Tiled masks without
        TTA never hold a whole map: they stream band by band.)"""
        (h, w), c, k = shape[:2], self.channels, self.table.num_classes
        top = max(scales)
        scaled = round(h * top) * round(w * top)
        need = scaled * (c + 2 * 4 * k) + h * w * 2 * 4 * k
        at = f" at scale {top:g}" if top != 1 else ""
        require_memory(need, f"the class probabilities of a {w}x{h} image{at}",
                       "lower the largest of --scales (scales), or predict masks without --save-probs and --tta "
                       "(tiled masks need memory for a band of tiles only)")

    def probabilities(self, image: np.ndarray | str | Path, tile: int | tuple[int, int] | None = None,
                      overlap: float = DEFAULT_OVERLAP, tta: bool = False, scales: Sequence[float] = (1.0,),
                      flips: Sequence[str] = FLIPS) -> np.ndarray:
        """Per-class probabilities, (K, H, W) float32, for an image of any size.

        Args:
            tile: sliding-window tile side (or (h, w)); None: automatic for images over 16 training crops of
                pixels; 0: never tile.
            overlap: fraction of a tile shared with its neighbours (Gaussian-weighted blending).
            tta: average over flips (``flips``: "h", "v") and ``scales``, each mapped back.
        """
        return self._probabilities(self._image(image), tile, overlap, tta, scales, flips)

    def _probabilities(self, img: np.ndarray, tile: int | tuple[int, int] | None, overlap: float, tta: bool,
                       scales: Sequence[float], flips: Sequence[str]) -> np.ndarray:
        """``probabilities`` of model input (``_image``'s output)."""
        self._require_memory(img.shape, scales)
        probs_of = self._probs_fn(tile, overlap)
        if tta or tuple(scales) != (1.0,):
            return tta_probs(probs_of, img, flips if tta else (), scales)
        return probs_of(img)

    def predict(self, image: Any, tile: int | tuple[int, int] | None = None, overlap: float = DEFAULT_OVERLAP,
                tta: bool = False, scales: Sequence[float] = (1.0,), flips: Sequence[str] = FLIPS,
                batch_size: int = 4) -> Any:
        """Class index per pixel, (H, W) uint8, for an image array (uint8, or the training type) or file of any size.

        Tiled prediction without TTA keeps only a band of rows in memory, so gigapixel images fit.
        Many images: a list (or tuple) gives a list of masks, any other iterable (a generator, say) an iterator
        of masks, computed as it is consumed; consecutive images of one size are batched ``batch_size`` at a time.
        """
        if _is_many(image):
            masks = self._predict_many(image, tile, overlap, tta, scales, flips, batch_size)
            return list(masks) if isinstance(image, (list, tuple)) else masks
        return self._predict_input(self._image(image), tile, overlap, tta, scales, flips)

    def _predict_input(self, img: np.ndarray, tile: int | tuple[int, int] | None = None,
                       overlap: float = DEFAULT_OVERLAP, tta: bool = False, scales: Sequence[float] = (1.0,),
                       flips: Sequence[str] = FLIPS) -> np.ndarray:
        """``predict`` of one image's model input (``_image``'s output), never checked again as the caller's array:
        a 16-bit model's input is float32, which ``predict`` refuses from a caller."""
        size = self._tile(img.shape, tile)
        if size is not None and not tta and tuple(scales) == (1.0,):
            return sliding_window_mask(self.backend, img, size, overlap)
        probs = self._probabilities(img, tile, overlap, tta, scales, flips)
        return probs.argmax(axis=0).astype(np.uint8)

    def uncertainty(self, image: Any, methods: Sequence[str] = ("entropy",)) -> dict[str, np.ndarray]:
        """Per-pixel uncertainty maps (H, W, 0 certain to 1): ``entropy``, ``tta`` (flip disagreement),
        ``mc-dropout`` (networks with dropout); see ``inference.uncertainty``."""
        from pixelwise.inference.uncertainty import uncertainty_maps

        return uncertainty_maps(self, image, list(methods))[1]

    def explain(self, image: Any, class_name: str, **options: Any) -> Any:
        """The class activation map of ``class_name`` (``inference.explain.explain``: method, region, box, truth,
        layer); needs the ``explain`` extra and a run directory."""
        from pixelwise.inference.explain import explain

        return explain(self, image, class_name, **options)

    def colorize(self, mask: np.ndarray) -> Image.Image:
        """The mask as a palette PNG image: pixel values are class indices, shown in the class colours."""
        out = Image.fromarray(mask.astype(np.uint8), mode="P")
        flat = [c for rgb in self.table.palette for c in rgb]
        out.putpalette(flat + [0] * (768 - len(flat)))
        return out

    def _predict_many(self, images: Iterable[Any], tile: Any, overlap: float, tta: bool, scales: Sequence[float],
                      flips: Sequence[str], batch_size: int) -> Iterator[np.ndarray]:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        batch: list[np.ndarray] = []
        for item in images:
            img = self._image(item)
            whole = self._tile(img.shape, tile) is None and not tta and tuple(scales) == (1.0,)
            if batch and (not whole or img.shape != batch[0].shape):
                yield from self._predict_batch(batch)
                batch = []
            if not whole:  # tiled or augmented: one image at a time
                yield self._predict_input(img, tile, overlap, tta, scales, flips)
                continue
            batch.append(img)
            if len(batch) == batch_size:
                yield from self._predict_batch(batch)
                batch = []
        if batch:
            yield from self._predict_batch(batch)

    def _predict_batch(self, images: list[np.ndarray]) -> list[np.ndarray]:
        probs = self.backend(np.stack([im.transpose(2, 0, 1) for im in images]))
        return list(probs.argmax(axis=1).astype(np.uint8))

    def overlay(self, image: Any, mask: np.ndarray | None = None, alpha: float = 0.5) -> np.ndarray:
        """The image (8-bit, or any type shown contrast-stretched) with the class colours blended in, HxWx3 uint8.

        ``image``: what ``predict`` takes (an array or an image file); ``mask``: its classes (default: predicted).
        """
        image = self._image(image)
        if mask is None:
            mask = self._predict_input(image)
        rgb = display_rgb(np.asarray(image)).astype(np.float32)
        colours = np.asarray(self.table.palette, dtype=np.float32)[mask]
        return (rgb * (1 - alpha) + colours * alpha).clip(0, 255).astype(np.uint8)
