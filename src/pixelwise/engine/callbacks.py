"""Callbacks: the one way to plug into training (progress display, checkpoints, early stopping, logging, reports).

``Trainer.fit`` calls, in order::

    on_train_start
    for each epoch:  on_epoch_start, on_step_end (after every batch), on_evaluate (when validated),
                     on_epoch_end (the epoch's metrics row is in ``state.metrics``), on_checkpoint (files written)
    on_train_end

Every hook gets the ``RunState``: counters, the latest metrics, the run directory and files, the model, and
``state.stop(reason)``, which ends training after the current step (the final evaluation and checkpoint still
happen). Callbacks run in the order given; the built-in ones that write files run on rank 0 only under torchrun.
``on_checkpoint`` comes once every callback has run the hook in which the files were written (``state.wrote``), so
each callback sees an epoch's ``on_epoch_end`` before its ``on_checkpoint``. A stop at an epoch's end (from
``on_epoch_end``, or the time budget running out there) before that epoch was evaluated: it is evaluated then
(``on_evaluate``), and the epoch ends once more with its validation in the row (``on_epoch_end``, then
``on_checkpoint`` with the best weights): loggers, the progress line and the checkpoint all get that evaluation.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from rich.progress import TextColumn

from pixelwise.progress import console, make_progress, styled

if TYPE_CHECKING:
    from pixelwise.config import Config
    from pixelwise.engine.trainer import Trainer


class RunState:
    """What a callback sees of a training run (read it; change the run only through ``stop``)."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.metrics: dict[str, Any] = {}  # the last epoch's row (on_evaluate: that evaluation's metrics)
        self.loss: torch.Tensor | None = None  # the last batch's loss, on the device (.item() waits for it)
        self.improved = False  # the last evaluation was the best so far
        self.paths: dict[str, Path] = {}  # files written so far: name -> path
        self.written: dict[str, Path] = {}  # files written in the hook being run, for the on_checkpoint after it
        self.stop_reason: str | None = None

    def wrote(self, paths: dict[str, Path]) -> None:
        """Record files a callback wrote: in ``paths`` now; ``on_checkpoint`` gets them once the hook being run
        has reached every callback."""
        self.paths.update(paths)
        self.written.update(paths)

    def stop(self, reason: str = "a callback") -> None:
        """End training after the current step; the last epoch is still evaluated and saved."""
        if self.stop_reason is None:
            self.stop_reason = reason

    epoch = property(lambda self: self.trainer.state.epoch, doc="epochs completed")
    step = property(lambda self: self.trainer.state.step, doc="batches done (all epochs, resumes included)")
    elapsed = property(lambda self: self.trainer.state.elapsed, doc="training seconds so far")
    best_miou = property(lambda self: self.trainer.state.best_miou)
    best_epoch = property(lambda self: self.trainer.state.best_epoch)
    history = property(lambda self: self.trainer.history, doc="one metrics row per epoch")
    run_dir = property(lambda self: self.trainer.run_dir)
    model = property(lambda self: self.trainer.eval_model, doc="the model evaluated and saved (EMA if on)")
    config = property(lambda self: self.trainer.cfg, doc="the resolved config")
    is_main = property(lambda self: self.trainer.dist.is_main, doc="rank 0 (the process that writes)")
    lr = property(lambda self: self.trainer.optimizer.param_groups[0]["lr"])


class Callback:
    """Override the hooks you need; each receives the ``RunState``."""

    def on_train_start(self, state: RunState) -> None: ...

    def on_epoch_start(self, state: RunState) -> None: ...

    def on_step_end(self, state: RunState) -> None:
        """After every batch: keep it cheap (``state.loss.item()`` waits for the GPU)."""

    def on_evaluate(self, state: RunState, metrics: dict[str, Any]) -> None: ...

    def on_epoch_end(self, state: RunState) -> None: ...

    def on_checkpoint(self, state: RunState, paths: dict[str, Path]) -> None: ...

    def on_train_end(self, state: RunState) -> None: ...


HOOKS = [name for name in vars(Callback) if name.startswith("on_")]


