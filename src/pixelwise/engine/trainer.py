"""The training loop: epochs of steps, evaluation, stopping rules, resume state; everything else is a callback.

Building the parts is ``engine.setup``; the run directory's files ``engine.rundir``; progress, checkpoints and
early stopping are callbacks (``engine.callbacks``), as are TensorBoard and the report (``report/``).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pixelwise.config import Config
from pixelwise.engine.callbacks import Callback, CallbackList, RunState, core_callbacks
from pixelwise.engine.checkpoint import (
    atomic_write_text,
    load_model_state,
    load_optimizer_state,
    load_state,
    remove_stale_temp_files,
    save_state,
    save_weights,
)
from pixelwise.engine.distributed import all_reduce_max, all_reduce_sum, launched_rank
from pixelwise.engine.ema import WeightEma
from pixelwise.engine.evaluate import evaluate
from pixelwise.engine.finite import NonFiniteGuard
from pixelwise.engine.progressive import progressive_crop
from pixelwise.engine.rng import rng_state, set_rng_state
from pixelwise.engine.rundir import RunLock, check_run_dir, metrics_csv, start_run_dir, write_json
from pixelwise.engine.runtime import to_device
from pixelwise.engine.setup import Parts, dataset_stats, prepare
from pixelwise.models.factory import ARCHITECTURES, CUSTOM_ARCH
from pixelwise.optim import FULL_BATCH, lr_factor, set_lr
from pixelwise.progress import console, notice

WARMUP_STEPS = 2  # throughput is measured after these (first steps pay for allocation and kernel selection)


@dataclass
class State:
    """Counters that survive a resume (saved in last.ckpt)."""

    epoch: int = 0  # epochs completed
    step: int = 0
    elapsed: float = 0.0  # wall seconds of training, summed over resumed sessions
    best_miou: float = -1.0
    best_epoch: int = 0
    measured_images: int = 0  # images and seconds after the warm-up steps, for throughput
    measured_seconds: float = 0.0
    images_seen: int = 0  # every training image, warm-up included (throughput of runs shorter than the warm-up)
    skipped_steps: int = 0  # batches skipped for a non-finite loss (train.nonfinite_loss: skip)


class Trainer:
    """Fits one run: built from a validated Config, writes everything into ``run_dir``.

    Args:
        callbacks: called at each stage of ``fit`` (see ``engine.callbacks``); ``None``: progress display,
            checkpoints and (if configured) early stopping. ``pixelwise.train`` adds TensorBoard and the report.
        parts: your own datasets and/or network instead of the config's (``engine.setup.Parts``).
    """

    def __init__(self, cfg: Config, run_dir: Path | str, resume: bool = False, overwrite: bool = False,
                 callbacks: list[Callback] | None = None, parts: Parts | None = None) -> None:
        self.run_dir = run_dir = Path(run_dir)
        check_run_dir(run_dir, resume, overwrite)  # every rank, before any rank can write
        self.lock = RunLock(run_dir) if launched_rank() == 0 else None  # the one writer, until fit() ends
        try:
            self._build(cfg, run_dir, resume, callbacks, parts)
        except BaseException:
            self.release(tidy=True)
            raise

    def release(self, tidy: bool = False) -> None:
        """Give up the run directory's lock (``fit`` does when it ends; see ``rundir.RunLock``)."""
        if self.lock is not None:
            self.lock.release(tidy)

    def _build(self, cfg: Config, run_dir: Path, resume: bool, callbacks: list[Callback] | None,
               parts: Parts | None) -> None:
        p = prepare(cfg if cfg.name else cfg.model_copy(update={"name": run_dir.name}), parts,  # named after its folder
                    resume=resume)
        self.cfg, self.data, self.runtime, self.model, self.net = p.cfg, p.data, p.runtime, p.model, p.net
        self.criterion, self.optimizer, self.workers, self.loader, self.sampler = (
            p.criterion, p.optimizer, p.workers, p.loader, p.sampler)
        self.dist, self.distilling = p.dist, getattr(p.criterion, "needs_images", False)
        self.writes = self.dist.is_main  # only rank 0 writes files
        if self.writes and run_dir.is_dir():
            remove_stale_temp_files(run_dir)  # left by a process killed while writing a checkpoint
        self.table = self.data.summary.table
        # fp16 autocast (CUDA) needs loss scaling; a disabled scaler passes everything through.
        self.scaler = torch.amp.GradScaler(self.runtime.device.type,
                                           enabled=self.runtime.amp_dtype == torch.float16)
        self.ema = WeightEma(self.net, self.cfg.train.ema) if self.cfg.train.ema else None
        self.state = State()
        self.history: list[dict[str, Any]] = []
        policy = self.cfg.train.nonfinite_loss
        self.guard = NonFiniteGuard(policy, deferred=self.runtime.device.type == "cuda" and not self.dist.enabled
                                    and policy == "stop")
        if resume:
            self._load_resume_state()
        elif self.writes:
            start_run_dir(run_dir)
        if self.writes:
            # On resume too: overrides such as a longer time budget belong to the run's config from now on.
            atomic_write_text(run_dir / "config.yaml", self.cfg.to_yaml())
            write_json(run_dir / "dataset.json", dataset_stats(self.data))
        self.callbacks = CallbackList(core_callbacks(self.cfg) if callbacks is None else callbacks)
        self.run_state = RunState(self)
        self.accumulate = self.cfg.train.accumulate
        self.planned_steps = 0
        self.epoch_batches, self.epoch_loss_sum = 0, torch.zeros(())

    @property
    def defer_finite_check(self) -> bool:
        """Whether non-finite losses are found on the device and read later (one CUDA process, policy stop)."""
        return self.guard.deferred

    @defer_finite_check.setter
    def defer_finite_check(self, value: bool) -> None:
        self.guard.deferred = value

    @property
    def model_name(self) -> str:
        arch = self.cfg.model.arch
        uses_encoder = arch != CUSTOM_ARCH and ARCHITECTURES.get(arch).uses_encoder
        return f"{arch}-{self.cfg.model.encoder}" if uses_encoder else arch

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

    def save_checkpoint(self, improved: bool) -> dict[str, Path]:
        """Write last.ckpt and metrics.csv, and best.safetensors when ``improved``; returns what was written."""
        paths = {}
        if improved:
            paths["best"] = self.run_dir / "best.safetensors"
            save_weights(self.eval_model, paths["best"],
                         {"epoch": str(self.state.epoch), "miou": f"{self.state.best_miou:.6f}"})
        paths["last"] = self.run_dir / "last.ckpt"
        save_state(paths["last"], {
            "model": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "rng": rng_state(),
            "state": vars(self.state).copy(),
            "history": self.history,
        })
        paths["metrics"] = self.run_dir / "metrics.csv"
        atomic_write_text(paths["metrics"], metrics_csv(self.history))
        return paths

    # --- stopping rules --------------------------------------------------------------------------
    def _planned_steps(self, steps_per_epoch: int) -> int:
        planned = self.cfg.train.epochs * steps_per_epoch
        return min(planned, self.cfg.train.max_steps) if self.cfg.train.max_steps else planned

    def _progress(self) -> float:
        budget = self.cfg.train.time_budget_seconds
        by_time = self.state.elapsed / budget if budget else 0.0
        return max(self.state.step / max(self.planned_steps, 1), by_time)

    def eta(self) -> str:
        """Time left by the step count or the time budget, whichever ends training first."""
        s = self.state
        if s.step == 0 or s.elapsed <= 0:
            return "-"
        left = (self.planned_steps - s.step) * s.elapsed / s.step
        budget = self.cfg.train.time_budget_seconds
        left = max(int(left if budget is None else min(left, budget - s.elapsed)), 0)
        return f"{left // 3600}:{left % 3600 // 60:02d}:{left % 60:02d}"

    def _stop_reason(self) -> str | None:
        t = self.cfg.train
        if self.run_state.stop_reason is not None:
            return self.run_state.stop_reason
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
        """Train until a stopping rule holds (or a callback stops it); returns the summary (summary.json)."""
        reason = self._stop_reason()
        if reason:
            notice("nothing to do", f"the run already reached {reason}; raise it with --set")
            self.release()
            return self._summary(reason)
        steps_per_epoch = len(self.loader)
        self.planned_steps = self._planned_steps(steps_per_epoch)
        # gd: one update per pass over the training set, from the gradients of every batch of the epoch.
        self.accumulate = steps_per_epoch if self.cfg.optim.name in FULL_BATCH else self.cfg.train.accumulate
        rs = self.run_state
        with contextlib.ExitStack() as cleanup:  # on the way out, last first, each even when the one before fails:
            cleanup.callback(self.release)  # the run directory's lock, whatever happens
            cleanup.callback(self.callbacks.close)  # every callback's close (the first error is raised after all)
            self.callbacks.fire("on_train_start", rs)
            while reason is None:
                self.callbacks.fire("on_epoch_start", rs)
                row = self._train_epoch()
                reason = self._stop_reason()
                evaluated = reason is not None or self.state.epoch % self.cfg.train.eval_every == 0
                self._end_epoch(row, evaluate_now=evaluated)
                reason = reason or self._stop_reason()  # a callback may stop training at the epoch's end, or time
                if reason is not None and not evaluated and self.data.val is not None:  # run out there: the last
                    self._evaluate(row)  # epoch is still evaluated into its row, and ends again with it (loggers,
                    rs.metrics = row  # progress line, checkpoint)
                    self.callbacks.fire_then_checkpoint("on_epoch_end", rs)
            summary = self._summary(reason)
            self.callbacks.fire("on_train_end", rs)
        best = "no validation mIoU" if summary["best_miou"] is None else (
            f"best val mIoU {summary['best_miou']:.4f} (epoch {summary['best_epoch']})")
        ips = summary["train_images_per_second"]
        console.print(f"stopped by {reason}: {best}" + (f", {ips:.2f} train images/s" if ips is not None else ""))
        return summary

    def _train_epoch(self) -> dict[str, Any]:
        """One pass over the training set (or until a stopping rule holds); returns its metrics row."""
        s, rt = self.state, self.runtime
        self.sampler.set_epoch(s.epoch)
        self.model.train()
        self.epoch_loss_sum, self.epoch_batches = torch.zeros((), device=rt.device), 0
        self._pending, self._unsynced, lr = 0, False, self.optimizer.param_groups[0]["lr"]
        self.optimizer.zero_grad(set_to_none=True)
        epoch_images, epoch_start = 0, time.perf_counter()
        self._last_tick = epoch_start
        for batch in self.loader:
            lr = self._train_step(batch)
            s.step += 1
            epoch_images += batch[0].shape[0]
            if self.epoch_batches % 5 == 0 or self.epoch_batches == 1:
                self.guard.check_deferred(self.run_dir, s.epoch)  # where the progress bar reads the loss anyway
            self.callbacks.fire("on_step_end", self.run_state)
            reason = self._stop_reason()
            if reason and not reason.startswith("epochs"):  # max_steps / time_budget / a callback stop mid-epoch
                break
        if self._pending:  # an epoch (or a stop) ended inside an accumulation group: step on what was gathered
            if self._unsynced:  # its backwards skipped DDP's all-reduce: average the gradients over ranks here
                grads = [p.grad for p in self.net.parameters() if p.grad is not None]
                for g in grads:
                    all_reduce_sum(g)
                torch._foreach_div_(grads, self.dist.world)
            self._optimizer_step(self._pending)
        self.guard.check_deferred(self.run_dir, s.epoch)  # before the epoch's end saves anything
        self.guard.check_weights(self.net, self.run_dir, s.epoch)
        s.elapsed += time.perf_counter() - self._last_tick
        self._sync_elapsed()
        s.epoch += 1
        seconds = time.perf_counter() - epoch_start
        return {
            "epoch": s.epoch, "step": s.step, "train_loss": self.epoch_loss_sum.item() / max(self.epoch_batches, 1),
            "lr": lr, "images_per_second": epoch_images / seconds if seconds > 0 else None, "epoch_seconds": seconds,
        }

    def _train_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> float:
        """Forward, loss, the finite check, backward and (every ``accumulate`` batches) the optimizer step.

        Returns the learning rate used. Time counts from the previous step's end to this forward's launch, so
        the loader's wait is in it, as the user waits for both.
        """
        s, rt = self.state, self.runtime
        if self.cfg.data.crop_start < 1.0:  # progressive crops: small first (engine/progressive.py)
            batch = progressive_crop(batch, self.cfg.data, self._progress(), getattr(self.net, "min_size", 32))
        images, masks = to_device(batch, rt)
        with rt.autocast():
            logits = self.model(images)
        # a distillation loss runs its teacher on the same images (engine/distill.py)
        loss = self.criterion(logits, masks, images) if self.distilling else self.criterion(logits, masks)
        now = time.perf_counter()
        s.elapsed += now - self._last_tick
        s.images_seen += images.shape[0]
        if s.step >= WARMUP_STEPS:
            s.measured_images += images.shape[0]
            s.measured_seconds += now - self._last_tick
        self._last_tick = now
        # Without deferral one host sync per step. Under DDP it is one collective that also gives every rank the
        # same clock, so learning rate, skipping and stopping are decided alike everywhere and no rank waits forever.
        finite = self.guard.finite(loss, s.step + 1, self._sync_step)
        lr = self.cfg.optim.lr * lr_factor(self._progress(), self.cfg.optim)
        set_lr(self.optimizer, lr)
        self.run_state.loss = loss.detach()
        if not finite:
            self.guard.handle(float(loss.detach()), s.step + 1, self.run_dir, s.epoch, s.skipped_steps)
            s.skipped_steps += 1  # reached only when the batch is skipped
            return lr
        self.guard.ok()
        # Inside an accumulation group DDP need not all-reduce: only the group's last backward does.
        sync = self._pending + 1 == self.accumulate or not self.dist.enabled
        with contextlib.nullcontext() if sync else self.model.no_sync():
            self.scaler.scale(loss / self.accumulate).backward()
        self._unsynced = not sync
        self._pending += 1
        if self._pending == self.accumulate:
            self._optimizer_step(self._pending)
            self._pending = 0
        self.epoch_loss_sum += loss.detach()
        self.epoch_batches += 1
        return lr

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

    def _evaluate(self, row: dict[str, Any]) -> None:
        """Validate into the epoch's ``row``, note whether it is the best so far, then ``on_evaluate``; the time counts
        as training."""
        s, rs, tick = self.state, self.run_state, time.perf_counter()
        result = evaluate(self.eval_model, self.data.val, self.data.val_sizes, self.table.names, self.runtime,
                          self.cfg.train.eval_batch_size, self.workers, self.criterion, distributed=True)
        miou = result["miou"]  # None: no labelled pixel in the validation masks, so no mIoU to compare
        if miou is None and all(r.get("val_loss") is None for r in self.history):  # once: the first evaluation
            notice("warning", "the validation masks hold no labelled pixel (all void): mIoU is undefined, "
                              "so the latest weights are kept as best")
        row.update(val_loss=result["loss"], val_miou=miou, val_pixel_accuracy=result["pixel_accuracy"])
        rs.improved = s.best_miou < 0 if miou is None else miou > s.best_miou
        if miou is not None and rs.improved:
            s.best_miou, s.best_epoch = miou, s.epoch
        rs.metrics = result
        self.callbacks.fire_then_checkpoint("on_evaluate", rs, result)
        s.elapsed += time.perf_counter() - tick

    def _end_epoch(self, row: dict[str, Any], evaluate_now: bool) -> None:
        """Evaluate (if due), record the epoch's row, run the epoch-end callbacks; the time counts as training."""
        s, rs = self.state, self.run_state
        if evaluate_now and self.data.val is not None:
            self._evaluate(row)
        else:
            rs.improved = self.data.val is None  # without validation data the latest weights are the model
        row["elapsed_seconds"] = s.elapsed
        self.history.append(row)
        rs.metrics = row
        tick = time.perf_counter()
        self.callbacks.fire_then_checkpoint("on_epoch_end", rs)
        s.elapsed += time.perf_counter() - tick  # checkpoints, metrics.csv, TensorBoard: in the budget too
        self._sync_elapsed()  # rank 0 alone writes them: every rank must still decide alike whether time is up

    def _images_per_second(self) -> float | None:
        """Training throughput after the warm-up steps; a run shorter than that is timed whole (its first steps
        pay for allocation and kernel selection, so it reads low); None when no step was taken."""
        s = self.state
        if s.measured_seconds > 0:
            return s.measured_images / s.measured_seconds
        return s.images_seen / s.elapsed if s.images_seen and s.elapsed > 0 else None

    def _summary(self, reason: str) -> dict[str, Any]:
        s = self.state
        summary = {
            "name": self.cfg.name,
            "best_miou": s.best_miou if s.best_miou >= 0 else None,  # None: no validation data, or none evaluated
            "best_epoch": s.best_epoch,
            "epochs": s.epoch,
            "steps": s.step,
            "wall_seconds": round(s.elapsed, 2),
            "train_images_per_second": self._images_per_second(),
            "stopped_by": reason,
            "skipped_steps": s.skipped_steps,
            "processes": self.dist.world,  # under torchrun: images/s above is per process
            "runtime": self.runtime.describe(),
            "train_images": len(self.data.train),
            "val_images": len(self.data.val) if self.data.val is not None else 0,
            "classes": self.table.names,
        }
        if self.writes:
            write_json(self.run_dir / "summary.json", summary)
        return summary
