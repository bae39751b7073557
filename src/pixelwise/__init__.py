"""pixelwise: train, evaluate, explain, optimize and deploy semantic segmentation models."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Segmenter", "__version__"]

if TYPE_CHECKING:
    from pixelwise.inference.predictor import Segmenter


def __getattr__(name: str) -> Any:
    # Importing torch takes seconds; load it only when the API is used, not for `pixelwise --help`.
    if name == "Segmenter":
        from pixelwise.inference.predictor import Segmenter

        return Segmenter
    raise AttributeError(f"module 'pixelwise' has no attribute {name!r}")