class CallbackList:
    """Calls a hook on every callback, in order."""

    def __init__(self, callbacks: list[Callback]) -> None:
        for cb in callbacks:
            if not any(callable(getattr(cb, hook, None)) for hook in HOOKS):
                raise TypeError(f"{cb!r} is not a callback: it has none of the hooks {', '.join(HOOKS)}")
        self.callbacks = list(callbacks)

    def fire(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            method = getattr(cb, hook, None)
            if method is not None:
                method(*args)

    def fire_then_checkpoint(self, hook: str, state: RunState, *args: Any) -> None:
        """``fire``, then ``on_checkpoint`` with the files the callbacks wrote in it (``state.wrote``), if any."""
        state.written = {}
        self.fire(hook, state, *args)
        if state.written:
            written, state.written = state.written, {}
            self.fire("on_checkpoint", state, written)

    def close(self) -> None:
        """Let callbacks holding resources (a live display, an open file) release them, even after an error.

        Every callback is closed, each in turn, even when one fails; then the first error is raised.
        """
        first: BaseException | None = None
        for cb in self.callbacks:
            if callable(getattr(cb, "close", None)):
                try:
                    cb.close()
                except BaseException as e:  # raised below, once the others are closed
                    first = first or e
        if first is not None:
            raise first


class ConsoleProgress(Callback):
    """The progress bar (loss, images/s, time left) and one line per epoch, on stderr."""

    def __init__(self, every: int = 5) -> None:
        self.every = every  # batches between loss readings (each one waits for the device)

    def on_train_start(self, state: RunState) -> None:
        t = state.trainer
        console.print(f"training {t.model_name} on {len(t.data.train)} images "
                      f"({t.table.num_classes} classes, {t.cfg.model.in_channels} channel(s)) "
                      f"on {t.runtime.describe()}, {t.workers} loader worker(s) -> {t.run_dir}")
        self.progress = make_progress(TextColumn("loss {task.fields[loss]}", markup=False),
                                      TextColumn("{task.fields[ips]} img/s", markup=False),
                                      TextColumn("eta {task.fields[eta]}", markup=False), eta=False)
        self.progress.start()
        self.task = self.progress.add_task("train", total=t.planned_steps, completed=t.state.step, loss="-",
                                           ips="-", eta="-")

    def on_epoch_start(self, state: RunState) -> None:
        self.shown_sum, self.shown_n = 0.0, 0

    def on_step_end(self, state: RunState) -> None:
        t = state.trainer
        batches = t.epoch_batches
        if batches and (batches % self.every == 0 or batches == 1):  # .item() syncs the device: not every step
            total = t.epoch_loss_sum.item()
            shown = (total - self.shown_sum) / max(batches - self.shown_n, 1)
            self.shown_sum, self.shown_n = total, batches
            s = t.state
            ips = s.measured_images / s.measured_seconds if s.measured_seconds else 0.0
            self.progress.update(self.task, completed=s.step, loss=f"{shown:.4f}", ips=f"{ips:.1f}", eta=t.eta())
        else:
            self.progress.update(self.task, completed=state.step)

    def on_epoch_end(self, state: RunState) -> None:
        row = state.metrics
        if row.get("val_miou") is not None:
            console.print(styled(f"epoch {state.epoch}: train loss {row['train_loss']:.4f}, val loss "
                                 f"{row['val_loss']:.4f}, val mIoU {row['val_miou']:.4f}",
                                 (" (best)" if state.improved else "", "green")))
        else:
            console.print(f"epoch {state.epoch}: train loss {row['train_loss']:.4f}")

    def close(self) -> None:
        """Called when training ends, normally or by an error: the bar stops drawing."""
        if hasattr(self, "progress"):
            self.progress.stop()


class Checkpointer(Callback):
    """Writes best.safetensors (when the evaluation improved), last.ckpt and metrics.csv after every epoch (and again
    when a stopped epoch ends once more with its late evaluation).

    ``on_checkpoint`` follows once every callback has had the epoch's ``on_epoch_end`` (``RunState.wrote``).
    """

    def on_epoch_end(self, state: RunState) -> None:
        if state.is_main:
            state.wrote(state.trainer.save_checkpoint(state.improved))


class EarlyStopping(Callback):
    """Stop when val mIoU has not risen by more than ``min_delta`` for ``patience`` evaluations in a row.

    Counts evaluations, not epochs (``train.eval_every``). On resume the count is rebuilt from the run's history.
    """

    def __init__(self, patience: int, min_delta: float = 0.0) -> None:
        if patience < 1:
            raise ValueError("patience is a number of evaluations, at least 1")
        self.patience, self.min_delta = patience, min_delta
        self.best, self.wait = -math.inf, 0

    def _see(self, miou: float | None) -> None:
        if miou is None:
            return
        if miou > self.best + self.min_delta:
            self.best, self.wait = miou, 0
        else:
            self.wait += 1

    def on_train_start(self, state: RunState) -> None:
        self.best, self.wait = -math.inf, 0
        for row in state.history:
            self._see(row.get("val_miou"))

    def on_evaluate(self, state: RunState, metrics: dict[str, Any]) -> None:
        self._see(metrics.get("miou"))
        if self.wait >= self.patience:
            state.stop(f"early_stopping (val mIoU not above {self.best:.4f} + {self.min_delta:g} for "
                       f"{self.patience} evaluation(s))")


def core_callbacks(cfg: Config) -> list[Callback]:
    """The callbacks every training run has: progress, checkpoints, and early stopping when configured."""
    callbacks: list[Callback] = [ConsoleProgress(), Checkpointer()]
    if cfg.train.early_stopping is not None:
        callbacks.append(EarlyStopping(cfg.train.early_stopping.patience, cfg.train.early_stopping.min_delta))
    return callbacks
