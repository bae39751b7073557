"""The labelling-loop command ``suggest``: which unlabelled images to label next (``inference.suggest``), as a CSV,
a page, and optionally pre-annotations of them (``predict --as`` is in ``cli.py``).

Registered on ``cli.app`` by ``cli.py``, after ``predict``.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import typer

from pixelwise.atomic import atomic_write_text, check_new_file, check_out_dir
from pixelwise.errors import PixelwiseError, list_offenders
from pixelwise.progress import console as err
from pixelwise.progress import notice


def suggest(
    run: Path = typer.Argument(..., help="Run directory, or an exported .onnx model."),
    unlabelled: Path = typer.Argument(..., help="Folder of images not labelled yet."),
    count: int = typer.Option(..., "--count", min=1, help="How many images to suggest."),
    strategy: str = typer.Option("entropy", help="entropy, margin, tta-disagreement, diverse or random."),
    out_dir: Path = typer.Option(Path("suggestions"), "--out", help="Folder for suggestions.csv and .html."),
    tool: str | None = typer.Option(None, "--as", help="Also write pre-annotations of the chosen images: coco, "
                                                      "cvat or labelstudio."),
    polygons: float | None = typer.Option(None, min=0.0, help="Pre-annotations as polygons simplified by this "
                                                              "many pixels (default: exact RLE masks)."),
    image_url: str = typer.Option("/data/local-files/?d=", help="Label Studio: data.image = this + file name."),
    seed: int = typer.Option(0, min=0, help="Seed of --strategy random."),
    device: str = typer.Option("auto", help="cpu, cuda, cuda:1, or auto."),
    overwrite: bool = typer.Option(False, help="Replace files already in --out."),
) -> None:
    """Rank unlabelled images by how much labelling them should help; write the list, a page, pre-annotations."""
    from pixelwise.data.io import read_image
    from pixelwise.inference.files import collect_inputs
    from pixelwise.inference.preannotate import TOOLS, Preannotations
    from pixelwise.inference.predictor import Segmenter
    from pixelwise.inference.suggest import STRATEGIES
    from pixelwise.inference.suggest import suggest as rank_images
    from pixelwise.report.suggestions import Suggested, render

    if strategy not in STRATEGIES:
        raise PixelwiseError(f"--strategy {strategy}: choose one of {', '.join(STRATEGIES)}")
    if tool is not None and tool not in TOOLS:
        raise PixelwiseError(f"--as {tool}: choose one of {', '.join(TOOLS)}")
    check_out_dir(out_dir)
    seg = Segmenter.load(run, device=device)
    pre = Preannotations(tool, seg.table, polygons, image_url, run.name) if tool else None
    targets = [out_dir / "suggestions.csv", out_dir / "suggestions.html", *(pre.targets(out_dir) if pre else [])]
    for target in targets:
        check_new_file(target, overwrite)
    files = collect_inputs([unlabelled])
    chosen, failed = rank_images(seg, files, count, strategy, seed)
    if failed:
        notice("warning", list_offenders("images that could not be read (not ranked)", failed))
    out_dir.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["rank", "image", "score"])
    for i, s in enumerate(chosen, 1):
        writer.writerow([i, str(s.path), f"{s.score:.6f}"])
    atomic_write_text(targets[0], buf.getvalue())
    items = [Suggested(i, s.path.name, s.score, read_image(s.path, seg.spec), s.uncertainty)
             for i, s in enumerate(chosen[:24], 1)]
    atomic_write_text(targets[1], render(items, run=run.name, strategy=strategy, chosen=len(chosen),
                                         scored=len(files) - len(failed)))
    if pre:
        for s in chosen:
            probs = seg.probabilities(read_image(s.path, seg.spec))
            pre.add(s.path.name, probs.argmax(axis=0).astype("uint8"), float(probs.max(axis=0).mean()))
        pre.write(out_dir)
        for note in pre.notes():
            notice("warning", note)
    err.print(f"wrote {len(chosen)} suggestions to {targets[0]} and {targets[1]}"
              + (f", pre-annotations for {tool} in {out_dir}" if pre else ""))
