"""The deployment commands: ``export`` (ONNX, int8), ``bench`` (latency and throughput) and ``serve`` (HTTP).

Registered on ``cli.app`` by ``cli.py``, in this order, after ``predict``; the options every command shares.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from pixelwise.atomic import atomic_write_text, check_new_file
from pixelwise.errors import PixelwiseError
from pixelwise.progress import console as err
from pixelwise.progress import notice
from pixelwise.progress import stdout as out

INT8_TOLERANCE_POINTS = 1.0  # an int8 model losing more val mIoU than this is worth a warning
CONTEXT = {"help_option_names": ["-h", "--help"]}  # every command's context settings
DEVICE_HELP = "cpu, cuda, cuda:1, mps, or auto (a CUDA GPU, else Apple's MPS, else the CPU)."


def export(
    run: Path = typer.Argument(..., help="Run directory."),
    to: str = typer.Option("onnx", "--to", help="Model format: onnx, or smp (a folder smp.from_pretrained loads)."),
    # --format names the dataset layout in every other command; here it was the model format
    old_format: str | None = typer.Option(None, "--format", hidden=True, help="Deprecated: --to."),
    out_file: Path | None = typer.Option(None, "--out", help="Model file (default: RUN/model.onnx; smp: RUN/smp/)."),
    int8: bool = typer.Option(False, help="Also write a static int8 model (RUN/model.int8.onnx), calibrated on "
                                          "training images, and compare it with fp32 on the val split."),
    data: Path | None = typer.Option(None, help="Dataset folder for the checks (default: the run's)."),
    overwrite: bool = typer.Option(False, help="Replace the --out file (and its .int8.onnx) if they exist; smp: "
                                              "replace a previous smp export's files in --out (a folder holding "
                                              "any other file is refused, never emptied)."),
) -> None:
    """Export to ONNX (uint8 input, preprocessing in the graph), checked against PyTorch; or --to smp for plain smp."""
    if old_format is not None:
        notice("warning", f"export --format is deprecated (elsewhere --format is the dataset layout): use --to "
               f"{old_format}")
        to = old_format
    if to == "smp":  # the network alone, for segmentation-models-pytorch users without pixelwise
        from pixelwise.export.smp import export_smp

        done = export_smp(run, out_file, overwrite)
        err.print(f"wrote {done['path']} (smp.from_pretrained; max |logit difference| {done['max_abs_logit_diff']:.1e})"
                  f"; preprocessing.json holds the normalisation and classes. Use it as:\n{done['usage']}",
                  soft_wrap=True)
        return
    if to != "onnx":
        raise PixelwiseError(f"--to {to}: onnx or smp")
    from pixelwise.export.onnx import export_onnx
    from pixelwise.export.quantize import int8_path

    if out_file is not None:  # RUN/model.onnx, the default, is the run's own file
        for target in (out_file, int8_path(out_file)) if int8 else (out_file,):
            check_new_file(target, overwrite)

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
        if cmp["miou_change_points"] < -INT8_TOLERANCE_POINTS:
            notice("warning", f"int8 costs this model {-cmp['miou_change_points']:.1f} mIoU points on {cmp['split']} "
                   f"(pixel agreement {cmp['pixel_agreement']:.2%}); serve {result['path']} (fp32) where that "
                   "matters")
    out.print_json(json.dumps(result))


def bench(
    run: Path = typer.Argument(..., help="Run directory (exports model.onnx and model.int8.onnx when missing)."),
    images: int = typer.Option(16, min=1, help="Val images to time."),
    batch_size: int = typer.Option(4, min=1, help="Batch for the throughput column."),
    device: str = typer.Option("auto", help=f"Device of the PyTorch rows: {DEVICE_HELP}"),
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
    device: str = typer.Option("auto", help=f"PyTorch device: {DEVICE_HELP}"),
) -> None:
    """Serve a model over HTTP: POST /predict, /predict/batch, GET /model, /health, a page at /, docs at /docs."""
    options = dict(locals())  # each option is the ServeSettings field of the same name
    from pixelwise.serve.server import serve_options
    serve_options(options)
