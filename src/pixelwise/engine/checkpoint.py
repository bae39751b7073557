"""Checkpoints written atomically (temp file, fsync, rename) and loaded without running pickled code.

``best.safetensors`` holds weights only; ``last.ckpt`` holds the resume state (weights, optimizer, counters),
saved with torch.save and loaded with ``weights_only=True``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from pixelwise.atomic import (  # noqa: F401  (re-exported: checkpoints and run files share them)
    atomic_write,
    atomic_write_bytes,
    atomic_write_text,
    remove_stale_temp_files,
)
from pixelwise.errors import PixelwiseError


def save_weights(model: nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def load_weights(model: nn.Module, path: Path) -> None:
    """Load safetensors weights into ``model`` (strict: every key must match)."""
    try:
        state = load_file(str(path))
    except (OSError, SafetensorError) as e:
        raise PixelwiseError(f"{path}: cannot read the weights ({e})") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise PixelwiseError(
            f"{path}: weights do not fit the model in its config.yaml "
            f"(missing {len(missing)} keys, e.g. {missing[:3]}; unexpected {len(unexpected)}, e.g. {unexpected[:3]})"
        )


def save_state(path: Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_state(path: Path) -> dict[str, Any]:
    """Resume state; ``weights_only=True`` refuses anything but tensors and plain containers."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise PixelwiseError(f"{path}: no resume checkpoint in this run directory") from None
    except Exception as e:  # unpickling errors come in many types; none may run code with weights_only
        raise PixelwiseError(f"{path}: cannot load the checkpoint safely ({type(e).__name__}: {e})") from None
