"""The training loop: epochs of steps, evaluation, checkpoints, and the run directory.

Run directory: config.yaml (resolved), best.safetensors (best val mIoU), last.ckpt (resume state),
metrics.csv (one row per epoch), summary.json.
"""

from __future__ import annotations

import csv
import io
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import Progress, TextColumn

from pixelwise.config import Config
from pixelwise.data.build import DataBundle, build_datasets, default_workers, train_loader
from pixelwise.engine.checkpoint import atomic_write_text, load_state, save_state, save_weights
from pixelwise.engine.evaluate import evaluate
from pixelwise.engine.runtime import Runtime, resolve_runtime
from pixelwise.errors import PixelwiseError
from pixelwise.losses import create_loss
from pixelwise.models.factory import ARCHITECTURES, build_network, encoder_normalization
from pixelwise.optim import create_optimizer, lr_factor, set_lr
from pixelwise.progress import console, make_progress

METRIC_COLUMNS = ["epoch", "step", "train_loss", "val_loss", "val_miou", "val_pixel_accuracy", "lr",
                  "images_per_second", "epoch_seconds", "elapsed_seconds"]
WARMUP_STEPS = 2  # throughput is measured after these (first steps pay for allocation and kernel selection)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_config(cfg: Config, data: DataBundle) -> Config:
    """The config as run: the class table and channels the data checks settled are written in."""
    channels = data.summary.channels
    in_channels = channels if cfg.model.in_channels == "auto" else cfg.model.in_channels
    if in_channels != channels:
        raise PixelwiseError(
            f"model.in_channels is {in_channels} but the images have {channels} channel(s); leave model.in_channels "
            f"at auto, or set data.channels: {in_channels} to convert the images"
        )
    mean, std = encoder_normalization(cfg.model.encoder, in_channels, cfg.model.arch)
    return cfg.model_copy(update={
        "data": cfg.data.model_copy(update={"classes": data.summary.table, "channels": channels,
                                            "root": cfg.data.root.resolve() if cfg.data.root else None}),
        "model": cfg.model.model_copy(update={"in_channels": in_channels, "mean": cfg.model.mean or mean,
                                              "std": cfg.model.std or std}),
    })


def check_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to write over an earlier run unless told to resume it or overwrite it (checked before any work)."""
    if resume:
        if not (run_dir / "last.ckpt").is_file():
            raise PixelwiseError(f"{run_dir}: nothing to resume (no last.ckpt)")
        return
    if run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
        raise PixelwiseError(
            f"{run_dir}: the run directory already holds a run. Continue it with --resume {run_dir}, "
            "write elsewhere with --out DIR, or replace it with --overwrite."
        )


def start_run_dir(run_dir: Path) -> None:
    """Create the run directory, clearing a previous run's outputs (only reached with --overwrite)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in ("best.safetensors", "last.ckpt", "metrics.csv", "summary.json"):
        (run_dir / name).unlink(missing_ok=True)


def _csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return buf.getvalue()


@dataclass
class State:
    """Counters that survive a resume."""

    epoch: int = 0  # epochs completed
    step: int = 0
    elapsed: float = 0.0  # wall seconds of training, summed over resumed sessions
    best_miou: float = -1.0
    best_epoch: int = 0
    measured_images: int = 0  # images and seconds after the warm-up steps, for throughput
    measured_seconds: float = 0.0


