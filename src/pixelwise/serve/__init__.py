"""``pixelwise serve``: a model behind an HTTP API and a browser page (FastAPI and uvicorn: the ``serve`` extra).

An .onnx model is served by ONNX Runtime and imports no PyTorch; a run directory by PyTorch.
"""

from __future__ import annotations

from importlib import import_module

from pixelwise.errors import PixelwiseError

# import name -> the package that provides it
EXTRA = {"fastapi": "fastapi", "uvicorn": "uvicorn", "python_multipart": "python-multipart"}


def require_extra() -> None:
    """Fail with what to install when the ``serve`` extra is missing (before anything is half started)."""
    missing = []
    for module, package in EXTRA.items():
        try:
            import_module(module)
        except ImportError:
            missing.append(package)
    if missing:
        raise PixelwiseError(f"pixelwise serve needs the 'serve' extra ({', '.join(missing)} not installed): "
                             "pip install 'pixelwise[serve]'")
