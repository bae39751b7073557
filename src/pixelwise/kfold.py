"""k-fold cross-validation, nnU-Net style: ``pixelwise train ... --folds K`` or ``pw.train_folds``.

One run directory per fold under a parent: ``PARENT/fold_0`` ... ``fold_{K-1}``, each an ordinary run whose config
says ``data.folds: K, data.fold: i``, so ``data.splits.plan_splits`` (the one split decision) gives train, check,
eval and the report the same images: the training pool sorted by path, shuffled with ``data.split_seed``, dealt
into K folds; fold i validates, the others train. After the folds the parent gets:

- ``folds.json``: the fold runs, which makes the parent a model: ``Segmenter.load(PARENT)``, ``predict``,
  ``eval --split test`` and ``export`` use the average of the folds' probabilities (``inference.ensemble``);
- ``config.yaml``: fold 0's resolved config without ``data.fold`` (class table, channels, crop for loading);
- ``cv_summary.json``: each fold's validation metrics (the report's evaluation of its best weights, or its best
  val mIoU) and their mean and standard deviation (sample, ddof=1) across folds.

Run again with ``--out PARENT``, an interrupted cross-validation continues: finished folds (``summary.json``) are
kept, an interrupted one resumes from its ``last.ckpt``, each only when its config.yaml is the one it would be
trained with now (``check_kept_folds``): a fold of another split (``--folds``, ``data.split_seed``, data) or of other
settings is refused, never mixed into the summary. ``--overwrite`` retrains every fold, after removing the parent's
previous run (``engine.rundir.start_run_dir``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml

from pixelwise.atomic import atomic_write_text
from pixelwise.config import Config, read_yaml
from pixelwise.engine.rundir import is_run, start_run_dir
from pixelwise.errors import PixelwiseError
from pixelwise.progress import console, notice, stdout

SUMMARY_FILE = "cv_summary.json"
# Keys saying how a fold runs, not what it learns or validates on: a fold kept from before may differ in them.
RUN_ONLY = {"name", "train.report", "train.tensorboard", "train.track", "train.eval_batch_size", "train.device",
            "train.channels_last", "train.compile", "train.cudnn_benchmark", "train.deterministic", "data.num_workers",
            "data.cache", "data.cache_max_gb"}
# Keys training settles from the data (engine.setup.resolve_config): a request leaving them open (null, auto; the
# classes to a file or the dataset) matches what the fold's config.yaml settled.
SETTLED = {"data.classes", "data.channels", "data.dtype", "model.in_channels", "model.normalization", "model.mean",
           "model.std", "model.clip", "model.encoder_weights", "loss.class_weights"}
PATHS = {"data.root", "model.init_from", "model.encoder_weights", "loss.distill.teacher"}  # absolute in config.yaml
BUDGET = ("train.epochs", "train.max_steps", "train.time_budget")  # an interrupted fold resumes with the new ones


def fold_config(cfg: Config, folds: int, fold: int, parent_name: str) -> Config:
    return cfg.model_copy(update={"name": f"{parent_name}-fold{fold}",
                                  "data": cfg.data.model_copy(update={"folds": folds, "fold": fold})})


def _leaves(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{'data.root': ..., ...}: a config tree's values by dotted key (the class table as one value)."""
    if not isinstance(tree, dict) or prefix == "data.classes":
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_leaves(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _as_run(key: str, value: Any) -> Any:
    """A requested value as a run's config.yaml holds it: paths absolute."""
    if key in PATHS and isinstance(value, str) and value not in ("auto", "imagenet") and not value.startswith("hf://"):
        return str(Path(value).expanduser().resolve())
    return value


def fold_differences(cfg: Config, run_dir: Path, ignore: tuple[str, ...] = ()) -> list[str]:
    """How ``run_dir``'s config.yaml differs from ``cfg`` (a fold's config as it would be trained now), in words;
    empty when it is the same fold. Keys in ``RUN_ONLY`` and ``ignore`` are not compared."""
    try:
        saved = _leaves(read_yaml(run_dir / "config.yaml"))
    except PixelwiseError:
        return ["its config.yaml cannot be read"]
    missing = object()
    found = []
    for key, value in _leaves(cfg.model_dump(mode="json")).items():
        if key in RUN_ONLY or key in ignore:
            continue
        if key in SETTLED and (value is None or value == "auto" or (key == "data.classes" and isinstance(value, str))):
            continue
        was = saved.get(key, missing)
        if was != _as_run(key, value):
            found.append(f"{key} {'(not set)' if was is missing else json.dumps(was)}, now {json.dumps(value)}")
    return found


def fold_metrics(run_dir: Path) -> dict[str, float | None]:
    """A fold run's validation metrics: eval_val.json (the report's) when it evaluated the fold's present weights,
    else the best val mIoU of summary.json."""
    from pixelwise.report.build import current_evaluation

    result = current_evaluation(run_dir, "val")
    if result is not None:
        row = {k: result.get(k) for k in ("miou", "pixel_accuracy", "mean_accuracy", "fw_iou")}
        row.update({f"iou.{name}": m.get("iou") for name, m in result.get("classes", {}).items()})
        return row
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"miou": summary.get("best_miou")}