class Trainer:
    """Fits one run: built from a validated Config, writes everything into ``run_dir``."""

    def __init__(self, cfg: Config, run_dir: Path, resume: bool = False, overwrite: bool = False) -> None:
        check_run_dir(run_dir, resume, overwrite)
        self.run_dir = run_dir
        seed_everything(cfg.train.seed)
        self.data = build_datasets(cfg.data, cfg.augment, cfg.train.seed)
        for note in self.data.notes:
            console.print(f"[yellow]note:[/] {note}")
        self.cfg = resolve_config(cfg, self.data)
        self.table = self.data.summary.table
        self.runtime: Runtime = resolve_runtime(cfg.train.device, cfg.train.amp, cfg.train.channels_last)
        model = build_network(self.cfg.model, self.cfg.model.in_channels, self.table.num_classes)
        if min(self.cfg.data.crop_size) < model.min_size:
            raise PixelwiseError(f"'{self.cfg.model.arch}' needs inputs of at least {model.min_size} pixels a side; "
                                 f"raise data.crop_size (now {list(self.cfg.data.crop_size)})")
        memory_format = torch.channels_last if self.runtime.channels_last else torch.preserve_format
        self.model = model.to(self.runtime.device, memory_format=memory_format)
        self.criterion = create_loss(self.cfg.loss, self.table.num_classes).to(self.runtime.device)
        self.optimizer = create_optimizer(self.model, self.cfg.optim)
        self.workers = default_workers(self.cfg.data.num_workers)
        self.loader, self.sampler = train_loader(self.data.train, self.cfg.train.batch_size, self.workers,
                                                 self.cfg.train.seed, pin_memory=self.runtime.device.type == "cuda")
        self.state = State()
        self.history: list[dict[str, Any]] = []
        if resume:
            self._load_resume_state()
        else:
            start_run_dir(run_dir)
        # On resume too: overrides such as a longer time budget belong to the run's config from now on.
        atomic_write_text(run_dir / "config.yaml", self.cfg.to_yaml())

    # --- persistence -----------------------------------------------------------------------------
    def _load_resume_state(self) -> None:
        saved = load_state(self.run_dir / "last.ckpt")
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.state = State(**saved["state"])
        self.history = list(saved["history"])
        console.print(f"resuming {self.run_dir} after epoch {self.state.epoch}, step {self.state.step}")

    def _save(self, improved: bool) -> None:
        if improved:
            save_weights(self.model, self.run_dir / "best.safetensors",
                         {"epoch": str(self.state.epoch), "miou": f"{self.state.best_miou:.6f}"})
        save_state(self.run_dir / "last.ckpt", {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "state": vars(self.state).copy(),
            "history": self.history,
        })
        atomic_write_text(self.run_dir / "metrics.csv", _csv(self.history))

    # --- stopping rules --------------------------------------------------------------------------
    def _planned_steps(self, steps_per_epoch: int) -> int:
        planned = self.cfg.train.epochs * steps_per_epoch
        return min(planned, self.cfg.train.max_steps) if self.cfg.train.max_steps else planned

    def _progress(self, planned: int) -> float:
        budget = self.cfg.train.time_budget_seconds
        by_time = self.state.elapsed / budget if budget else 0.0
        return max(self.state.step / max(planned, 1), by_time)

    def _eta(self, planned: int) -> str:
        """Time left by the step count or the time budget, whichever ends training first."""
        s = self.state
        if s.step == 0 or s.elapsed <= 0:
            return "-"
        left = (planned - s.step) * s.elapsed / s.step
        budget = self.cfg.train.time_budget_seconds
        if budget is not None:
            left = min(left, budget - s.elapsed)
        left = max(int(left), 0)
        return f"{left // 3600}:{left % 3600 // 60:02d}:{left % 60:02d}"

    def _stop_reason(self) -> str | None:
        t = self.cfg.train
        if t.max_steps is not None and self.state.step >= t.max_steps:
            return f"max_steps ({t.max_steps})"
        budget = t.time_budget_seconds
        if budget is not None and self.state.elapsed >= budget:
            return f"time_budget ({t.time_budget})"
        if self.state.epoch >= t.epochs:
            return f"epochs ({t.epochs})"
        return None

    # --- the loop --------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train until a stopping rule holds; returns the summary written to summary.json."""
        reason = self._stop_reason()
        if reason:
            console.print(f"[yellow]nothing to do:[/] the run already reached {reason}; raise it with --set")
            return self._summary(reason)
        t = self.cfg.train
        steps_per_epoch = max(len(self.data.train) // t.batch_size, 1)
        planned = self._planned_steps(steps_per_epoch)
        uses_encoder = ARCHITECTURES.get(self.cfg.model.arch).uses_encoder
        name = f"{self.cfg.model.arch}-{self.cfg.model.encoder}" if uses_encoder else self.cfg.model.arch
        console.print(
            f"training {name} on {len(self.data.train)} images "
            f"({self.table.num_classes} classes, {self.cfg.model.in_channels} channel(s)) "
            f"on {self.runtime.describe()}, "
            f"{self.workers} loader worker(s) -> {self.run_dir}"
        )
        progress = make_progress(TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[ips]} img/s"),
                                 TextColumn("eta {task.fields[eta]}"), eta=False)
        with progress:
            task = progress.add_task("train", total=planned, completed=self.state.step, loss="-", ips="-", eta="-")
            while reason is None:
                row = self._train_epoch(progress, task, planned)
                reason = self._stop_reason()
                self._end_epoch(row, evaluate_now=reason is not None or self.state.epoch % t.eval_every == 0)
        summary = self._summary(reason)
        best = "no validation data" if summary["best_miou"] is None else (
            f"best val mIoU {summary['best_miou']:.4f} (epoch {summary['best_epoch']})")
        console.print(f"stopped by {reason}: {best}, {summary['train_images_per_second']:.2f} train images/s")
        return summary

    def _train_epoch(self, progress: Progress, task: Any, planned: int) -> dict[str, Any]:
        """One pass over the training set (or until max_steps / time_budget); returns its metrics row."""
        t, s, rt = self.cfg.train, self.state, self.runtime
        self.sampler.set_epoch(s.epoch)
        loader = self.loader
        self.model.train()
        loss_sum = torch.zeros((), device=rt.device)
        shown_sum, shown_n, batches = 0.0, 0, 0
        epoch_images, epoch_start, last_tick = 0, time.perf_counter(), time.perf_counter()
        for images, masks in loader:
            images = images.to(rt.device, non_blocking=True)
            if rt.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            masks = masks.to(rt.device, non_blocking=True)
            lr = self.cfg.optim.lr * lr_factor(self._progress(planned), self.cfg.optim)
            set_lr(self.optimizer, lr)
            with rt.autocast():
                logits = self.model(images)
            loss = self.criterion(logits, masks)
            if not torch.isfinite(loss):
                raise PixelwiseError(
                    f"the loss became {loss.item()} at step {s.step + 1}; lower optim.lr or check the data. "
                    f"The last good checkpoint is {self.run_dir / 'last.ckpt'}."
                )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if t.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
            self.optimizer.step()
            loss_sum += loss.detach()
            batches += 1
            s.step += 1
            n = images.shape[0]
            epoch_images += n
            now = time.perf_counter()
            s.elapsed += now - last_tick
            if s.step > WARMUP_STEPS:
                s.measured_images += n
                s.measured_seconds += now - last_tick
            last_tick = now
            if batches % 5 == 0 or batches == 1:  # .item() syncs the device: not on every step
                total = loss_sum.item()
                shown = (total - shown_sum) / max(batches - shown_n, 1)
                shown_sum, shown_n = total, batches
                ips = s.measured_images / s.measured_seconds if s.measured_seconds else n / (now - epoch_start)
                progress.update(task, completed=s.step, loss=f"{shown:.4f}", ips=f"{ips:.1f}",
                                eta=self._eta(planned))
            else:
                progress.update(task, completed=s.step)
            reason = self._stop_reason()
            if reason and not reason.startswith("epochs"):  # max_steps / time_budget stop mid-epoch
                break
        s.epoch += 1
        seconds = time.perf_counter() - epoch_start
        return {
            "epoch": s.epoch, "step": s.step, "train_loss": loss_sum.item() / max(batches, 1), "lr": lr,
            "images_per_second": epoch_images / seconds if seconds > 0 else None, "epoch_seconds": seconds,
        }

    def _end_epoch(self, row: dict[str, Any], evaluate_now: bool) -> None:
        """Evaluate (if due), record the epoch's row and write the checkpoints; the time counts as training time."""
        s = self.state
        tick = time.perf_counter()
        if evaluate_now and self.data.val is not None:
            result = evaluate(self.model, self.data.val, self.data.val_sizes, self.table.names, self.runtime,
                              self.cfg.train.eval_batch_size, self.workers, self.criterion)
            miou = result["miou"] if result["miou"] is not None else 0.0
            row.update(val_loss=result["loss"], val_miou=miou, val_pixel_accuracy=result["pixel_accuracy"])
            improved = miou > s.best_miou
            if improved:
                s.best_miou, s.best_epoch = miou, s.epoch
            mark = " [green](best)[/]" if improved else ""
            console.print(f"epoch {s.epoch}: train loss {row['train_loss']:.4f}, val loss {result['loss']:.4f}, "
                          f"val mIoU {miou:.4f}{mark}")
        else:
            console.print(f"epoch {s.epoch}: train loss {row['train_loss']:.4f}")
            # Without validation data the latest weights are the model.
            improved = self.data.val is None
        s.elapsed += time.perf_counter() - tick
        row["elapsed_seconds"] = s.elapsed
        self.history.append(row)
        self._save(improved)

    def _summary(self, reason: str) -> dict[str, Any]:
        s = self.state
        summary = {
            "name": self.cfg.name,
            "best_miou": max(s.best_miou, 0.0) if self.data.val is not None else None,
            "best_epoch": s.best_epoch,
            "epochs": s.epoch,
            "steps": s.step,
            "wall_seconds": round(s.elapsed, 2),
            "train_images_per_second": s.measured_images / s.measured_seconds if s.measured_seconds else 0.0,
            "stopped_by": reason,
            "runtime": self.runtime.describe(),
            "train_images": len(self.data.train),
            "val_images": len(self.data.val) if self.data.val is not None else 0,
            "classes": self.table.names,
        }
        atomic_write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2))
        return summary
