"""pixelwise: train, evaluate, explain, optimize and deploy semantic segmentation models.

    >>> import pixelwise as pw
    >>> run = pw.train(data="data/cells", model="unet", encoder="resnet18", **{"train.time_budget": "10m"})
    >>> run.summary["best_miou"]
    >>> seg = pw.Segmenter.load(run.dir)        # or run.segmenter()
    >>> mask = seg.predict("image.png")
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> module. Importing torch takes seconds: names load on first use (`pixelwise --help` stays quick),
# yet they are listed by dir() and completion.
_EXPORTS = {
    "train": "pixelwise.api",
    "evaluate": "pixelwise.api",
    "load_config": "pixelwise.api",
    "Run": "pixelwise.api",
    "Config": "pixelwise.config",
    "Segmenter": "pixelwise.inference.predictor",
    "Callback": "pixelwise.engine.callbacks",
    "RunState": "pixelwise.engine.callbacks",
    "EarlyStopping": "pixelwise.engine.callbacks",
    "PixelwiseError": "pixelwise.errors",
    "ConfigError": "pixelwise.errors",
    "DataError": "pixelwise.errors",
}
__all__ = ["Callback", "Config", "ConfigError", "DataError", "EarlyStopping", "PixelwiseError", "Run", "RunState",
           "Segmenter", "__version__", "evaluate", "load_config", "train"]
assert set(__all__) == {*_EXPORTS, "__version__"}

if TYPE_CHECKING:
    from pixelwise.api import Run, evaluate, load_config, train
    from pixelwise.config import Config
    from pixelwise.engine.callbacks import Callback, EarlyStopping, RunState
    from pixelwise.errors import ConfigError, DataError, PixelwiseError
    from pixelwise.inference.predictor import Segmenter


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'pixelwise' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
