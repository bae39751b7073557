"""TensorBoard event files of a training run (a callback): the epoch's scalars and a few validation predictions."""

from __future__ import annotations

import importlib.util
import math
from typing import Any

import torch

from pixelwise.data.pixels import model_input
from pixelwise.engine.callbacks import Callback, RunState
from pixelwise.engine.padding import forward_padded
from pixelwise.errors import PixelwiseError
from pixelwise.report.plots import panel

IMAGES_PER_EPOCH = 2  # validation images whose predictions are logged after each evaluation


def tensorboard_installed() -> bool:
    """Whether the tensorboard package (the ``tensorboard`` extra) is there; torch writes event files through it."""
    return importlib.util.find_spec("tensorboard") is not None


class TensorBoard(Callback):
    """Writes ``RUN/tensorboard/events.*``: ``train/*`` and ``val/*`` scalars per epoch, prediction panels."""

    def __init__(self) -> None:
        if not tensorboard_installed():
            raise PixelwiseError("TensorBoard event files need the tensorboard package: pip install "
                                 "'pixelwise[tensorboard]' (or train without them: train.tensorboard: false)")
        self.writer: Any = None

    def on_train_start(self, state: RunState) -> None:
        if state.is_main:
            from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package; imported when used

            self.writer = SummaryWriter(str(state.run_dir / "tensorboard"))

    def on_epoch_end(self, state: RunState) -> None:
        """Log the epoch's metrics row (``train_loss``, ``val_miou``, ...); predictions when it was evaluated."""
        if self.writer is None:
            return
        row = state.metrics
        step = int(row["epoch"])
        for key, value in row.items():
            if key == "epoch" or not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            section, _, name = key.partition("_") if key.startswith(("train_", "val_")) else ("train", "", key)
            self.writer.add_scalar(f"{section}/{name}", value, step)
        if "val_miou" in row and state.trainer.data.val is not None:
            self._predictions(step, state)
        self.writer.flush()

    @torch.inference_mode()
    def _predictions(self, step: int, state: RunState) -> None:
        t = state.trainer
        model, val, runtime = state.model, t.data.val, t.runtime
        was_training = model.training
        model.eval()
        for index in range(min(IMAGES_PER_EPOCH, len(val))):
            if hasattr(val, "load"):  # files: the decoded image in its own type, and what the model takes of it
                shown, truth = val.load(index)
                x = torch.from_numpy(model_input(shown).transpose(2, 0, 1).copy())
                name = val.pairs[index].image.name
            else:  # the user's own Dataset: (C, H, W) and (H, W) tensors
                x, truth = val[index]
                shown, truth, name = x.permute(1, 2, 0).numpy(), truth.numpy(), f"item {index}"
            pred = forward_padded(model, x[None].to(runtime.device), runtime).argmax(dim=1)[0]
            self.writer.add_image(f"val/{name}", panel(shown, truth, pred.to(torch.uint8).cpu().numpy(),
                                                       t.table.palette), step, dataformats="HWC")
        model.train(was_training)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
