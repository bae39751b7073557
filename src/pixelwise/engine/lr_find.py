"""The learning-rate range test (Smith 2017): train with an exponentially rising rate, watch the loss.

The rate goes from ``start`` to ``end`` over ``steps`` batches; the loss is smoothed (bias-corrected moving
average) and the test stops once it exceeds ``diverge`` times its minimum. The suggested rate is where the
smoothed loss falls fastest per decade of learning rate, searched before the minimum (past the minimum
training diverges). The model is thrown away afterwards: nothing of a run is written.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pixelwise.atomic import check_out_dir
from pixelwise.config import Config
from pixelwise.engine.checkpoint import atomic_write, atomic_write_text
from pixelwise.engine.runtime import to_device
from pixelwise.engine.setup import prepare
from pixelwise.errors import PixelwiseError
from pixelwise.optim import set_lr
from pixelwise.progress import make_progress, notice

SMOOTHING = 0.98


def _batches(loader: Any, sampler: Any) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    epoch = 0
    while True:
        sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def suggest_lr(lrs: np.ndarray, smoothed: np.ndarray) -> float:
    """Steepest descent of the smoothed loss against log10(lr), before its minimum."""
    lowest = int(np.argmin(smoothed))
    if lowest < 2:
        return float(lrs[lowest])
    slope = np.gradient(smoothed[: lowest + 1], np.log10(lrs[: lowest + 1]))
    return float(lrs[int(np.argmin(slope))])


def plot_lr_find(lrs: np.ndarray, losses: np.ndarray, smoothed: np.ndarray, suggestion: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    ax.plot(lrs, losses, color="#bbbbbb", linewidth=1, label="loss per batch")
    ax.plot(lrs, smoothed, color="#1f77b4", linewidth=2, label="smoothed")
    ax.axvline(suggestion, color="#d62728", linestyle="--", label=f"suggested lr {suggestion:.2g}")
    ax.set_xscale("log")
    top = float(np.nanpercentile(losses, 95))
    ax.set_ylim(min(float(np.nanmin(losses)), float(np.nanmin(smoothed))) * 0.95, max(top, float(smoothed[0])) * 1.05)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title("Learning-rate range test")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def lr_find(cfg: Config, out_dir: Path, start: float = 1e-7, end: float = 1.0, steps: int = 100,
            diverge: float = 4.0) -> dict[str, Any]:
    """Run the range test for ``cfg``'s model, loss, optimizer and data; write lr_find.csv and lr_find.png."""
    if not 0 < start < end:
        raise PixelwiseError(f"lr-find needs 0 < start < end (got start {start}, end {end})")
    if steps < 5:
        raise PixelwiseError(f"lr-find needs at least 5 steps (got {steps})")
    check_out_dir(out_dir)
    p = prepare(cfg)
    model, optimizer, criterion, rt = p.model, p.optimizer, p.criterion, p.runtime
    model.train()
    rates = np.geomspace(start, end, steps)
    lrs, losses, smoothed = [], [], []
    average, best, stopped = 0.0, math.inf, "reached the end rate"
    batches = _batches(p.loader, p.sampler)
    with make_progress() as progress:
        task = progress.add_task("lr range test", total=steps)
        for i, lr in enumerate(rates):
            images, masks = to_device(next(batches), rt)
            set_lr(optimizer, float(lr))
            with rt.autocast():
                logits = model(images)
            loss = criterion(logits, masks)
            value = float(loss.detach())
            if not math.isfinite(value):
                stopped = f"the loss became {value} at lr {lr:.3g}"
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            average = SMOOTHING * average + (1 - SMOOTHING) * value
            smooth = average / (1 - SMOOTHING ** (i + 1))
            lrs.append(float(lr))
            losses.append(value)
            smoothed.append(smooth)
            best = min(best, smooth)
            progress.update(task, advance=1)
            if i >= 5 and smooth > diverge * best:
                stopped = f"the loss diverged (over {diverge:g}x its minimum) at lr {lr:.3g}"
                break
    if len(lrs) < 5:
        raise PixelwiseError(f"lr-find: {stopped} after {len(lrs)} steps; lower --start")
    lr_arr, loss_arr, smooth_arr = np.array(lrs), np.array(losses), np.array(smoothed)
    suggestion = suggest_lr(lr_arr, smooth_arr)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = ["lr,loss,smoothed_loss"] + [f"{a:.6g},{b:.6g},{c:.6g}" for a, b, c in zip(lrs, losses, smoothed,
                                                                                        strict=True)]
    atomic_write_text(out_dir / "lr_find.csv", "\n".join(rows) + "\n")
    plot_lr_find(lr_arr, loss_arr, smooth_arr, suggestion, out_dir / "lr_find.png")
    minimum = float(lr_arr[int(np.argmin(smooth_arr))])
    if p.cfg.optim.name == "gd":
        notice("note", "the range test steps once per batch; gd steps once per epoch")
    return {"suggested_lr": suggestion, "min_loss_lr": minimum, "steps": len(lrs), "stopped": stopped,
            "plot": str(out_dir / "lr_find.png"), "csv": str(out_dir / "lr_find.csv")}



