"""Several runs as one model whose probabilities are the average of theirs (k-fold cross-validation's ensemble).

``Ensemble`` is an ``nn.Module`` like a run's ``Normalized`` network: it takes the images as decoded and returns
the log of the averaged softmax probabilities, so everything built for one network works unchanged: ``softmax``
of its output is the average (``Segmenter``, tiling, TTA, ``predict``), its argmax is the ensemble's class
(``eval``), and ``export`` writes it as one ONNX graph. Each member keeps its own normalisation (a z-scored fold
was normalised with its own training pixels).

A cross-validation parent (``train --folds K``) holds ``folds.json`` naming its fold runs; ``Segmenter.load`` on
the parent, or on a list of run directories, loads them through ``load_ensemble``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pixelwise.errors import PixelwiseError

FOLDS_FILE = "folds.json"
FLOOR = 1e-12  # probabilities are clamped before the log: a class no member gives any chance stays finite


class Ensemble(nn.Module):
    """The average of the members' softmax probabilities, returned as log-probabilities."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise PixelwiseError("an ensemble needs at least one model")
        self.members = nn.ModuleList(members)
        self.min_size = max(getattr(m, "min_size", 32) for m in members)
        self.pad_multiple = max(getattr(m, "pad_multiple", 32) for m in members)
        first = members[0]  # described in an export's metadata; each member applies its own
        self.scale = getattr(first, "scale", 255.0)
        self.register_buffer("mean", first.mean.clone(), persistent=False)
        self.register_buffer("std", first.std.clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([m(x).float().softmax(dim=1) for m in self.members]).mean(dim=0)
        return probs.clamp_min(FLOOR).log()


def fold_runs(parent: Path) -> list[Path]:
    """The run directories a cross-validation parent names in its folds.json."""
    try:
        listed = json.loads((parent / FOLDS_FILE).read_text())["runs"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PixelwiseError(f"{parent / FOLDS_FILE}: not a readable list of fold runs ({e})") from None
    runs = [parent / str(name) for name in listed]
    missing = [str(r) for r in runs if not (r / "best.safetensors").is_file()]
    if missing:
        raise PixelwiseError(f"{parent}: fold run(s) without best.safetensors: {', '.join(missing)}; finish their "
                             "training (pixelwise train ... --folds K continues where it stopped)")
    return runs


def load_ensemble(runs: list[Path], device: str = "auto", amp: str = "auto",
                  weights: str = "best.safetensors") -> tuple[Any, Any]:
    """(TorchBackend running the ``Ensemble`` of ``runs``, the first run's config); they must agree on classes,
    channels and pixel type."""
    from pixelwise.config import load_run_config
    from pixelwise.engine.checkpoint import load_run_network
    from pixelwise.engine.runtime import resolve_runtime
    from pixelwise.inference.torch_backend import TorchBackend

    if not runs:
        raise PixelwiseError("an ensemble needs at least one run directory")
    configs = [load_run_config(Path(r)) for r in runs]
    first = configs[0]
    members = []
    for run, cfg in zip(runs, configs, strict=True):
        same = (cfg.data.classes.names, cfg.model.in_channels, cfg.data.dtype or "uint8") == (
            first.data.classes.names, first.model.in_channels, first.data.dtype or "uint8")
        if not same:
            raise PixelwiseError(f"{run}: its classes, channels or pixel type differ from {runs[0]}'s; an ensemble "
                                 "averages models of the same task")
        members.append(load_run_network(Path(run), cfg, weights).eval())
    return TorchBackend(Ensemble(members), resolve_runtime(device, amp, channels_last=True)), first
