"""The training loop: epochs of steps, evaluation, checkpoints, and the run directory.

Run directory: config.yaml (resolved), best.safetensors (best val mIoU), last.ckpt (resume state),
metrics.csv (one row per epoch), summary.json, dataset.json (class pixel counts), tensorboard/, report.html.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import Progress, TextColumn

from pixelwise.atomic import check_out_dir
from pixelwise.config import Config
from pixelwise.data.build import DataBundle, build_datasets, default_workers, require_crop_memory, train_loader
from pixelwise.engine.checkpoint import (
    atomic_write_text,
    load_model_state,
    load_optimizer_state,
    load_state,
    remove_stale_temp_files,
    save_state,
    save_weights,
)
from pixelwise.engine.distributed import Dist, all_reduce_max, all_reduce_sum, init_distributed
from pixelwise.engine.ema import WeightEma
from pixelwise.engine.evaluate import evaluate
from pixelwise.engine.runtime import Runtime, resolve_runtime
from pixelwise.engine.tensorboard import TensorBoardLog
from pixelwise.errors import PixelwiseError
from pixelwise.losses import create_loss, median_frequency_weights
from pixelwise.models.factory import ARCHITECTURES, build_network, encoder_normalization
from pixelwise.optim import FULL_BATCH, create_optimizer, lr_factor, set_lr
from pixelwise.progress import console, make_progress, notice, styled
from pixelwise.report.build import report_run

METRIC_COLUMNS = ["epoch", "step", "train_loss", "val_loss", "val_miou", "val_pixel_accuracy", "lr",
                  "images_per_second", "epoch_seconds", "elapsed_seconds"]
MAX_SKIPPED_IN_A_ROW = 10  # train.nonfinite_loss: skip gives up after this many non-finite batches in a row
WARMUP_STEPS = 2  # throughput is measured after these (first steps pay for allocation and kernel selection)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every random generator's state, in types ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "python": [version, list(internal), gauss],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def set_cuda_determinism(deterministic: bool, benchmark: bool) -> None:
    """cuDNN/cuBLAS settings for a CUDA run (process-wide, as torch keeps them).

    Training crops have one size, so by default cuDNN times its algorithms once per shape (H200, Unet-resnet18,
    batch 8: 405-517 against 364-435 train images/s in two runs). The fastest algorithms are not bitwise
    reproducible (atomic additions in backward passes): ``train.deterministic`` trades that speed for runs that
    repeat exactly with the same seed, as they do on a CPU.
    """
    torch.backends.cudnn.benchmark = benchmark and not deterministic
    torch.backends.cudnn.deterministic = deterministic
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's condition for deterministic results
    torch.use_deterministic_algorithms(deterministic, warn_only=True)


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
    loss = cfg.loss
    if loss.class_weights == "auto":
        loss = loss.model_copy(update={"class_weights": auto_class_weights(data)})
    return cfg.model_copy(update={
        "data": cfg.data.model_copy(update={"classes": data.summary.table, "channels": channels,
                                            "root": cfg.data.root.resolve() if cfg.data.root else None}),
        "model": cfg.model.model_copy(update={"in_channels": in_channels, "mean": cfg.model.mean or mean,
                                              "std": cfg.model.std or std}),
        "loss": loss,
    })


def auto_class_weights(data: DataBundle) -> list[float]:
    """Median-frequency class weights from the training masks, printed so the user sees what was chosen."""
    counts = np.stack([data.summary.image_class_pixels[str(p.image)] for p in data.train.pairs])
    weights = [round(float(w), 4) for w in median_frequency_weights(counts)]
    names = data.summary.table.names
    shown = ", ".join(f"{n} {w:g}" for n, w in zip(names, weights, strict=True))
    absent = [n for n, c in zip(names, counts.sum(axis=0), strict=True) if c == 0]
    extra = f" ({', '.join(absent)} absent from the training masks: weight 1)" if absent else ""
    notice("note", f"loss.class_weights auto (median frequency): {shown}{extra}")
    return weights


def dataset_stats(data: DataBundle) -> dict[str, Any]:
    """Images and labelled pixels per class of each split (dataset.json: the report's class frequencies)."""
    per_image = data.summary.image_class_pixels
    stats: dict[str, Any] = {"classes": data.summary.table.names}
    for split, dataset in (("train", data.train), ("val", data.val)):
        if dataset is not None:
            counts = np.sum([per_image[str(p.image)] for p in dataset.pairs], axis=0)
            stats[split] = {"images": len(dataset), "class_pixels": [int(c) for c in counts]}
    return stats


def check_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to write over an earlier run unless told to resume it or overwrite it (checked before any work)."""
    check_out_dir(run_dir)
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


def to_device(batch: tuple[torch.Tensor, torch.Tensor], rt: Runtime) -> tuple[torch.Tensor, torch.Tensor]:
    """A uint8 (images, masks) batch on the run's device, images in the run's memory format."""
    images, masks = batch
    images = images.to(rt.device, non_blocking=True)
    if rt.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, masks.to(rt.device, non_blocking=True)


@dataclass
class Prepared:
    """Everything a training loop needs, built from a validated config (shared by train and lr-find)."""

    cfg: Config  # resolved: class table, channels, normalisation and class weights written in
    data: DataBundle
    runtime: Runtime
    model: torch.nn.Module  # what the loop calls: the network, or DistributedDataParallel around it
    net: torch.nn.Module  # the network itself: saved, averaged (EMA) and evaluated
    criterion: torch.nn.Module
    optimizer: torch.optim.Optimizer
    workers: int
    loader: torch.utils.data.DataLoader
    sampler: Any
    dist: Dist


def prepare(cfg: Config) -> Prepared:
    """Check the data, then build the model, loss, optimizer and loader the config describes.

    Under torchrun every rank runs this: same seed, same checks, same initial weights (DDP also broadcasts
    rank 0's), then its own share of the training data.
    """
    dist = init_distributed(cfg.train.device)
    seed_everything(cfg.train.seed)
    data = build_datasets(cfg.data, cfg.augment, cfg.train.seed)
    for note in data.notes:
        notice("note", note)
    for warning in data.warnings:
        notice("warning", warning)
    cfg = resolve_config(cfg, data)
    table = data.summary.table
    runtime = resolve_runtime(cfg.train.device, cfg.train.amp, cfg.train.channels_last)
    if dist.enabled and runtime.device.type == "cuda":
        runtime = replace(runtime, device=torch.device("cuda", dist.local_rank))
    require_crop_memory(cfg.data, data.summary.channels, table.num_classes, cfg.train.batch_size, str(runtime.device))
    model = build_network(cfg.model, cfg.model.in_channels, table.num_classes)
    if min(cfg.data.crop_size) < model.min_size:
        raise PixelwiseError(f"'{cfg.model.arch}' needs inputs of at least {model.min_size} pixels a side; "
                             f"raise data.crop_size (now {list(cfg.data.crop_size)})")
    memory_format = torch.channels_last if runtime.channels_last else torch.preserve_format
    net = model.to(runtime.device, memory_format=memory_format)
    if dist.enabled and cfg.train.sync_bn:
        net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
    model = net
    if dist.enabled:
        ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(net, device_ids=ids)
    if runtime.device.type == "cuda":
        set_cuda_determinism(cfg.train.deterministic, cfg.train.cudnn_benchmark)
    if cfg.train.compile:  # the loop calls the compiled module; saving, EMA and evaluation use the bare network
        model = torch.compile(model)
    criterion = create_loss(cfg.loss, table.num_classes).to(runtime.device)
    if criterion.unweighted:
        notice("note", f"loss.class_weights do not apply to {', '.join(criterion.unweighted)} "
               "(they weight ce and bce, and focal/dice/jaccard/tversky in multiclass mode)")
    optimizer = create_optimizer(net, cfg.optim)
    workers = default_workers(cfg.data.num_workers)
    loader, sampler = train_loader(data.train, cfg.train.batch_size, workers, cfg.train.seed,
                                   pin_memory=runtime.device.type == "cuda", rank=dist.rank, world=dist.world)
    return Prepared(cfg, data, runtime, model, net, criterion, optimizer, workers, loader, sampler, dist)


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
    skipped_steps: int = 0  # batches skipped for a non-finite loss (train.nonfinite_loss: skip)


class Trainer:
    """Fits one run: built from a validated Config, writes everything into ``run_dir``."""

    def __init__(self, cfg: Config, run_dir: Path, resume: bool = False, overwrite: bool = False) -> None:
        check_run_dir(run_dir, resume, overwrite)  # every rank, before any rank can write
        self.run_dir = run_dir
        p = prepare(cfg)
        self.cfg, self.data, self.runtime, self.model, self.net = p.cfg, p.data, p.runtime, p.model, p.net
        self.criterion, self.optimizer, self.workers, self.loader, self.sampler = (
            p.criterion, p.optimizer, p.workers, p.loader, p.sampler)
        self.dist = p.dist
        self.writes = self.dist.is_main  # only rank 0 writes files
        if self.writes and run_dir.is_dir():
            remove_stale_temp_files(run_dir)  # left by a process killed while writing a checkpoint
        self.table = self.data.summary.table
        # fp16 autocast (CUDA) needs loss scaling; a disabled scaler passes everything through.
        self.scaler = torch.amp.GradScaler(self.runtime.device.type,
                                           enabled=self.runtime.amp_dtype == torch.float16)
        self.ema = WeightEma(self.net, self.cfg.train.ema) if self.cfg.train.ema else None
        self.state = State()
        self._skipped_in_row = 0
        # On a GPU a per-step `bool(isfinite(loss))` makes the host wait for every forward pass. With one process
        # and nonfinite_loss: stop, the first non-finite step is kept on the device instead and read where the
        # loop syncs anyway (every 5th batch, the epoch's end): training stops a few steps later, before anything
        # is saved. skip (decided before the backward) and torchrun (a collective per step) keep the sync.
        self.defer_finite_check = (self.runtime.device.type == "cuda" and not self.dist.enabled
                                   and self.cfg.train.nonfinite_loss == "stop")
        self._first_bad: torch.Tensor | None = None  # deferred: first step with a non-finite loss (-1: none)
        self._bad_value: torch.Tensor | None = None
        self.history: list[dict[str, Any]] = []
        if resume:
            self._load_resume_state()
        elif self.writes:
            start_run_dir(run_dir)
        self.tensorboard = None
        if self.writes:
            # On resume too: overrides such as a longer time budget belong to the run's config from now on.
            atomic_write_text(run_dir / "config.yaml", self.cfg.to_yaml())
            atomic_write_text(run_dir / "dataset.json", json.dumps(dataset_stats(self.data), indent=2))
            if self.cfg.train.tensorboard:
                self.tensorboard = TensorBoardLog(run_dir / "tensorboard")

    # --- persistence -----------------------------------------------------------------------------
    def _load_resume_state(self) -> None:
        saved = load_state(self.run_dir / "last.ckpt")
        load_model_state(self.net, saved["model"], self.run_dir / "last.ckpt")
        load_optimizer_state(self.optimizer, saved["optimizer"], self.run_dir / "last.ckpt")
        if saved.get("scaler"):
            self.scaler.load_state_dict(saved["scaler"])
        if self.ema is not None:
            if saved.get("ema"):
                self.ema.load_state_dict(saved["ema"])
            else:  # EMA switched on at resume: start averaging from the current weights
                self.ema = WeightEma(self.net, self.cfg.train.ema)
        self.state = State(**saved["state"])
        self.history = list(saved["history"])
        if saved.get("rng"):
            set_rng_state(saved["rng"])
        console.print(f"resuming {self.run_dir} after epoch {self.state.epoch}, step {self.state.step}")

    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights that are evaluated and saved as the model: the EMA when there is one."""
        return self.ema.module if self.ema is not None else self.net

    def _save(self, improved: bool) -> None:
        if not self.writes:
            return
        if improved:
            save_weights(self.eval_model, self.run_dir / "best.safetensors",
                         {"epoch": str(self.state.epoch), "miou": f"{self.state.best_miou:.6f}"})
        save_state(self.run_dir / "last.ckpt", {
            "model": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "rng": rng_state(),
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
            notice("nothing to do", f"the run already reached {reason}; raise it with --set")
            return self._summary(reason)
        t = self.cfg.train
        steps_per_epoch = len(self.loader)
        planned = self._planned_steps(steps_per_epoch)
        # gd: one update per pass over the training set, from the gradients of every batch of the epoch.
        self.accumulate = steps_per_epoch if self.cfg.optim.name in FULL_BATCH else t.accumulate
        uses_encoder = ARCHITECTURES.get(self.cfg.model.arch).uses_encoder
        name = f"{self.cfg.model.arch}-{self.cfg.model.encoder}" if uses_encoder else self.cfg.model.arch
        console.print(
            f"training {name} on {len(self.data.train)} images "
            f"({self.table.num_classes} classes, {self.cfg.model.in_channels} channel(s)) "
            f"on {self.runtime.describe()}, "
            f"{self.workers} loader worker(s) -> {self.run_dir}"
        )
        progress = make_progress(TextColumn("loss {task.fields[loss]}", markup=False),
                                 TextColumn("{task.fields[ips]} img/s", markup=False),
                                 TextColumn("eta {task.fields[eta]}", markup=False), eta=False)
        with progress:
            task = progress.add_task("train", total=planned, completed=self.state.step, loss="-", ips="-", eta="-")
            while reason is None:
                row = self._train_epoch(progress, task, planned)
                reason = self._stop_reason()
                self._end_epoch(row, evaluate_now=reason is not None or self.state.epoch % t.eval_every == 0)
        summary = self._summary(reason)
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.writes and self.cfg.train.report and self.data.val is not None:
            report_run(self.run_dir, "val", device=str(self.runtime.device))
        best = "no validation data" if summary["best_miou"] is None else (
            f"best val mIoU {summary['best_miou']:.4f} (epoch {summary['best_epoch']})")
        console.print(f"stopped by {reason}: {best}, {summary['train_images_per_second']:.2f} train images/s")
        return summary

    def _train_epoch(self, progress: Progress, task: Any, planned: int) -> dict[str, Any]:
        """One pass over the training set (or until max_steps / time_budget); returns its metrics row."""
        s, rt = self.state, self.runtime
        self.sampler.set_epoch(s.epoch)
        loader = self.loader
        self.model.train()
        loss_sum = torch.zeros((), device=rt.device)
        shown_sum, shown_n, batches, pending, unsynced = 0.0, 0, 0, 0, False
        self.optimizer.zero_grad(set_to_none=True)
        epoch_images, epoch_start, last_tick = 0, time.perf_counter(), time.perf_counter()
        for batch in loader:
            images, masks = to_device(batch, rt)
            with rt.autocast():
                logits = self.model(images)
            loss = self.criterion(logits, masks)
            n = images.shape[0]
            now = time.perf_counter()
            s.elapsed += now - last_tick
            if s.step >= WARMUP_STEPS:
                s.measured_images += n
                s.measured_seconds += now - last_tick
            last_tick = now
            if self.defer_finite_check:
                self._note_nonfinite(loss, s.step + 1)
                finite = True
            else:
                # One host sync per step. Under DDP it is one collective that also gives every rank the same clock,
                # so learning rate, skipping and stopping are decided alike everywhere and no rank waits forever.
                finite = self._sync_step(bool(torch.isfinite(loss)))
            lr = self.cfg.optim.lr * lr_factor(self._progress(planned), self.cfg.optim)
            set_lr(self.optimizer, lr)
            if finite:
                self._skipped_in_row = 0
                # Inside an accumulation group DDP need not all-reduce: only the group's last backward does.
                sync = pending + 1 == self.accumulate or not self.dist.enabled
                with contextlib.nullcontext() if sync else self.model.no_sync():
                    self.scaler.scale(loss / self.accumulate).backward()
                unsynced = not sync
                pending += 1
                if pending == self.accumulate:
                    self._optimizer_step(pending)
                    pending = 0
                loss_sum += loss.detach()
                batches += 1
            else:
                self._nonfinite_loss(float(loss.detach()), s.step + 1)
            s.step += 1
            epoch_images += n
            if batches % 5 == 0 or batches == 1:  # .item() syncs the device: not on every step
                self._check_deferred()
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
        if pending:  # an epoch (or a stop) ended inside an accumulation group: step on what was gathered
            if unsynced:  # its backwards skipped DDP's all-reduce: average the gradients over ranks here
                grads = [p.grad for p in self.net.parameters() if p.grad is not None]
                for g in grads:
                    all_reduce_sum(g)
                torch._foreach_div_(grads, self.dist.world)
            self._optimizer_step(pending)
        self._check_deferred()  # before the epoch's end saves anything
        s.elapsed += time.perf_counter() - last_tick
        self._sync_elapsed()
        s.epoch += 1
        seconds = time.perf_counter() - epoch_start
        return {
            "epoch": s.epoch, "step": s.step, "train_loss": loss_sum.item() / max(batches, 1), "lr": lr,
            "images_per_second": epoch_images / seconds if seconds > 0 else None, "epoch_seconds": seconds,
        }

    def _sync_step(self, finite: bool) -> bool:
        """Whether the loss is finite on every rank; the ranks' clocks are set to the slowest one's."""
        if not self.dist.enabled:
            return finite
        t = torch.tensor([0.0 if finite else 1.0, self.state.elapsed], dtype=torch.float64, device=self.runtime.device)
        all_reduce_max(t)
        self.state.elapsed = float(t[1])
        return bool(t[0] == 0)

    def _sync_elapsed(self) -> None:
        if self.dist.enabled:
            self._sync_step(True)

    def _note_nonfinite(self, loss: torch.Tensor, step: int) -> None:
        """Record ``step`` on the device if its loss is the first non-finite one (no host sync)."""
        loss = loss.detach().float()
        if self._first_bad is None:
            self._first_bad = torch.full((), -1, dtype=torch.int64, device=loss.device)
            self._bad_value = torch.zeros((), device=loss.device)
        bad = ~torch.isfinite(loss) & (self._first_bad < 0)
        self._first_bad = torch.where(bad, torch.full_like(self._first_bad, step), self._first_bad)
        self._bad_value = torch.where(bad, loss, self._bad_value)

    def _check_deferred(self) -> None:
        """Stop if a deferred check recorded a non-finite loss (one scalar read)."""
        if self._first_bad is not None and int(self._first_bad) >= 0:
            self._nonfinite_loss(float(self._bad_value), int(self._first_bad))

    def _nonfinite_loss(self, value: float | str, step: int) -> None:
        """Stop (default) or skip the batch; nothing is saved on the way out, so good checkpoints stay as they are."""
        s, t = self.state, self.cfg.train
        self._skipped_in_row += 1
        if math.isfinite(value):  # finite here, not on another process (torchrun)
            value = "not finite on another process"
        if t.nonfinite_loss == "skip" and self._skipped_in_row <= MAX_SKIPPED_IN_A_ROW:
            s.skipped_steps += 1
            notice("warning", f"the loss is {value} at step {step}: batch skipped ({s.skipped_steps} so far)")
            return
        last = self.run_dir / "last.ckpt"
        where = (f"The last good checkpoint is {last} (epoch {s.epoch}); continue from it with "
                 f"pixelwise train --resume {self.run_dir} --set optim.lr=<lower>"
                 if last.is_file() else "No checkpoint had been written yet.")
        in_row = f" ({self._skipped_in_row} batches in a row)" if t.nonfinite_loss == "skip" else ""
        raise PixelwiseError(
            f"the loss became {value} at step {step}{in_row}; training stopped. Lower optim.lr, set "
            f"train.grad_clip, or check the data (train.nonfinite_loss: skip drops such batches). {where}"
        )

    def _optimizer_step(self, batches: int) -> None:
        """Clip, step, clear, update the EMA; a short group's (``batches`` < accumulate) gradient is rescaled."""
        if batches != self.accumulate:
            grads = [p.grad for p in self.net.parameters() if p.grad is not None]
            torch._foreach_mul_(grads, self.accumulate / batches)
        if self.cfg.train.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.cfg.train.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.net)

    def _end_epoch(self, row: dict[str, Any], evaluate_now: bool) -> None:
        """Evaluate (if due), record the epoch's row and write the checkpoints; the time counts as training time."""
        s = self.state
        tick = time.perf_counter()
        if evaluate_now and self.data.val is not None:
            result = evaluate(self.eval_model, self.data.val, self.data.val_sizes, self.table.names, self.runtime,
                              self.cfg.train.eval_batch_size, self.workers, self.criterion, distributed=True)
            miou = result["miou"] if result["miou"] is not None else 0.0
            row.update(val_loss=result["loss"], val_miou=miou, val_pixel_accuracy=result["pixel_accuracy"])
            improved = miou > s.best_miou
            if improved:
                s.best_miou, s.best_epoch = miou, s.epoch
            console.print(styled(f"epoch {s.epoch}: train loss {row['train_loss']:.4f}, val loss {result['loss']:.4f}, "
                                 f"val mIoU {miou:.4f}", (" (best)" if improved else "", "green")))
        else:
            console.print(f"epoch {s.epoch}: train loss {row['train_loss']:.4f}")
            # Without validation data the latest weights are the model.
            improved = self.data.val is None
        s.elapsed += time.perf_counter() - tick
        row["elapsed_seconds"] = s.elapsed
        self.history.append(row)
        self._save(improved)
        if self.tensorboard is not None:
            self.tensorboard.epoch(row, self.eval_model, self.data, self.runtime)

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
            "skipped_steps": s.skipped_steps,
            "processes": self.dist.world,  # under torchrun: images/s above is per process
            "runtime": self.runtime.describe(),
            "train_images": len(self.data.train),
            "val_images": len(self.data.val) if self.data.val is not None else 0,
            "classes": self.table.names,
        }
        if self.writes:
            atomic_write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2))
        return summary