def summarise(rows: list[dict[str, float | None]]) -> dict[str, dict[str, float]]:
    """Mean and sample standard deviation of every metric over the folds that have it."""
    out: dict[str, dict[str, float]] = {}
    for key in rows[0]:
        values = [float(r[key]) for r in rows if r.get(key) is not None and math.isfinite(float(r[key]))]
        if not values:
            continue
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
        out[key] = {"mean": mean, "std": std, "folds": len(values)}
    return out


def write_parent(parent: Path, folds: int, runs: list[str], cfg: Config) -> None:
    """folds.json and the parent's config.yaml (fold 0's, without data.fold): the parent loads as an ensemble."""
    tree = read_yaml(parent / runs[0] / "config.yaml")
    tree["name"] = parent.name
    tree.setdefault("data", {})["fold"] = None
    atomic_write_text(parent / "config.yaml", yaml.safe_dump(tree, sort_keys=False))
    atomic_write_text(parent / "folds.json", json.dumps({"folds": folds, "runs": runs,
                                                          "split_seed": cfg.data.split_seed}, indent=2))


def train_folds(cfg: Config, parent: Path, folds: int, overwrite: bool = False) -> dict[str, Any]:
    """Train ``folds`` fold runs under ``parent`` (see the module), then write the parent's files and summary."""
    from pixelwise.api import default_callbacks
    from pixelwise.engine.trainer import Trainer

    if folds < 2:
        raise PixelwiseError(f"--folds {folds}: cross-validation needs at least 2 folds")
    if cfg.data.fold is not None:
        raise PixelwiseError("--folds trains every fold itself: leave data.fold unset")
    parent = Path(parent)
    if (parent / "config.yaml").is_file() and not (parent / "folds.json").is_file() and not overwrite:
        raise PixelwiseError(f"{parent}: holds a run that is not a cross-validation; replace it with --overwrite, "
                             "or choose another --out or name")
    configs = [fold_config(cfg, folds, fold, parent.name) for fold in range(folds)]
    if overwrite:
        if is_run(parent):  # the previous run or cross-validation goes; the user's own files stay (and are named)
            start_run_dir(parent)
    else:
        check_kept_folds(parent, configs)
    parent.mkdir(parents=True, exist_ok=True)
    runs, rows = [], []
    for fold, fold_cfg in enumerate(configs):
        run_dir = parent / f"fold_{fold}"
        console.print(f"fold {fold + 1} of {folds}: {run_dir}")
        if (run_dir / "summary.json").is_file() and not overwrite:
            notice("note", f"fold {fold}: {run_dir} has finished training with this configuration, kept "
                           "(--overwrite trains it again)")
        else:  # an interrupted fold continues from its last checkpoint
            resume = not overwrite and (run_dir / "last.ckpt").is_file()
            Trainer(fold_cfg, run_dir, resume=resume, overwrite=overwrite, callbacks=default_callbacks(fold_cfg)).fit()
        runs.append(run_dir.name)
        rows.append(fold_metrics(run_dir))
    write_parent(parent, folds, runs, cfg)
    stats = summarise(rows)
    result = {"folds": folds, "parent": str(parent), "runs": runs, "per_fold": rows, "summary": stats}
    atomic_write_text(parent / SUMMARY_FILE, json.dumps(result, indent=2))
    show(result)
    return result


def check_kept_folds(parent: Path, configs: list[Config]) -> None:
    """Refuse, before any training, a finished or interrupted fold under ``parent`` trained with another config
    than its fold's now (``configs``): its results would be mixed with folds of another split or other settings.
    An interrupted fold may differ in its budget (``BUDGET``): it resumes with the new one, as ``--resume`` does."""
    for fold, fold_cfg in enumerate(configs):
        run_dir = parent / f"fold_{fold}"
        finished = (run_dir / "summary.json").is_file()
        if not finished and not (run_dir / "last.ckpt").is_file():
            continue
        found = fold_differences(fold_cfg, run_dir, () if finished else BUDGET)
        if found:
            shown = "; ".join(found[:6]) + (f"; and {len(found) - 6} more" if len(found) > 6 else "")
            raise PixelwiseError(
                f"{run_dir}: this fold was trained with another configuration than fold {fold} of {len(configs)} "
                f"now ({shown}); its results do not belong in this cross-validation. Train every fold again with "
                "--overwrite, or write elsewhere with --out DIR")


def show(result: dict[str, Any]) -> None:
    """One line per fold and the mean +- std of each metric, on stdout."""
    for fold, row in enumerate(result["per_fold"]):
        miou = row.get("miou")
        stdout.print(f"fold {fold}: val mIoU {'-' if miou is None else f'{miou:.4f}'}")
    for key, s in result["summary"].items():
        stdout.print(f"{key}: {s['mean']:.4f} +- {s['std']:.4f} ({s['folds']} folds)")
    stdout.print(f"ensemble of the folds: Segmenter.load('{result['parent']}'), pixelwise predict {result['parent']} "
                 "IMAGES, pixelwise eval " + result["parent"] + " --split test")
