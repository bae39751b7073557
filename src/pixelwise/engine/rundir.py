"""The run directory: refusing to overwrite a run, starting one, and the files describing its progress (no torch).

Files: config.yaml (resolved), dataset.json, metrics.csv (one row per epoch), summary.json; the checkpoints
(best.safetensors, last.ckpt) are written by ``engine.checkpoint``; tensorboard/ and report.html by callbacks.
Only rank 0 writes (the trainer decides). Other commands add theirs later (``RUN_OUTPUTS``).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import shutil
import socket
from pathlib import Path
from typing import Any

from pixelwise.atomic import atomic_write_text, check_out_dir
from pixelwise.errors import PixelwiseError
from pixelwise.progress import notice

METRIC_COLUMNS = ["epoch", "step", "train_loss", "val_loss", "val_miou", "val_pixel_accuracy", "lr",
                  "images_per_second", "epoch_seconds", "elapsed_seconds"]
# What pixelwise writes into a run directory, in training or later by default (eval, calibrate, robustness, export,
# bench, the report, cross-validation): the run's own files, which --overwrite removes, and nothing else. A stale
# one would be read back with the new model: calibration.json's temperature applied to it, folds.json's ensemble
# served instead of it, mlflow.json's MLflow run continued. What makes the folder a model goes first, so a removal
# that fails part way leaves no folder that loads as a mix of the two runs. Not here: predict's predictions/, results
# the user may still want, and anything the user put there.
RUN_OUTPUTS = ("folds.json", "best.safetensors", "last.ckpt", "calibration.json", "model.onnx", "model.int8.onnx",
               "smp", "config.yaml", "dataset.json", "metrics.csv", "summary.json", "plan.yaml", "tensorboard",
               "mlflow.json", "wandb", "report.html", "plots", "robustness.json", "bench.json", "cv_summary.json")
# ... and by name: eval_SPLIT.json, report_SPLIT.html, and the fold runs of a cross-validation (fold_0/, ...).
RUN_OUTPUT_NAMES = re.compile(r"eval_.+\.json|report_.+\.html|fold_\d+")


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


def _remove(path: Path) -> None:
    """Remove a file or a folder with all it holds; a link is removed, never followed."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    except OSError as e:
        raise PixelwiseError(f"{path}: cannot remove the previous run's {path.name} ({e.strerror or e}); the new "
                             "run has not started. Remove it yourself, or write elsewhere with --out DIR") from None


def is_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a pixelwise run: the config it wrote and one of the files training writes next."""
    markers = ("dataset.json", "metrics.csv", "summary.json", "best.safetensors", "last.ckpt", "folds.json")
    return (run_dir / "config.yaml").is_file() and any((run_dir / name).exists() for name in markers)


def start_run_dir(run_dir: Path) -> None:
    """Create the run directory, removing a previous run's outputs (only reached with --overwrite).

    The user asked to replace the run, so the run's own files go (``RUN_OUTPUTS``); anything else (their own files,
    ``predictions/`` of the old model) is kept and named, as nothing says it describes the new model. A folder that
    holds no run (``is_run``) loses nothing: names like config.yaml or plots/ there are the user's.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    if not is_run(run_dir):  # a folder of the user's that is no run keeps everything: its config.yaml is their own
        return
    for name in RUN_OUTPUTS:
        _remove(run_dir / name)
    for path in sorted(run_dir.iterdir()):
        if RUN_OUTPUT_NAMES.fullmatch(path.name) and path.is_dir() == path.name.startswith("fold_"):
            _remove(path)  # fold runs are folders, the others files
    kept = sorted(p.name + ("/" if p.is_dir() else "") for p in run_dir.iterdir() if p.name != LOCK_NAME)
    if kept:
        notice("note", f"{run_dir}: --overwrite removed the previous run's files and kept what is not a run's own "
                       f"(it may describe the previous model): {', '.join(kept)}")


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
