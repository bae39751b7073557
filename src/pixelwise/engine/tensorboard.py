"""TensorBoard event files of a training run: the epoch's scalars and a few validation predictions."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from pixelwise.data.build import DataBundle
from pixelwise.data.pixels import model_input
from pixelwise.engine.runtime import Runtime
from pixelwise.inference.padding import forward_padded
from pixelwise.report.plots import panel

IMAGES_PER_EPOCH = 2  # validation images whose predictions are logged after each evaluation


class TensorBoardLog:
    """Writes ``RUN/tensorboard/events.*``: ``train/*`` and ``val/*`` scalars per epoch, prediction panels."""

    def __init__(self, log_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package; imported only when used

        self.writer = SummaryWriter(str(log_dir))

    def epoch(self, row: dict[str, Any], model: torch.nn.Module, data: DataBundle, runtime: Runtime) -> None:
        """Log a metrics row (``train_loss``, ``val_miou``, ...) at its epoch; predictions when it was evaluated."""
        step = int(row["epoch"])
        for key, value in row.items():
            if key == "epoch" or not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            section, _, name = key.partition("_") if key.startswith(("train_", "val_")) else ("train", "", key)
            self.writer.add_scalar(f"{section}/{name}", value, step)
        if "val_miou" in row and data.val is not None:
            self._predictions(step, model, data, runtime)
        self.writer.flush()

    @torch.inference_mode()
    def _predictions(self, step: int, model: torch.nn.Module, data: DataBundle, runtime: Runtime) -> None:
        assert data.val is not None
        was_training = model.training
        model.eval()
        palette = data.summary.table.palette
        for index in range(min(IMAGES_PER_EPOCH, len(data.val))):
            image, truth = data.val.load(index)
            x = torch.from_numpy(model_input(image).transpose(2, 0, 1).copy())[None].to(runtime.device)
            pred = forward_padded(model, x, runtime).argmax(dim=1)[0].to(torch.uint8).cpu().numpy()
            name = data.val.pairs[index].image.name
            self.writer.add_image(f"val/{name}", panel(image, truth, pred, palette), step, dataformats="HWC")
        model.train(was_training)

    def close(self) -> None:
        self.writer.close()
