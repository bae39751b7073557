"""The ONNX Runtime backend of ``Segmenter``: an exported model, no PyTorch needed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pixelwise.errors import PixelwiseError
from pixelwise.geometry import pad_amounts

METADATA_KEY = "pixelwise"  # JSON in the model's metadata: classes, channels, normalisation, stride, crop


def pad_to_multiple(batch: np.ndarray, multiple: int, min_size: int = 0) -> np.ndarray:
    """numpy twin of ``inference.padding.pad_to_multiple`` (same geometry): pad (N, C, H, W) bottom/right."""
    ph, pw, reflect = pad_amounts(*batch.shape[-2:], multiple, min_size)
    if ph == 0 and pw == 0:
        return batch
    return np.pad(batch, ((0, 0), (0, 0), (0, ph), (0, pw)), mode="reflect" if reflect else "edge")


def softmax(logits: np.ndarray, axis: int = 1) -> np.ndarray:
    z = logits - logits.max(axis=axis, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=axis, keepdims=True)
    return z


def read_metadata(path: Path, session: Any) -> dict[str, Any]:
    meta = session.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in meta:
        raise PixelwiseError(f"{path}: this ONNX model was not exported by pixelwise (no '{METADATA_KEY}' metadata: "
                             "class table, channels, normalisation); export it with `pixelwise export RUN`")
    return json.loads(meta[METADATA_KEY])


class OnnxBackend:
    """An exported pixelwise model (uint8 or float32 NCHW input, preprocessing inside the graph) in ONNX Runtime."""

    name = "onnxruntime"

    def __init__(self, path: Path, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise PixelwiseError("onnxruntime is not installed: pip install onnxruntime") from None
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
        self.multiple = int(self.meta.get("pad_multiple", 32))
        self.min_size = int(self.meta.get("min_size", 0))
        self.input_dtype = np.dtype(self.meta.get("input_dtype", "uint8"))  # float32 for non-8-bit data

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """uint8 (or float32, see ``input_dtype``) (N, C, H, W) of any H, W -> float32 logits (N, K, H, W)."""
        h, w = batch.shape[-2:]
        if self.input_dtype == np.uint8 and batch.dtype != np.uint8:
            raise PixelwiseError(f"{self.path}: this model takes uint8 images, got {batch.dtype}")
        x = pad_to_multiple(np.ascontiguousarray(batch, dtype=self.input_dtype), self.multiple, self.min_size)
        return self.session.run(None, {self.input: x})[0][..., :h, :w]

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return softmax(np.ascontiguousarray(self.logits(batch), dtype=np.float32))
