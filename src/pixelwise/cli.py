"""The command line: each command parses its options, builds a config and calls the library."""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import typer

from pixelwise.atomic import atomic_write_text, check_new_file
from pixelwise.cli_deploy import CONTEXT, DEVICE_HELP, bench, export, serve
from pixelwise.cli_info import config, models
from pixelwise.cli_label import suggest
from pixelwise.cli_predict import predict
from pixelwise.cli_share import push
from pixelwise.cli_trust import calibrate, explain, robustness
from pixelwise.cli_tune import distill, tune
from pixelwise.errors import PixelwiseError
from pixelwise.progress import console as err
from pixelwise.progress import notice, styled
from pixelwise.progress import stdout as out

app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings=CONTEXT,
    help="pixelwise: train, evaluate and deploy semantic segmentation models on your own images.",
)


def _version(value: bool) -> None:
    if value:
        from pixelwise import __version__

        out.print(f"pixelwise {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(False, "--version", "-V", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """pixelwise: train, evaluate and deploy semantic segmentation models on your own images."""


@app.command()
def demo(
    out_dir: Path = typer.Option(Path("pixelwise-demo"), "--out", help="Folder for the demo's data and run."),
    steps: int = typer.Option(300, min=1, help="Training steps (the quality is promised for the default)."),
    time_budget: str = typer.Option("10m", help="At most this long, however far the steps got (e.g. 90s, 10m)."),
) -> None:
    """Offline demo: synthetic data -> train -> evaluate -> predict, in about two minutes on a laptop CPU."""
    from pixelwise.config_sections import positive_duration
    from pixelwise.demo import run_demo

    positive_duration(time_budget, "--time-budget")  # before any data is generated
    run_demo(out_dir, steps, time_budget)


@app.command()
def train(
    config: Path | None = typer.Argument(None, help="YAML config file (optional: flags alone also work); relative "
                                                    "paths in it are read from its folder."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key, e.g. --set optim.lr=3e-4 (repeatable)."),
    data: Path | None = typer.Option(None, help="Dataset folder (data.root)."),
    fmt: str | None = typer.Option(None, "--format", help="Dataset layout (data.format).", show_default="detected"),
    model: str | None = typer.Option(None, help="Architecture, e.g. unet, fpn, deeplabv3plus (model.arch).",
                                     show_default="unet"),
    encoder: str | None = typer.Option(None, help="Encoder, e.g. resnet18 or tu-convnext_tiny (model.encoder; "
                                                  "list: pixelwise models --encoders).", show_default="resnet18"),
    # The shown defaults are the schema's (tests/test_first_hour.py compares them); None leaves a config file's.
    epochs: int | None = typer.Option(None, help="train.epochs", show_default="50"),
    max_steps: int | None = typer.Option(None, help="train.max_steps", show_default="none"),
    time_budget: str | None = typer.Option(None, help="train.time_budget, e.g. 15m; with --auto the plan fits it.",
                                           show_default="none; 30m with --auto"),
    batch_size: int | None = typer.Option(None, help="train.batch_size", show_default="8"),
    crop_size: int | None = typer.Option(None, help="data.crop_size (square)", show_default="320"),
    lr: float | None = typer.Option(None, help="optim.lr", show_default="0.001"),
    device: str | None = typer.Option(None, help=f"train.device: {DEVICE_HELP}", show_default="auto"),
    name: str | None = typer.Option(None, help="Run name: the run directory is runs/NAME (NAME-2, NAME-3, ... when "
                                               "that holds a run).", show_default="DATASET-ARCH-ENCODER"),
    out_dir: Path | None = typer.Option(None, "--out", help="Run directory, exactly (a run there is refused unless "
                                                            "--resume or --overwrite)."),
    resume: Path | None = typer.Option(None, help="Continue the run in this directory from its last.ckpt."),
    init_from: str | None = typer.Option(None, help="Fine-tune: start from this run's whole model (a run directory, "
                                                    ".safetensors or hf://USER/REPO; model.init_from).",
                                         show_default="none"),
    folds: int | None = typer.Option(None, min=2, max=100,
                                     help="k-fold cross-validation: one run per fold under the run directory, a "
                                          "mean +- std summary, the folds' ensemble as the parent's model."),
    overwrite: bool = typer.Option(False, help="Replace the run in --out: its own files go, anything else there is "
                                               "kept and named."),
    tensorboard: bool = typer.Option(True, help="Write TensorBoard event files (train.tensorboard)."),
    report: bool = typer.Option(True, help="Write report.html after training (train.report)."),
    auto: bool = typer.Option(False, help="Configure from the data and this machine (`pixelwise plan`); the "
                                          "plan, with a reason per choice, is saved as RUN/plan.yaml."),
    budget: str | None = typer.Option(None, hidden=True, help="Deprecated: --time-budget."),
) -> None:
    """Train a model; writes config.yaml, best.safetensors, last.ckpt, metrics.csv, summary.json, report.html."""
    # Torch loads in seconds: a missing folder or a bad key is answered before it is imported.
    from pixelwise.api import check_paths, default_callbacks, run_directory
    from pixelwise.config import load_config

    if budget is not None:
        notice("warning", "--budget is deprecated: use --time-budget (the same setting, train.time_budget)")
        time_budget = time_budget or budget
    shortcuts: dict[str, Any] = {
        "data.root": data, "data.format": fmt, "model.arch": model, "model.encoder": encoder,
        "train.epochs": epochs, "train.max_steps": max_steps, "train.time_budget": time_budget,
        "train.batch_size": batch_size, "data.crop_size": crop_size, "optim.lr": lr, "train.device": device,
        "name": name, "model.init_from": init_from,
        "train.tensorboard": None if tensorboard else False, "train.report": None if report else False,
    }
    values = {k: (str(v) if isinstance(v, Path) else v) for k, v in shortcuts.items() if v is not None}
    auto_plan = None
    if auto:
        if config is not None or resume is not None:
            raise PixelwiseError("--auto writes its own config from the data: give --data DIR (and --set "
                                 "overrides), not a config file or --resume")
        if data is None:
            raise PixelwiseError("--auto needs the dataset: --data DIR")
        from pixelwise.plan import plan_dataset
        from pixelwise.validate import check_names

        draft = load_config(None, set_, values)
        check_paths(draft)
        check_names(draft)  # a misspelt encoder fails before the plan scans the data
        plan_device = (device or "auto").split(":")[0]
        auto_plan = plan_dataset(data, fmt, time_budget or "30m", plan_device, name=name)
        err.print(auto_plan.to_yaml(), markup=False, highlight=False, soft_wrap=True)  # [lists] are not markup
    if resume is not None and folds is not None:
        raise PixelwiseError("--folds continues an interrupted cross-validation by itself: run the same command "
                             "again with --out PARENT (finished folds are kept, an interrupted one resumes)")
    if resume is not None:
        if config is not None or (out_dir is not None and out_dir != resume):
            raise PixelwiseError("--resume continues a run in its own directory with its own config.yaml; "
                                 "give --set overrides, not a config file or --out")
        cfg = load_config(resume / "config.yaml", set_, values)
        check_paths(cfg)
        run_dir = resume
    else:
        cfg = load_config(config, set_, values, base=auto_plan.tree() if auto_plan else None)
        check_paths(cfg)
        cfg, run_dir = run_directory(cfg, out_dir, overwrite)
    if folds is not None:
        from pixelwise.kfold import train_folds

        train_folds(cfg, run_dir, folds, overwrite)
        return
    from pixelwise.engine.trainer import Trainer

    trainer = Trainer(cfg, run_dir, resume=resume is not None, overwrite=overwrite, callbacks=default_callbacks(cfg))
    if auto_plan is not None and launched_rank() == 0:
        atomic_write_text(run_dir / "plan.yaml", auto_plan.to_yaml(run_dir))
    summary = trainer.fit()
    if launched_rank() == 0:  # under torchrun the summary is printed once
        out.print_json(json.dumps(summary))


@app.command()
def check(
    root: Path = typer.Argument(..., help="Dataset folder (or list file), or a YAML config (its data section)."),
    fmt: str | None = typer.Option(None, "--format", help="Dataset layout (data.format; default: detected)."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key, e.g. --set data.crop_size=256."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON (for scripts)."),
) -> None:
    """Validate every image/mask pair and print the dataset's fingerprint; exit 1 if it cannot be trained on."""
    from pixelwise.config import load_config
    from pixelwise.data.fingerprint import fingerprint
    from pixelwise.report.tables import fingerprint_view

    is_config = root.suffix.lower() in (".yaml", ".yml")
    values = {k: v for k, v in {"data.root": None if is_config else str(root), "data.format": fmt}.items() if v}
    cfg = load_config(root if is_config else None, set_, values)
    result = fingerprint(cfg.data)
    if as_json:
        out.print_json(json.dumps(result.to_dict()))
    else:
        fingerprint_view(result, out)
        again = " ".join(shlex.quote(str(a)) for a in (root, *(("--format", fmt) if fmt else ()),
                                                          *(a for s in set_ for a in ("--set", s))))
        if result.errors:
            verb = f"fix the errors above, then check again: pixelwise check {again}"
        else:
            verb = f"pixelwise train {again}" if is_config else f"pixelwise train --data {again} --auto"
        err.print(styled(("next:", "bold"), f" {verb}"), soft_wrap=True)  # a command to copy: never wrapped
    if result.errors:
        raise SystemExit(1)


@app.command()
def plan(
    root: Path = typer.Argument(..., help="Dataset folder (or list file)."),
    fmt: str | None = typer.Option(None, "--format", help="Dataset layout (data.format; default: detected)."),
    budget: str = typer.Option("30m", "--time-budget", "--budget", help="Training time to plan for (e.g. 10m, 2h)."),
    out_file: Path | None = typer.Option(None, "--out", help="Write the config here (YAML, a reason per choice; "
                                         "data.root as seen from its folder)."),
    device: str = typer.Option("auto", help="Plan for cpu, cuda or auto (this machine's)."),
    measure: bool = typer.Option(True, help="Time a few training steps to fit crops and epochs to the budget."),
    overwrite: bool = typer.Option(False, help="Replace the --out file if it exists (written whole, or not at all)."),
) -> None:
    """Choose a config from the dataset's fingerprint and this machine, each choice with its reason."""
    from pixelwise.plan import plan_dataset

    if out_file is not None:
        check_new_file(out_file, overwrite)
    result = plan_dataset(root, fmt, budget, device, measure)
    out.print(result.to_yaml(), markup=False, highlight=False, soft_wrap=True)
    if out_file is not None:  # data.root as seen from the file's folder, where `train FILE` will read it from
        atomic_write_text(out_file, result.to_yaml(out_file.parent))
        err.print(f"config written to {out_file}; train with: pixelwise train {out_file}")


@app.command("lr-find")
def lr_find_(
    config: Path | None = typer.Argument(None, help="YAML config file (the run you are about to train)."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key (repeatable)."),
    data: Path | None = typer.Option(None, help="Dataset folder (data.root)."),
    start: float = typer.Option(1e-7, min=0.0, help="First learning rate (above 0)."),
    end: float = typer.Option(1.0, min=0.0, help="Last learning rate (above --start)."),
    steps: int = typer.Option(100, min=5, help="Batches over which the rate rises from start to end."),
    out_dir: Path | None = typer.Option(None, "--out", help="Folder for lr_find.png and lr_find.csv "
                                                            "(default: runs/lr-find-NAME)."),
) -> None:
    """Learning-rate range test: plot the loss against a rising rate and suggest optim.lr."""
    from pixelwise.config import load_config
    from pixelwise.engine.lr_find import lr_find

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise PixelwiseError("lr-find runs as one process; start it without torchrun")
    from pixelwise.api import default_run_name

    cfg = load_config(config, set_, {"data.root": str(data)} if data is not None else None)
    result = lr_find(cfg, out_dir or Path("runs") / f"lr-find-{cfg.name or default_run_name(cfg)}", start, end, steps)
    err.print(f"{result['stopped']} after {result['steps']} steps; the loss was lowest at lr "
              f"{result['min_loss_lr']:.3g}")
    err.print(styled("suggested learning rate: ", (f"{result['suggested_lr']:.3g}", "bold"),
                     f"  (train with --set optim.lr={result['suggested_lr']:.3g}); plot: {result['plot']}"))
    out.print_json(json.dumps(result))


@app.command("eval")
def eval_(
    run: Path = typer.Argument(..., help="Run directory."),
    data: Path | None = typer.Option(None, help="Dataset folder (default: the run's)."),
    fmt: str | None = typer.Option(None, "--format", help="Dataset layout (default: the run's)."),
    split: str = typer.Option("val", help="Split to evaluate."),
    out_file: Path | None = typer.Option(None, "--out", help="Metrics JSON (default: RUN/eval_SPLIT.json; with "
                                         "--data of another dataset RUN/eval_SPLIT-FOLDER.json)."),
    batch_size: int | None = typer.Option(None, min=1, help="Images per forward pass (train.eval_batch_size)."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    report: bool = typer.Option(True, help="Also write RUN/report.html (report_SPLIT.html for other splits)."),
    overwrite: bool = typer.Option(False, help="Replace the --out file if it exists."),
    uncertainty: str = typer.Option("entropy", help="Calibration (ECE) and these uncertainties' AUROC for errors: "
                                                    "entropy,tta,mc-dropout, or none."),
) -> None:
    """Evaluate a run on a split: per-class table, JSON with mIoU, accuracy, precision, recall, F1, and the report."""
    from pixelwise.inference.evaluation import evaluate_run
    from pixelwise.report.build import FINGERPRINT, data_label, model_fingerprint, report_run
    from pixelwise.report.tables import metrics_table, trust_table

    if out_file is not None:
        check_new_file(out_file, overwrite)

    trust = tuple(m.strip() for m in uncertainty.split(",") if m.strip() not in ("", "none"))
    label = data_label(run, split, data, fmt)  # another dataset's split: its own files, never the run's eval_val.json
    if report:  # evaluates with per-image scores (for the gallery) and writes RUN/eval_SPLIT.json
        result, _ = report_run(run, split, data, fmt, batch_size, device, trust=trust, label=label)
    else:
        stamp = model_fingerprint(run)  # before evaluating: weights written meanwhile make this evaluation stale
        result = {**evaluate_run(run, split, data, fmt, batch_size, device, trust), FINGERPRINT: stamp}
    out.print(metrics_table(result, title=f"{run} on '{split}' ({result['images']} images)"))
    if "trust" in result:
        out.print(trust_table(result["trust"]))
    target = out_file or run / f"eval_{label or split}.json"
    if out_file is not None or not report:
        atomic_write_text(target, json.dumps(result, indent=2))
    err.print(f"metrics written to {target}")


@app.command()
def report(
    run: Path = typer.Argument(..., help="Run directory."),
    split: str = typer.Option("val", help="Split the report describes."),
    data: Path | None = typer.Option(None, help="Dataset folder (default: the run's)."),
    fmt: str | None = typer.Option(None, "--format", help="Dataset layout (default: the run's)."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
) -> None:
    """Rebuild RUN/report.html (reuses RUN/eval_SPLIT.json when it scores the same images; else evaluates)."""
    from pixelwise.report.build import data_label, report_run

    report_run(run, split, data, fmt, device=device, reuse=True, label=data_label(run, split, data, fmt))


data_app = typer.Typer(no_args_is_help=True, context_settings=CONTEXT, help="Look at a dataset.")
app.add_typer(data_app, name="data")


@data_app.command("preview")
def data_preview(
    root: Path = typer.Argument(..., help="Dataset folder, or a YAML config (its data and augment sections)."),
    fmt: str | None = typer.Option(None, "--format", help="Dataset layout (data.format)."),
    augment: str | None = typer.Option(None, help="Augmentation preset: none, light, default, strong."),
    crop_size: int | None = typer.Option(None, help="data.crop_size (square)."),
    samples: int = typer.Option(8, min=1, max=64, help="Training samples on the sheet."),
    seed: int = typer.Option(0, min=0, help="Which samples and augmentations."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key (repeatable)."),
    out_file: Path = typer.Option(Path("preview.png"), "--out", help="PNG to write."),
    bands: str | None = typer.Option(None, help="Channels shown as red, green, blue (1-based, e.g. 4,3,2; default: "
                                                "the first three); non-8-bit data is contrast-stretched."),
    overwrite: bool = typer.Option(False, help="Replace the --out file if it exists."),
) -> None:
    """Write a sheet of augmented training samples with their masks: what the model will see."""
    from pixelwise.config import load_config
    from pixelwise.report.preview import preview_sheet

    check_new_file(out_file, overwrite)

    is_config = root.suffix.lower() in (".yaml", ".yml")
    values: dict[str, Any] = {"data.root": None if is_config else str(root), "data.format": fmt,
                              "augment.preset": augment, "data.crop_size": crop_size}
    cfg = load_config(root if is_config else None, set_, {k: v for k, v in values.items() if v is not None})
    try:
        shown = tuple(int(b) for b in bands.split(",")) if bands else None
    except ValueError:
        raise PixelwiseError(f"--bands expects 1 or 3 comma-separated channel numbers, e.g. 4,3,2; got '{bands}'") \
            from None
    if shown is not None and (len(shown) not in (1, 3) or min(shown) < 1):
        raise PixelwiseError(f"--bands expects 1 or 3 channel numbers from 1 (e.g. 4,3,2), got '{bands}'")
    err.print(f"preview written to {preview_sheet(cfg, out_file, samples, seed, shown)}")


app.command()(predict)  # masks for new images (cli_predict.py)
# Deployment (export, bench, serve) and reference (models, config): in cli_deploy.py and cli_info.py
for _command in (export, bench, serve, models, config):
    app.command()(_command)
app.command()(suggest)  # the labelling loop (cli_label.py)
app.command()(push)  # the Hugging Face Hub (cli_share.py)
for _command in (tune, distill):  # search and distillation (cli_tune.py)
    app.command()(_command)
for _command in (explain, calibrate, robustness):  # can the model be trusted (cli_trust.py)
    app.command()(_command)


RANK_ERROR_WAIT_S = 10.0  # how long a rank other than 0 leaves rank 0 to report an error


def main() -> None:
    """Console entry point: user errors are printed as one clear message with exit code 1, no traceback."""
    try:
        app()
    except PixelwiseError as e:
        # Under torchrun every rank decides alike: one message, from rank 0. Another rank waits before it exits,
        # since its exit makes torchrun stop rank 0, maybe before the message is out; rank 0's exit stops this
        # one during the wait. An error of this rank alone (rank 0 carries on) is printed after it, with the rank.
        rank = launched_rank()
        if rank:
            time.sleep(RANK_ERROR_WAIT_S)
        notice("error", f"(rank {rank}) {e}" if rank else str(e), "bold red")
        raise SystemExit(1) from None
    finally:
        if "torch.distributed" in sys.modules:  # imported by a command that trained: leave the group cleanly
            from pixelwise.engine.distributed import shutdown

            shutdown()


def launched_rank() -> int:
    """This process's rank under torchrun, 0 otherwise (read without importing torch)."""
    return int(os.environ.get("RANK", "0"))
