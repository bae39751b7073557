"""Checkpoints written atomically (temp file, fsync, rename) and loaded without running pickled code.

``best.safetensors`` holds weights only; ``last.ckpt`` holds the resume state (weights, optimizer, counters),
saved with torch.save and loaded with ``weights_only=True``.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from pixelwise.errors import PixelwiseError


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` then move ``tmp`` over ``path``: readers see the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            kept = f"the previous {path.name} is intact" if path.exists() else "nothing was written"
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise PixelwiseError(f"{path}: no space left on the device ({kept}); free some space and run "
                                     "again (an interrupted training run continues with --resume)") from None
            raise PixelwiseError(f"{path}: cannot be written ({e.strerror or e}; {kept})") from None
        raise


def remove_stale_temp_files(folder: Path) -> None:
    """Delete temporary files a killed process left behind in ``folder`` (the finished files are intact)."""
    for tmp in folder.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


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
