"""The run directory: refusing to overwrite a run, starting one, and the files describing its progress (no torch).

Files: config.yaml (resolved), dataset.json, metrics.csv (one row per epoch), summary.json; the checkpoints
(best.safetensors, last.ckpt) are written by ``engine.checkpoint``; tensorboard/ and report.html by callbacks.
Only rank 0 writes (the trainer decides).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import socket
from pathlib import Path
from typing import Any

from pixelwise.atomic import atomic_write_text, check_out_dir
from pixelwise.errors import PixelwiseError

METRIC_COLUMNS = ["epoch", "step", "train_loss", "val_loss", "val_miou", "val_pixel_accuracy", "lr",
                  "images_per_second", "epoch_seconds", "elapsed_seconds"]
RUN_FILES = ("best.safetensors", "last.ckpt", "metrics.csv", "summary.json")  # cleared by --overwrite


LOCK_NAME = ".pixelwise.lock"


class RunLock:
    """Holds ``RUN/.pixelwise.lock`` exclusively while one process trains into ``run_dir`` (rank 0 under torchrun).

    A second writer, from another shell, a notebook or this process, is refused at once instead of interleaving
    checkpoints and metrics with the first. The lock is the kernel's (``flock``): it goes with the process, even a
    killed one, so a crashed run never leaves a stale lock to delete by hand. The file itself stays (were it removed,
    a newcomer could lock a fresh file while the holder still holds the old one); it names the process holding it.
    Where ``fcntl`` is missing (Windows) there is no lock.
    """

    def __init__(self, run_dir: Path) -> None:
        self.file = None
        self.run_dir = run_dir
        self.created: list[Path] = []  # folders it creates (run_dir, missing parents like runs/), deepest first
        folder = run_dir
        while not folder.exists() and folder != folder.parent:
            self.created.append(folder)
            folder = folder.parent
        try:
            import fcntl
        except ImportError:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / LOCK_NAME
        f = path.open("a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise PixelwiseError(f"{run_dir}: {holder} is training into this run directory now; wait for it to "
                                 "finish (then --resume it), or write elsewhere with --out DIR") from None
        f.seek(0)
        f.truncate()
        f.write(f"pixelwise process {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        self.file = f

    def release(self, tidy: bool = False) -> None:
        """Let the next writer in; ``tidy``: also remove the lock and the folder when this lock created it and
        nothing else was written (a run refused before it started leaves nothing behind)."""
        if self.file is None:
            return
        self.file.close()
        self.file = None
        if tidy and self.created:
            (self.run_dir / LOCK_NAME).unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # not empty: something was written after all, keep it
                for folder in self.created:
                    folder.rmdir()


def holds_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` exists with something in it besides a lock (a run, or whatever else it is)."""
    if not run_dir.is_dir():
        return run_dir.exists()
    return any(p.name != LOCK_NAME for p in run_dir.iterdir())


def check_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to write over an earlier run unless told to resume it or overwrite it (checked before any work)."""
    check_out_dir(run_dir)
    if resume:
        if not (run_dir / "last.ckpt").is_file():
            raise PixelwiseError(f"{run_dir}: nothing to resume (no last.ckpt)")
        return
    if holds_run(run_dir) and not overwrite:
        raise PixelwiseError(
            f"{run_dir}: the run directory already holds a run. Continue it with --resume {run_dir}, "
            "write elsewhere with --out DIR, or replace it with --overwrite."
        )


def start_run_dir(run_dir: Path) -> None:
    """Create the run directory, clearing a previous run's outputs (only reached with --overwrite)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)


def metrics_csv(rows: list[dict[str, Any]]) -> str:
    """metrics.csv's text: one row per epoch, the columns of METRIC_COLUMNS."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return buf.getvalue()


def read_metrics_csv(path: Path) -> list[dict[str, Any]]:
    """metrics.csv back as rows of numbers (empty cells: None)."""
    def value(text: str) -> Any:
        if text == "":
            return None
        number = float(text)
        return int(number) if number.is_integer() and "." not in text and "e" not in text else number

    with open(path, newline="") as f:
        return [{k: value(v) for k, v in row.items()} for row in csv.DictReader(f)]


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2))
