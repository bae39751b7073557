"""``pixelwise tune`` (structure search, shared through a database) and ``pixelwise distill`` (registered by cli.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from pixelwise.errors import PixelwiseError
from pixelwise.progress import console as err
from pixelwise.progress import stdout as out


def tune(
    config: Path | None = typer.Argument(None, help="YAML config: the first trial's configuration (or --data)."),
    data: Path | None = typer.Option(None, help="Dataset folder: the first trial is `pixelwise plan`'s config."),
    fmt: str | None = typer.Option(None, "--format", help="Dataset layout (data.format; default: detected)."),
    trials: int | None = typer.Option(None, min=1, help="Trials in the study, all workers together."),
    budget: str | None = typer.Option(None, help="This worker's time for the study, e.g. 6h (checked between "
                                                 "trials)."),
    trial_budget: str = typer.Option("10m", help="Each trial's training time (train.time_budget)."),
    study: str | None = typer.Option(None, help="Study name (default: the dataset folder's or config's name)."),
    storage: str | None = typer.Option(None, help="SQLAlchemy URL of the study's database, shared by every worker, "
                                                  "e.g. postgresql://user:pw@host/db.", show_default="sqlite:///"
                                                  "OUT/tune.db"),
    set_: list[str] = typer.Option([], "--set", help="Override a config key in every trial (repeatable)."),
    space: Path | None = typer.Option(None, help="Search space YAML (default: configs/tune_space.yaml's content)."),
    objectives: str = typer.Option("miou", help="miou, or miou,latency (val mIoU and measured latency: the Pareto "
                                                "front)."),
    pruner: str = typer.Option("median", help="Stop poor trials early on val mIoU: median, hyperband or none."),
    latency_backend: str = typer.Option("onnx-int8", help="Latency objective's backend: onnx-int8, onnx-fp32, "
                                                          "pytorch-fp32, pytorch-bf16."),
    latency_size: str | None = typer.Option(None, help="Latency objective's image, HxW (default: the data's "
                                                       "median size)."),
    out_dir: Path | None = typer.Option(None, "--out", help="Folder of the trials (default: runs/tune-STUDY)."),
    resume: bool = typer.Option(False, help="Continue an existing study (re-running the command does the same; "
                                            "this refuses to start a new one)."),
    heartbeat: int = typer.Option(30, min=1, hidden=True, help="Seconds between a trial's heartbeats."),
    remeasure: bool = typer.Option(False, help="Run no trial: measure every complete trial's latency again here, "
                                               "one after another (workers measure theirs while others train), "
                                               "and redo the report and front with them."),
) -> None:
    """Search architectures, encoders, losses and hyperparameters (Optuna); every trial is a run directory.

    Several machines search together when each runs the same command with the same --storage.
    """
    from pixelwise.tune import TuneRequest
    from pixelwise.tune import tune as run_tune

    result = run_tune(TuneRequest(config, data, fmt, trials, budget, trial_budget, study, storage, tuple(set_), space,
                                  objectives, pruner, latency_backend, latency_size, out_dir, resume, heartbeat,
                                  remeasure))
    err.print(f"report: {result['report']}")
    out.print_json(json.dumps(result))


def distill(
    teacher: Path = typer.Argument(..., help="The teacher's run directory."),
    config: Path | None = typer.Argument(None, help="YAML config of the student (optional)."),
    data: Path | None = typer.Option(None, help="Dataset folder (default: the teacher's)."),
    model: str | None = typer.Option(None, help="Student architecture (model.arch), e.g. seed_cnn, unet."),
    encoder: str | None = typer.Option(None, help="Student encoder (model.encoder)."),
    # None unless given: the config's loss.distill values stand, else the schema's defaults (shown in the help)
    weight: float | None = typer.Option(None, min=0.0, show_default="1.0, or the config's",
                                        help="Weight of the distillation term (loss.distill.weight)."),
    temperature: float | None = typer.Option(None, min=0.01, max=100.0, show_default="2.0, or the config's",
                                             help="Softening temperature (loss.distill.temperature)."),
    pixels: str | None = typer.Option(None, show_default="all, or the config's",
                                      help="Distil all pixels or only labelled ones (loss.distill.pixels)."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key, e.g. --set train.max_steps=300."),
    name: str | None = typer.Option(None, help="Run name (runs/NAME)."),
    out_dir: Path | None = typer.Option(None, "--out", help="Run directory, exactly."),
) -> None:
    """Train a student that learns from a trained run's softened class probabilities plus the ground truth.

    Short for `pixelwise train --set loss.distill.teacher=RUN ...`.
    """
    from pixelwise.api import check_paths, default_callbacks, run_directory
    from pixelwise.config import load_config

    values: dict[str, Any] = {"loss.distill.teacher": str(teacher), "loss.distill.weight": weight,
                              "loss.distill.temperature": temperature, "loss.distill.pixels": pixels,
                              "model.arch": model, "model.encoder": encoder, "name": name}
    if data is None and config is None:
        data = _teacher_data(teacher)
    if data is not None:
        values["data.root"] = str(data)
    cfg = load_config(config, set_, {k: v for k, v in values.items() if v is not None})
    check_paths(cfg)
    cfg, run_dir = run_directory(cfg, out_dir)
    from pixelwise.engine.trainer import Trainer

    summary = Trainer(cfg, run_dir, callbacks=default_callbacks(cfg)).fit()
    out.print_json(json.dumps(summary))


def _teacher_data(teacher: Path) -> Path:
    from pixelwise.engine.distill import teacher_config

    root = teacher_config(teacher).data.root  # the teacher's checked config: an error names what is missing
    if root is None:
        raise PixelwiseError(f"{teacher} trained on your own Dataset: give the student's data with --data DIR")
    return Path(root)
