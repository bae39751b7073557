"""The ONNX Runtime backend of ``Segmenter``: an exported model, no PyTorch needed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from pixelwise.data.classes import ClassTable
from pixelwise.errors import PixelwiseError
from pixelwise.geometry import pad_amounts

METADATA_KEY = "pixelwise"  # JSON in the model's metadata: classes, channels, normalisation, stride, crop


def pad_to_multiple(batch: np.ndarray, multiple: int, min_size: int = 0) -> np.ndarray:
    """numpy twin of ``engine.padding.pad_to_multiple`` (same geometry): pad (N, C, H, W) bottom/right."""
    ph, pw, reflect = pad_amounts(*batch.shape[-2:], multiple, min_size)
    if ph == 0 and pw == 0:
        return batch
    return np.pad(batch, ((0, 0), (0, 0), (0, ph), (0, pw)), mode="reflect" if reflect else "edge")


def softmax(logits: np.ndarray, axis: int = 1) -> np.ndarray:
    z = logits - logits.max(axis=axis, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=axis, keepdims=True)
    return z


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def read_metadata(path: Path, session: Any) -> dict[str, Any]:
    """The model's pixelwise metadata, checked: a file cut short or edited is one error naming it.

    Returns the JSON with ``classes`` as a ClassTable, ``channels`` an int, ``crop_size`` a tuple, the
    padding keys ``pad_multiple`` (default 32) and ``min_size`` (default 0) as ints, and ``input_dtype``
    (uint8, or float32 for non-8-bit data).
    """
    meta = session.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in meta:
        raise PixelwiseError(f"{path}: this ONNX model was not exported by pixelwise (no '{METADATA_KEY}' metadata: "
                             "class table, channels, normalisation); export it with `pixelwise export RUN`")
    redo = "export the run again with `pixelwise export RUN`"
    try:
        info = json.loads(meta[METADATA_KEY])
    except ValueError as e:
        raise PixelwiseError(f"{path}: its '{METADATA_KEY}' metadata is not valid JSON (cut short or edited: {e}); "
                             f"{redo}") from None
    info = info if isinstance(info, dict) else {}
    info.setdefault("pad_multiple", 32)
    info.setdefault("min_size", 0)
    info.setdefault("crop_size", [512, 512])
    info.setdefault("input_dtype", "uint8")
    bad = [k for k in ("classes", "channels", "pad_multiple", "crop_size") if k not in info]
    bad += [k for k in ("channels", "pad_multiple") if k in info and not _positive_int(info[k])]
    if not (isinstance(info["min_size"], int) and info["min_size"] >= 0):
        bad.append("min_size")
    if not (isinstance(info["crop_size"], list) and len(info["crop_size"]) == 2
            and all(_positive_int(v) for v in info["crop_size"])):
        bad.append("crop_size")
    if info["input_dtype"] not in ("uint8", "float32"):
        bad.append("input_dtype")
    if bad:
        raise PixelwiseError(f"{path}: its '{METADATA_KEY}' metadata lacks or garbles {', '.join(sorted(set(bad)))}; "
                             f"{redo}")
    try:
        info["classes"] = ClassTable.model_validate(info["classes"])
    except ValidationError as e:
        raise PixelwiseError(f"{path}: its '{METADATA_KEY}' metadata holds no valid class table "
                             f"({e.errors()[0]['msg']}); {redo}") from None
    info["crop_size"] = tuple(info["crop_size"])
    return info


class OnnxBackend:
    """An exported pixelwise model (uint8 or float32 NCHW input, preprocessing inside the graph) in ONNX Runtime."""

    name = "onnxruntime"

    def __init__(self, path: Path, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise PixelwiseError(
                "ONNX models need ONNX Runtime, which is not installed: pip install 'pixelwise[onnx]' (CPU), or "
                "'pixelwise[onnx-gpu]' on an NVIDIA GPU machine (one of the two: both install the same module)"
            ) from None
        path = Path(path)
        if not path.is_file():
            raise PixelwiseError(f"{path}: ONNX model not found")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types for unreadable models
            raise PixelwiseError(f"{path}: cannot be loaded by ONNX Runtime ({e})") from None
        self.path = path
        self.meta = read_metadata(path, self.session)
        self.input = self.session.get_inputs()[0].name
        self.multiple, self.min_size = self.meta["pad_multiple"], self.meta["min_size"]
        self.input_dtype = np.dtype(self.meta["input_dtype"])  # float32 for non-8-bit data
        self.temperature = 1.0  # a calibrated run's temperature is folded into the graph (meta["temperature"])

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """uint8 (or float32, see ``input_dtype``) (N, C, H, W) of any H, W -> float32 logits (N, K, H, W)."""
        h, w = batch.shape[-2:]
        if self.input_dtype == np.uint8 and batch.dtype != np.uint8:
            raise PixelwiseError(f"{self.path}: this model takes uint8 images, got {batch.dtype}")
        x = pad_to_multiple(np.ascontiguousarray(batch, dtype=self.input_dtype), self.multiple, self.min_size)
        return self.session.run(None, {self.input: x})[0][..., :h, :w]

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return softmax(np.ascontiguousarray(self.logits(batch), dtype=np.float32) / self.temperature)
