"""The PyTorch backend of ``Segmenter``: a run's network on a device, uint8 tiles in, probabilities out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from pixelwise.config import Config
from pixelwise.engine.checkpoint import load_run_network
from pixelwise.engine.padding import forward_padded
from pixelwise.engine.runtime import Runtime, resolve_runtime
from pixelwise.models.factory import Normalized, wrap_network


class TorchBackend:
    """Calls a ``Normalized`` network (0-255 input) with the runtime's device, autocast and memory format."""

    name = "pytorch"

    def __init__(self, model: Normalized, runtime: Runtime, temperature: float = 1.0) -> None:
        self.runtime = runtime
        self.model = model.to(runtime.device, memory_format=torch.channels_last).eval()
        self.temperature = temperature  # probabilities are softmax(logits / temperature) (``pixelwise calibrate``)

    def _logits(self, batch: np.ndarray) -> torch.Tensor:
        batch = np.ascontiguousarray(batch)
        # A view of a read-only cached image: torch wants memory it may write. A flipped side 1 pixel long: numpy
        # counts it as contiguous, so the line above keeps its negative stride, which torch.from_numpy refuses.
        if not batch.flags.writeable or any(s < 0 for s in batch.strides):
            batch = batch.copy()
        x = torch.from_numpy(batch).to(self.runtime.device)
        return forward_padded(self.model, x, self.runtime).float()

    @torch.inference_mode()
    def logits(self, batch: np.ndarray) -> np.ndarray:
        """uint8 (N, C, H, W) of any H, W -> float32 logits (N, K, H, W), before any temperature."""
        return self._logits(batch).cpu().numpy()

    @torch.inference_mode()
    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """uint8 (N, C, H, W) of any H, W -> float32 probabilities (N, K, H, W)."""
        return (self._logits(batch) / self.temperature).softmax(dim=1).cpu().numpy()


def load_torch_backend(run_dir: Path, cfg: Config, device: str = "auto", weights: str = "best.safetensors",
                       amp: str = "auto", network: nn.Module | None = None) -> TorchBackend:
    """The run's network with its weights (safetensors: no pickled code runs).

    ``network``: for a run that trained your own ``nn.Module``, an instance of it to load the weights into.
    """
    if network is None and (Path(run_dir) / "folds.json").is_file():  # a cross-validation parent: its folds' average
        from pixelwise.inference.ensemble import fold_runs, load_ensemble

        return load_ensemble(fold_runs(Path(run_dir)), device, amp, weights)[0]
    wrapped = None if network is None else wrap_network(network, cfg.model, int(cfg.model.in_channels))
    model = load_run_network(run_dir, cfg, weights, into=wrapped)
    return TorchBackend(model, resolve_runtime(device, amp, channels_last=True))
