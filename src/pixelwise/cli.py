"""The command line: each command parses its options, builds a config and calls the library."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from pixelwise.atomic import atomic_write_text
from pixelwise.errors import PixelwiseError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="pixelwise: train, evaluate and deploy semantic segmentation models on your own images.",
)
out = Console()
err = Console(stderr=True)


@app.command()
def demo(
    out_dir: Path = typer.Option(Path("pixelwise-demo"), "--out", help="Folder for the demo's data and run."),
    time_budget: str = typer.Option("75s", help="Training time (e.g. 75s, 3m)."),
) -> None:
    """Offline demo: synthetic data -> train -> evaluate -> predict, in about two minutes on a laptop CPU."""
    from pixelwise.demo import run_demo

    run_demo(out_dir, time_budget)


@app.command()
def train(
    config: Path | None = typer.Argument(None, help="YAML config file (optional: flags alone also work)."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key, e.g. --set optim.lr=3e-4 (repeatable)."),
    data: Path | None = typer.Option(None, help="Dataset folder (data.root)."),
    fmt: str | None = typer.Option(None, "--format", help="Dataset layout (data.format; default: detected)."),
    model: str | None = typer.Option(None, help="Architecture, e.g. unet, fpn, deeplabv3plus (model.arch)."),
    encoder: str | None = typer.Option(None, help="Encoder, e.g. resnet18 or tu-convnext_tiny (model.encoder)."),
    epochs: int | None = typer.Option(None, help="train.epochs"),
    max_steps: int | None = typer.Option(None, help="train.max_steps"),
    time_budget: str | None = typer.Option(None, help="train.time_budget, e.g. 15m"),
    batch_size: int | None = typer.Option(None, help="train.batch_size"),
    crop_size: int | None = typer.Option(None, help="data.crop_size (square)"),
    lr: float | None = typer.Option(None, help="optim.lr"),
    name: str | None = typer.Option(None, help="Run name (default run directory: runs/NAME)."),
    out_dir: Path | None = typer.Option(None, "--out", help="Run directory."),
    resume: Path | None = typer.Option(None, help="Continue the run in this directory from its last.ckpt."),
    overwrite: bool = typer.Option(False, help="Replace an existing run directory."),
    tensorboard: bool = typer.Option(True, help="Write TensorBoard event files (train.tensorboard)."),
    report: bool = typer.Option(True, help="Write report.html after training (train.report)."),
    auto: bool = typer.Option(False, help="Configure from the data and this machine (`pixelwise plan`); the "
                                          "plan, with a reason per choice, is saved as RUN/plan.yaml."),
    budget: str | None = typer.Option(None, help="Time budget for --auto (default 30m); same as --time-budget."),
) -> None:
    """Train a model; writes config.yaml, best.safetensors, last.ckpt, metrics.csv, summary.json, report.html."""
    from pixelwise.api import default_callbacks
    from pixelwise.config import load_config
    from pixelwise.engine.trainer import Trainer

    if budget is not None:
        time_budget = time_budget or budget
    auto_plan = None
    if auto:
        if config is not None or resume is not None:
            raise PixelwiseError("--auto writes its own config from the data: give --data DIR (and --set "
                                 "overrides), not a config file or --resume")
        if data is None:
            raise PixelwiseError("--auto needs the dataset: --data DIR")
        from pixelwise.plan import plan_dataset

        auto_plan = plan_dataset(data, fmt, time_budget or "30m", "auto", name=name)
        err.print(auto_plan.to_yaml(), markup=False, highlight=False, soft_wrap=True)  # [lists] are not markup

    shortcuts: dict[str, Any] = {
        "data.root": data, "data.format": fmt, "model.arch": model, "model.encoder": encoder,
        "train.epochs": epochs, "train.max_steps": max_steps, "train.time_budget": time_budget,
        "train.batch_size": batch_size, "data.crop_size": crop_size, "optim.lr": lr, "name": name,
        "train.tensorboard": None if tensorboard else False, "train.report": None if report else False,
    }
    values = {k: (str(v) if isinstance(v, Path) else v) for k, v in shortcuts.items() if v is not None}
    if resume is not None:
        if config is not None or (out_dir is not None and out_dir != resume):
            raise PixelwiseError("--resume continues a run in its own directory with its own config.yaml; "
                                 "give --set overrides, not a config file or --out")
        cfg = load_config(resume / "config.yaml", set_, values)
        run_dir = resume
    else:
        cfg = load_config(config, set_, values, base=auto_plan.tree() if auto_plan else None)
        run_dir = out_dir or Path("runs") / cfg.name
    trainer = Trainer(cfg, run_dir, resume=resume is not None, overwrite=overwrite, callbacks=default_callbacks(cfg))
    if auto_plan is not None and launched_rank() == 0:
        atomic_write_text(run_dir / "plan.yaml", auto_plan.to_yaml())
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
    if result.errors:
        raise SystemExit(1)


@app.command()
def plan(
    root: Path = typer.Argument(..., help="Dataset folder (or list file)."),
    fmt: str | None = typer.Option(None, "--format", help="Dataset layout (data.format; default: detected)."),
    budget: str = typer.Option("30m", help="Training time to plan for (e.g. 10m, 2h)."),
    out_file: Path | None = typer.Option(None, "--out", help="Write the config here (YAML, a reason per choice)."),
    device: str = typer.Option("auto", help="Plan for cpu, cuda or auto (this machine's)."),
    measure: bool = typer.Option(True, help="Time a few training steps to fit crops and epochs to the budget."),
) -> None:
    """Choose a config from the dataset's fingerprint and this machine, each choice with its reason."""
    from pixelwise.plan import plan_dataset

    if out_file is not None and out_file.exists():
        raise PixelwiseError(f"{out_file} exists; choose another --out (nothing the user had is overwritten)")
    result = plan_dataset(root, fmt, budget, device, measure)
    text = result.to_yaml()
    out.print(text, markup=False, highlight=False, soft_wrap=True)
    if out_file is not None:
        atomic_write_text(out_file, text)
        err.print(f"config written to {out_file}; train with: pixelwise train {out_file}")


