"""``pixelwise demo``: the whole job, offline, on the built-in synthetic dataset."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from pixelwise.atomic import check_out_dir
from pixelwise.config import load_config
from pixelwise.config_sections import seconds_above_zero
from pixelwise.data import synthetic
from pixelwise.engine.callbacks import Callback, RunState
from pixelwise.errors import PixelwiseError
from pixelwise.progress import console, notice, stdout, styled

MARKER = ".pixelwise-demo"


def _claim(out: Path) -> None:
    """Use ``out`` for the demo; a previous demo's folder is replaced, anything else is left alone."""
    check_out_dir(out)
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists():
            raise PixelwiseError(f"{out}: folder exists and is not a pixelwise demo; choose another with --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by pixelwise demo; the next demo run replaces this folder\n")


# The demo trains a fixed number of steps, not for a fixed time: the quality it promises (validation mIoU about 0.9)
# then holds on every machine, and only the time varies: measured in the full demo (fp32 as on AVX2-only CPUs,
# and bf16), see DESIGN.md (the demo).
DEMO_STEPS = 300
DEMO_CAP = "10m"  # a very slow machine still ends (with a weaker model, and says so)


class _Cap(Callback):
    """Stops training after ``seconds`` of wall time. Not ``train.time_budget``: a time budget also shapes the
    schedule (progress is the larger of steps and time, for the learning rate and crops), so a machine's speed in
    the first steps would change the model; the demo's steps alone decide its schedule, and this only ends it."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.start = seconds, 0.0

    def on_train_start(self, state: RunState) -> None:
        self.start = time.perf_counter()

    def on_step_end(self, state: RunState) -> None:
        if time.perf_counter() - self.start >= self.seconds:
            state.stop("the demo's time cap")


def run_demo(out: Path, steps: int = DEMO_STEPS, time_budget: str | None = DEMO_CAP, amp: str = "auto") -> dict:
    """Generate data, train ``steps`` steps (at most ``time_budget``), evaluate, predict; print where everything is.

    Returns the evaluation result. ``amp='off'`` trains in fp32, as CPUs without native bf16 do (tests).
    """
    from pixelwise.api import default_callbacks
    from pixelwise.engine.trainer import Trainer
    from pixelwise.inference.files import predict_files
    from pixelwise.inference.predictor import Segmenter
    from pixelwise.report.build import report_run
    from pixelwise.report.tables import metrics_table

    start = time.perf_counter()
    _claim(out)
    data_dir = synthetic.write_dataset(out / "data")
    console.print(styled(("1/4", "bold"), f" synthetic dataset ({', '.join(synthetic.CLASSES)}) written to {data_dir}"))
    cfg = load_config(values={
        "name": "demo",
        "data.root": str(data_dir),
        "data.crop_size": 128,
        "model.arch": "unet",
        # A light timm ResNet trains from scratch to well above 0.8 mIoU within the budget on 2 CPU cores,
        # where the deeper resnet18 needs several times longer.
        "model.encoder": "tu-resnet10t",
        "model.encoder_weights": None,  # the same start offline and online, as its quality was measured
        "model.options": {"decoder_channels": [128, 64, 32, 16, 16]},
        "augment.preset": "light",
        "optim.lr": 3e-3,
        "loss": {"ce": 1.0, "dice": 1.0},
        "train.batch_size": 8,
        "train.epochs": 10_000,  # the steps decide
        "train.max_steps": steps,
        "train.amp": amp,
        "train.report": False,  # step 3 writes it
    })
    console.print(styled(("2/4", "bold"), f" training {steps} steps (measured: about a minute on 2 CPU cores with "
                                          "native bf16, two on AVX2-only ones; seconds on a GPU)"))
    run_dir = out / "run"
    cap = [_Cap(seconds_above_zero(time_budget))] if time_budget is not None else []
    summary = Trainer(cfg, run_dir, callbacks=[*default_callbacks(cfg), *cap]).fit()
    if summary.get("steps", steps) < steps:
        notice("note", f"this machine trained {summary['steps']} of the {steps} steps within the {time_budget} cap: "
                       "expect a weaker model than the demo promises")
    console.print(styled(("3/4", "bold"), " evaluating the best weights on the validation split, writing the report"))
    result, report = report_run(run_dir, "val")
    stdout.print(metrics_table(result, title="validation"))
    console.print(styled(("4/4", "bold"), " predicting a few validation images"))
    images = sorted((data_dir / "val" / "images").iterdir())[:4]
    predict_files(Segmenter.load(run_dir), images, out / "predictions", overwrite=True)
    console.print(styled(
        "\n", ("done", "bold green"), f" in {time.perf_counter() - start:.0f}s: validation mIoU ",
        (f"{result['miou']:.3f}", "bold"),
        f"\n  data:        {data_dir}\n"
        f"  run:         {run_dir}  (config.yaml, best.safetensors, last.ckpt, metrics.csv, summary.json)\n"
        f"  metrics:     {run_dir / 'eval_val.json'}\n"
        f"  report:      {report}  (open it in a browser; plots in {run_dir / 'plots'})\n"
        f"  tensorboard: tensorboard --logdir {run_dir / 'tensorboard'}\n"
        f"  predictions: {out / 'predictions'}  (NAME.png masks, NAME_overlay.jpg)\n"
        f"next: pixelwise predict {run_dir} YOUR_IMAGES    |    your data: pixelwise check YOUR_DATA, then "
        "pixelwise train --data YOUR_DATA --auto --time-budget 10m (README: your data in five commands)"
    ))
    return result
