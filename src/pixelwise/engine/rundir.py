"""The run directory: refusing to overwrite a run, starting one, and the files describing its progress.

Files: config.yaml (resolved), dataset.json, metrics.csv (one row per epoch), summary.json; the checkpoints
(best.safetensors, last.ckpt) are written by ``engine.checkpoint``; tensorboard/ and report.html by callbacks.
Only rank 0 writes (the trainer decides).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from pixelwise.atomic import check_out_dir
from pixelwise.engine.checkpoint import atomic_write_text
from pixelwise.errors import PixelwiseError

METRIC_COLUMNS = ["epoch", "step", "train_loss", "val_loss", "val_miou", "val_pixel_accuracy", "lr",
                  "images_per_second", "epoch_seconds", "elapsed_seconds"]
RUN_FILES = ("best.safetensors", "last.ckpt", "metrics.csv", "summary.json")  # cleared by --overwrite


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