@app.command("lr-find")
def lr_find_(
    config: Path | None = typer.Argument(None, help="YAML config file (the run you are about to train)."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key (repeatable)."),
    data: Path | None = typer.Option(None, help="Dataset folder (data.root)."),
    start: float = typer.Option(1e-7, help="First learning rate."),
    end: float = typer.Option(1.0, help="Last learning rate."),
    steps: int = typer.Option(100, help="Batches over which the rate rises from start to end."),
    out_dir: Path | None = typer.Option(None, "--out", help="Folder for lr_find.png and lr_find.csv "
                                                            "(default: runs/lr-find-NAME)."),
) -> None:
    """Learning-rate range test: plot the loss against a rising rate and suggest optim.lr."""
    from pixelwise.config import load_config
    from pixelwise.engine.lr_find import lr_find

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise PixelwiseError("lr-find runs as one process; start it without torchrun")
    cfg = load_config(config, set_, {"data.root": str(data)} if data is not None else None)
    result = lr_find(cfg, out_dir or Path("runs") / f"lr-find-{cfg.name}", start, end, steps)
    err.print(f"{result['stopped']} after {result['steps']} steps; the loss was lowest at lr "
              f"{result['min_loss_lr']:.3g}")
    err.print(f"suggested learning rate: [bold]{result['suggested_lr']:.3g}[/]  "
              f"(train with --set optim.lr={result['suggested_lr']:.3g}); plot: {result['plot']}")
    out.print_json(json.dumps(result))


@app.command("eval")
def eval_(
    run: Path = typer.Argument(..., help="Run directory."),
    data: Path | None = typer.Option(None, help="Dataset folder (default: the run's)."),
    fmt: str | None = typer.Option(None, "--format", help="Dataset layout (default: the run's)."),
    split: str = typer.Option("val", help="Split to evaluate."),
    out_file: Path | None = typer.Option(None, "--out", help="Metrics JSON (default: RUN/eval_SPLIT.json)."),
    batch_size: int | None = typer.Option(None, help="Images per forward pass."),
    device: str = typer.Option("auto", help="cpu, cuda, cuda:1, or auto."),
    report: bool = typer.Option(True, help="Also write RUN/report.html (report_SPLIT.html for other splits)."),
) -> None:
    """Evaluate a run on a split: per-class table, JSON with mIoU, accuracy, precision, recall, F1, and the report."""
    from pixelwise.inference.evaluation import evaluate_run
    from pixelwise.report.build import report_run
    from pixelwise.report.tables import metrics_table

    if report:  # evaluates with per-image scores (for the gallery) and writes RUN/eval_SPLIT.json
        result, _ = report_run(run, split, data, fmt, batch_size, device)
    else:
        result = evaluate_run(run, split, data, fmt, batch_size, device)
    out.print(metrics_table(result, title=f"{run} on '{split}' ({result['images']} images)"))
    target = out_file or run / f"eval_{split}.json"
    if out_file is not None or not report:
        atomic_write_text(target, json.dumps(result, indent=2))
    err.print(f"metrics written to {target}")


@app.command()
def report(
    run: Path = typer.Argument(..., help="Run directory."),
    split: str = typer.Option("val", help="Split the report describes."),
    data: Path | None = typer.Option(None, help="Dataset folder (default: the run's)."),
    fmt: str | None = typer.Option(None, "--format", help="Dataset layout (default: the run's)."),
    device: str = typer.Option("auto", help="cpu, cuda, cuda:1, or auto."),
) -> None:
    """Rebuild RUN/report.html (reuses RUN/eval_SPLIT.json when it scores the same images; else evaluates)."""
    from pixelwise.report.build import report_run

    report_run(run, split, data, fmt, device=device, reuse=True)


data_app = typer.Typer(no_args_is_help=True, help="Look at a dataset.")
app.add_typer(data_app, name="data")


@data_app.command("preview")
def data_preview(
    root: Path = typer.Argument(..., help="Dataset folder, or a YAML config (its data and augment sections)."),
    fmt: str | None = typer.Option(None, "--format", help="Dataset layout (data.format)."),
    augment: str | None = typer.Option(None, help="Augmentation preset: none, light, default, strong."),
    crop_size: int | None = typer.Option(None, help="data.crop_size (square)."),
    samples: int = typer.Option(8, min=1, max=64, help="Training samples on the sheet."),
    seed: int = typer.Option(0, help="Which samples and augmentations."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key (repeatable)."),
    out_file: Path = typer.Option(Path("preview.png"), "--out", help="PNG to write."),
    bands: str | None = typer.Option(None, help="Channels shown as red, green, blue (1-based, e.g. 4,3,2; default: "
                                                "the first three); non-8-bit data is contrast-stretched."),
) -> None:
    """Write a sheet of augmented training samples with their masks: what the model will see."""
    from pixelwise.config import load_config
    from pixelwise.report.preview import preview_sheet

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


@app.command()
def predict(
    run: Path = typer.Argument(..., help="Run directory, or an exported .onnx model (runs without PyTorch)."),
    inputs: list[Path] = typer.Argument(..., help="Image files or folders of images."),
    out_dir: Path = typer.Option(..., "--out", help="Folder for NAME.png masks and NAME_overlay.jpg overlays."),
    overlay: bool = typer.Option(True, help="Also write overlays."),
    tile: int | None = typer.Option(None, help="Sliding-window tile side in pixels (default: automatic for images "
                                                "over 16 training crops of pixels; 0: never tile)."),
    overlap: float = typer.Option(0.25, min=0.0, max=0.9, help="Fraction of a tile shared with its neighbours."),
    tta: bool = typer.Option(False, help="Test-time augmentation: average over horizontal and vertical flips."),
    scales: str = typer.Option("1", help="Comma-separated scales for multi-scale TTA, e.g. 0.75,1,1.25."),
    save_probs: bool = typer.Option(False, help="Also write NAME_probs.npz (float16) and NAME_entropy.png."),
    device: str = typer.Option("auto", help="cpu, cuda, cuda:1, or auto."),
    overwrite: bool = typer.Option(False, help="Replace predictions already in --out."),
) -> None:
    """Predict masks for images of any size (tiled when large), optionally with TTA and probabilities."""
    from pixelwise.inference.files import PredictOptions, predict_files
    from pixelwise.inference.predictor import Segmenter

    try:
        scale_list = tuple(float(x) for x in scales.split(",") if x.strip())
    except ValueError:
        raise PixelwiseError(f"--scales expects comma-separated numbers, e.g. 0.75,1,1.25; got '{scales}'") from None
    if not scale_list or min(scale_list) <= 0:
        raise PixelwiseError(f"--scales must be positive numbers, got '{scales}'")
    options = PredictOptions(tile, overlap, tta, scale_list, save_probs)
    seg = Segmenter.load(run, device=device)
    if tile and tile < min(seg.crop_size):
        err.print(f"[yellow]warning:[/] --tile {tile} is smaller than the training crops "
                  f"({seg.crop_size[0]}x{seg.crop_size[1]}): each tile gives the network less context than it "
                  "learned with, so tiled masks differ more from whole-image ones; a tile of at least the crop size "
                  "is advised")
    report = predict_files(seg, inputs, out_dir, overlay, overwrite, options)
    for warning in report.warnings:
        err.print(f"[yellow]warning:[/] {escape(warning)}")
    err.print(f"wrote {len(report.written)} files to {out_dir}")
    if report.failed:
        raise PixelwiseError("some images could not be predicted:\n" + "\n".join(f"  - {f}" for f in report.failed))


@app.command()
def export(
    run: Path = typer.Argument(..., help="Run directory."),
    fmt: str = typer.Option("onnx", "--format", help="Export format (onnx)."),
    out_file: Path | None = typer.Option(None, "--out", help="Model file (default: RUN/model.onnx)."),
    int8: bool = typer.Option(False, help="Also write a static int8 model (RUN/model.int8.onnx), calibrated on "
                                          "training images, and compare it with fp32 on the val split."),
    data: Path | None = typer.Option(None, help="Dataset folder for the checks (default: the run's)."),
) -> None:
    """Export to ONNX (uint8 input, preprocessing in the graph), checked against PyTorch on real images."""
    if fmt != "onnx":
        raise PixelwiseError(f"--format {fmt}: only onnx is supported")
    from pixelwise.export.onnx import export_onnx

    result = export_onnx(run, out_file, data)
    err.print(f"wrote {result['path']} ({result['bytes'] / 2**20:.1f} MiB): argmax agreement with PyTorch "
              f"{result['argmax_agreement']:.4%}, max |logit difference| {result['max_abs_logit_diff']:.2e} on "
              f"{result['images']} val images")
    if int8:
        from pixelwise.export.quantize import compare_on_split, quantize

        path = quantize(run, Path(result["path"]), data_root=data)
        cmp = compare_on_split(run, Path(result["path"]), path, data_root=data)
        result["int8"] = {"path": str(path), **cmp}
        err.print(f"wrote {path}: pixel agreement with fp32 {cmp['pixel_agreement']:.2%} on {cmp['images']} "
                  f"{cmp['split']} images; mIoU fp32 {cmp['fp32_miou']:.4f}, int8 {cmp['int8_miou']:.4f} "
                  f"({cmp['miou_change_points']:+.2f} points)")
    out.print_json(json.dumps(result))


@app.command()
def bench(
    run: Path = typer.Argument(..., help="Run directory (exports model.onnx and model.int8.onnx when missing)."),
    images: int = typer.Option(16, min=1, help="Val images to time."),
    batch_size: int = typer.Option(4, min=1, help="Batch for the throughput column."),
    device: str = typer.Option("cpu", help="Device of the PyTorch rows."),
) -> None:
    """Latency (batch 1) and throughput of PyTorch fp32/bf16 and ONNX Runtime fp32/int8 on the run's val images."""
    from rich.table import Table

    from pixelwise.export.bench import bench_run

    rows = bench_run(run, images, batch_size, device=device)
    table = Table(title=f"{run}: whole val images, prediction end to end")
    for col in ("backend", "latency (ms, batch 1)", f"images/s (batch {batch_size})"):
        table.add_column(col, justify="left" if col == "backend" else "right")
    for r in rows:
        if "skipped" in r:
            table.add_row(r["backend"], "-", r["skipped"])
        else:
            table.add_row(r["backend"], f"{r['latency_ms']:.0f}", f"{r['images_per_second']:.2f}")
    out.print(table)
    atomic_write_text(run / "bench.json", json.dumps(rows, indent=2))
    err.print(f"written to {run / 'bench.json'}")


@app.command()
def serve(
    model: str = typer.Argument(..., help="Run directory (PyTorch), exported .onnx (ONNX Runtime), or hf://OWNER/NAME."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, min=0, max=65535),
    workers: int = typer.Option(1, min=1, max=64, help="Server processes, each with its own copy of the model."),
    api_key: str | None = typer.Option(None, envvar="PIXELWISE_API_KEY", help="Key every API request must send."),
    cors_origins: list[str] = typer.Option([], "--cors-origin", help="Browser origin allowed (repeatable; none: off)."),
    max_upload_mb: float = typer.Option(32.0, min=0.001, help="Largest request body, MiB."),
    max_image_pixels: int | None = typer.Option(None, min=1, help="Default: the run's data.max_image_pixels."),
    queue: int = typer.Option(32, min=0, help="Requests that may wait for the model; more get 503."),
    timeout: float = typer.Option(60.0, min=0.001, help="Seconds for a request body to arrive, and for an answer."),
    device: str = typer.Option("auto", help="PyTorch device: cpu, cuda, cuda:1, or auto."),
) -> None:
    """Serve a model over HTTP: POST /predict, /predict/batch, GET /model, /health, a page at /, docs at /docs."""
    options = dict(locals())  # each option is the ServeSettings field of the same name
    from pixelwise.serve.server import serve_options
    serve_options(options)


@app.command()
def models(
    info: str | None = typer.Option(None, help="Show parameters and GFLOPs of this architecture."),
    encoder: str = typer.Option("resnet18", help="Encoder for --info."),
    size: str = typer.Option("320x320", help="Input HxW for --info."),
    in_channels: int = typer.Option(3, help="Input channels for --info."),
    classes: int = typer.Option(12, help="Output classes for --info."),
) -> None:
    """List the architectures, or show one's size and cost (--info NAME [--size HxW])."""
    from rich.table import Table

    from pixelwise.models.factory import ARCHITECTURES

    if info is None:
        table = Table(title="architectures (use any smp encoder or tu-<timm model> as model.encoder)")
        table.add_column("name")
        table.add_column("what")
        for name in ARCHITECTURES.names():
            table.add_row(name, ARCHITECTURES.get(name).summary)
        out.print(table)
        return
    from pixelwise.models.info import model_info

    try:
        h, w = (int(v) for v in size.lower().split("x"))
    except ValueError:
        raise PixelwiseError(f"--size expects HxW, e.g. 320x320, got '{size}'") from None
    result = model_info(info, encoder, in_channels, classes, (h, w))
    out.print(f"{info}" + (f" ({encoder})" if result["encoder"] else "") + f": {result['params_millions']:.2f} M "
              f"parameters, {result['gflops']:.2f} GFLOPs per {h}x{w} image ({in_channels} channel(s) in, "
              f"{classes} classes out)")


def main() -> None:
    """Console entry point: user errors are printed as one clear message with exit code 1, no traceback."""
    try:
        app()
    except PixelwiseError as e:
        if launched_rank() == 0:  # under torchrun every rank decides alike: one message, from rank 0
            err.print(f"[bold red]error:[/] {escape(str(e))}")
        raise SystemExit(1) from None
    finally:
        if "torch.distributed" in sys.modules:  # imported by a command that trained: leave the group cleanly
            from pixelwise.engine.distributed import shutdown

            shutdown()


def launched_rank() -> int:
    """This process's rank under torchrun, 0 otherwise (read without importing torch)."""
    return int(os.environ.get("RANK", "0"))
