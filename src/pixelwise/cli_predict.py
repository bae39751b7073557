"""``predict``: masks (and overlays, probabilities, pre-annotations for a labelling tool) for new images of any
size, from a run or an exported ONNX model. Registered on ``cli.app`` by ``cli.py``; heavy imports inside."""

from __future__ import annotations

from pathlib import Path

import typer

from pixelwise.cli_deploy import DEVICE_HELP
from pixelwise.errors import PixelwiseError, list_offenders
from pixelwise.progress import console as err
from pixelwise.progress import notice


def predict(
    run: Path = typer.Argument(..., help="Run directory, or an exported .onnx model (runs without PyTorch)."),
    inputs: list[Path] = typer.Argument(..., help="Image files or folders of images."),
    out_dir: Path | None = typer.Option(None, "--out", help="Folder for NAME.png masks and NAME_overlay.jpg overlays.",
                                        show_default="RUN/predictions, or MODEL_predictions beside an .onnx model"),
    overlay: bool = typer.Option(True, help="Also write overlays."),
    tile: int | None = typer.Option(None, min=0, help="Sliding-window tile side in pixels (default: automatic for "
                                                       "images over 16 training crops of pixels; 0: never tile)."),
    overlap: float = typer.Option(0.25, min=0.0, max=0.9, help="Fraction of a tile shared with its neighbours."),
    tta: bool = typer.Option(False, help="Test-time augmentation: average over horizontal and vertical flips."),
    scales: str = typer.Option("1", help="Comma-separated scales for multi-scale TTA, e.g. 0.75,1,1.25."),
    save_probs: bool = typer.Option(False, help="Also write NAME_probs.npz (float16) and NAME_entropy.png."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    overwrite: bool = typer.Option(False, help="Replace predictions already in --out."),
    tool: str | None = typer.Option(None, "--as", help="Also write pre-annotations: coco, cvat or labelstudio."),
    polygons: float | None = typer.Option(None, min=0.0, help="Pre-annotations as polygons simplified by this "
                                                              "many pixels (default: exact RLE masks)."),
    image_url: str = typer.Option("/data/local-files/?d=", help="Label Studio: data.image = this + file name."),
) -> None:
    """Predict masks for images of any size (tiled when large), optionally with TTA and probabilities."""
    from pixelwise.inference.files import PredictOptions, predict_files
    from pixelwise.inference.preannotate import TOOLS, Preannotations

    if tool is not None and tool not in TOOLS:
        raise PixelwiseError(f"--as {tool}: choose one of {', '.join(TOOLS)}")
    from pixelwise.inference.predictor import Segmenter

    try:
        scale_list = tuple(float(x) for x in scales.split(",") if x.strip())
    except ValueError:
        raise PixelwiseError(f"--scales expects comma-separated numbers, e.g. 0.75,1,1.25; got '{scales}'") from None
    if not scale_list or min(scale_list) <= 0:
        raise PixelwiseError(f"--scales must be positive numbers, got '{scales}'")
    options = PredictOptions(tile, overlap, tta, scale_list, save_probs)
    seg = Segmenter.load(run, device=device)
    if out_dir is None:
        out_dir = run.with_name(f"{run.stem}_predictions") if run.is_file() else run / "predictions"
    if tile and tile < min(seg.crop_size):
        notice("warning", f"--tile {tile} is smaller than the training crops ({seg.crop_size[0]}x"
               f"{seg.crop_size[1]}): each tile gives the network less context than it learned with, so tiled "
               "masks differ more from whole-image ones; a tile of at least the crop size is advised")
    pre = Preannotations(tool, seg.table, polygons, image_url, run.name) if tool else None
    report = predict_files(seg, inputs, out_dir, overlay, overwrite, options, pre)
    for warning in report.warnings:
        notice("warning", warning)
    if report.renamed:
        notice("note", list_offenders("outputs named with _2, _3, ... so that no two share a name", report.renamed))
    err.print(f"wrote {len(report.written)} files to {out_dir}")
    if report.failed:
        raise PixelwiseError("some images could not be predicted:\n" + "\n".join(f"  - {f}" for f in report.failed))
