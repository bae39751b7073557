"""What ``pixelwise serve`` runs: its settings, validated once at the edge, and the model they name.

No web framework is imported here, so the CLI can check a model and its settings (and fail with one clear
message) before the ``serve`` extra is needed or a port is bound.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pixelwise.config import load_run_config
from pixelwise.data.io import DEFAULT_MAX_PIXELS
from pixelwise.errors import ConfigError, PixelwiseError
from pixelwise.inference.predictor import Segmenter

API_KEY_ENV = "PIXELWISE_API_KEY"
SUMMARY_KEYS = ("name", "best_miou", "best_epoch", "epochs", "steps", "stopped_by", "train_images", "val_images")
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)
# Upper bounds of --max-upload-mb (4 GiB: a body is held in memory) and --timeout (a day); inf or nan is refused.
MAX_UPLOAD_MB = 4096.0
MAX_TIMEOUT = 86400.0


class ServeSettings(BaseModel):
    """Everything a server process needs; travels to ``--workers`` processes as JSON."""

    model_config = ConfigDict(extra="forbid")

    model: str  # a run directory, an exported .onnx, or hf://OWNER/NAME[/PATH][@REVISION]
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1, le=64)
    api_key: str | None = Field(None, repr=False)  # required on every API request when set
    cors_origins: list[str] = []  # browser origins allowed to call the API (none: CORS off)
    max_upload_mb: float = Field(32.0, gt=0, le=MAX_UPLOAD_MB, allow_inf_nan=False)  # request body limit (finite)
    max_image_pixels: int | None = Field(None, ge=1)  # None: the run's data.max_image_pixels, or the default
    queue: int = Field(32, ge=0)  # requests that may wait for the model beyond the one it is running
    timeout: float = Field(60.0, gt=0, le=MAX_TIMEOUT, allow_inf_nan=False)  # s for a body, and again for an answer
    max_batch: int = Field(16, ge=1)  # images in one /predict/batch request
    device: str = "auto"  # PyTorch only
    threads: int | None = Field(None, ge=1)  # ONNX Runtime intra-op threads (None: its own choice)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)


def make_settings(**values: Any) -> ServeSettings:
    """Validated settings; a bad value is one ``ConfigError`` naming the option."""
    try:
        return ServeSettings(**values)
    except ValidationError as e:
        problems = "; ".join(f"--{'.'.join(map(str, x['loc'])).replace('_', '-')}: {x['msg']} (got {x['input']!r})"
                             for x in e.errors())
        raise ConfigError(problems) from None


def model_path(source: str) -> Path:
    """The local model ``source`` names (an hf:// model is downloaded first, or found in the cache)."""
    if _SCHEME.match(source):
        scheme = source.split("://", 1)[0].lower()
        if scheme != "hf":
            raise PixelwiseError(f"{source}: {scheme}:// models are not supported; give a run directory, an exported "
                                 ".onnx file or a Hugging Face Hub model (hf://OWNER/NAME)")
        from pixelwise.hubfiles import hub_model

        return hub_model(source)
    path = Path(source)
    if not path.exists():
        raise PixelwiseError(f"{path}: no such run directory or .onnx file")
    if path.is_file() and path.suffix.lower() != ".onnx":
        raise PixelwiseError(f"{path}: give a run directory (from `pixelwise train`) or an .onnx file "
                             "(from `pixelwise export`)")
    return path


@dataclass
class ServedModel:
    """The model behind the server and the facts ``GET /model`` reports about it."""

    segmenter: Segmenter
    source: Path
    backend: str  # "onnxruntime" or "pytorch"
    max_pixels: int
    metrics: dict[str, Any] = field(default_factory=dict)


def _metrics(folder: Path) -> dict[str, Any]:
    """The training summary of a run (an .onnx beside its run's summary.json counts too); {} when absent."""
    try:
        summary = json.loads((folder / "summary.json").read_text())
    except (OSError, ValueError):
        return {}
    return {k: summary[k] for k in SUMMARY_KEYS if k in summary}


def check_model(settings: ServeSettings) -> Path:
    """Fail early and cheaply (no PyTorch) on a model that cannot be served; returns its path."""
    path = model_path(settings.model)
    if path.is_dir():
        cfg = load_run_config(path)
        if not (path / "best.safetensors").is_file() and not (path / "folds.json").is_file():  # a run, or CV parent
            raise PixelwiseError(f"{path}: the run has no best.safetensors (did training finish?)")
        del cfg
    return path


def load_model(settings: ServeSettings) -> ServedModel:
    """Load the model once per server process: ONNX Runtime for an .onnx (no PyTorch), PyTorch for a run."""
    path = model_path(settings.model)
    # Each backend uses every core for one image by default; worker processes share the cores instead of
    # each starting a thread per core (which only thrashes).
    threads = settings.threads or (max(1, (os.cpu_count() or 1) // settings.workers) if settings.workers > 1 else None)
    if path.suffix.lower() == ".onnx":
        seg = Segmenter.load(path, threads=threads)
        limit = settings.max_image_pixels or DEFAULT_MAX_PIXELS
        return ServedModel(seg, path, "onnxruntime", limit, _metrics(path.parent))
    cfg = load_run_config(path)
    if threads:
        import torch

        torch.set_num_threads(threads)
    seg = Segmenter.load(path, device=settings.device)
    limit = settings.max_image_pixels or cfg.data.max_image_pixels
    return ServedModel(seg, path, "pytorch", limit, _metrics(path))
