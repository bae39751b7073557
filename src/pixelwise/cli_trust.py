"""Can a prediction be trusted: ``explain`` (class activation maps), ``calibrate`` (temperature scaling) and
``robustness`` (corrupted copies of a split, another dataset). ``eval`` measures calibration and uncertainty
against errors (``--uncertainty``). Registered on ``cli.app`` by ``cli.py``; heavy imports inside the commands.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from pixelwise.atomic import atomic_write_bytes, atomic_write_text, check_new_file, check_out_dir
from pixelwise.cli_deploy import DEVICE_HELP
from pixelwise.errors import PixelwiseError
from pixelwise.progress import console as err
from pixelwise.progress import stdout as out


def _box(text: str | None) -> tuple[int, int, int, int] | None:
    if text is None:
        return None
    try:
        x0, y0, x1, y1 = (int(v) for v in text.split(","))
    except ValueError:
        raise PixelwiseError(f"--box {text}: give X0,Y0,X1,Y1 in pixels, e.g. --box 10,20,200,180") from None
    if x1 <= x0 or y1 <= y0:
        raise PixelwiseError(f"--box {text}: X1 must exceed X0 and Y1 exceed Y0")
    return x0, y0, x1, y1


def _truth_of(masks: Path, image: Path, table: object) -> object:
    """The mask of ``image`` in ``masks`` (same stem, any image suffix) as class indices (255 void)."""
    import numpy as np

    from pixelwise.data.io import read_mask

    found = sorted(p for p in masks.glob(f"{image.stem}.*") if p.is_file())
    if not found:
        raise PixelwiseError(f"--masks {masks}: no mask named {image.stem}.* for {image.name}")
    raw = read_mask(found[0], table.color_codes() if table.color_masks else None)
    lut = table.lut()
    if raw.max() >= len(lut) or (lut[raw] < 0).any():
        raise PixelwiseError(f"{found[0]}: holds values that are not classes of the run ({', '.join(table.names)})")
    return lut[raw].astype(np.uint8)


def explain(
    run: Path = typer.Argument(..., help="Run directory."),
    images: list[Path] = typer.Argument(..., help="Image files or folders."),
    class_name: str = typer.Option(..., "--class", help="The class to explain."),
    method: str = typer.Option("gradcam", help="gradcam, gradcam++ or eigencam."),
    region: str = typer.Option("predicted", help="Whose logits are explained: predicted (pixels predicted as the "
                                                  "class), truth (its true pixels, with --masks) or box (--box)."),
    box: str | None = typer.Option(None, help="X0,Y0,X1,Y1 for --region box."),
    masks: Path | None = typer.Option(None, help="Folder of the images' masks (same stems) for --region truth."),
    layer: str | None = typer.Option(None, help="Target module (dotted name in the network; default: the "
                                                "decoder's last map at 1/4 resolution or coarser, else the encoder's "
                                                "deepest stage)."),
    out_dir: Path = typer.Option(..., "--out", help="Folder for the overlays and explanations.json."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    overwrite: bool = typer.Option(False, help="Replace files already in --out."),
) -> None:
    """Class activation maps (Grad-CAM and kin) of one class, as overlays with the class's region outlined."""
    from pixelwise.data.io import read_image
    from pixelwise.display import display_rgb
    from pixelwise.inference import explain as ex
    from pixelwise.inference.files import collect_inputs
    from pixelwise.inference.predictor import Segmenter
    from pixelwise.report.plots import png_bytes

    if region not in ex.REGIONS:
        raise PixelwiseError(f"--region {region}: choose one of {', '.join(ex.REGIONS)}")
    if region == "truth" and masks is None:
        raise PixelwiseError("--region truth needs --masks DIR (the images' masks, same file stems)")
    bounds = _box(box)
    ex._cam_class(method)
    check_out_dir(out_dir)
    seg = Segmenter.load(run, device=device)
    files = collect_inputs(images)
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in class_name)
    targets = [out_dir / f"{f.stem}_{safe}_{method.replace('+', 'p')}.png" for f in files]
    for target in [*targets, out_dir / "explanations.json"]:
        check_new_file(target, overwrite)
    records = []
    for path, target in zip(files, targets, strict=True):
        image = read_image(path, seg.spec)
        truth = _truth_of(masks, path, seg.table) if masks is not None else None
        try:
            e = ex.explain(seg, image, class_name, method, region, truth, bounds, layer)
        except PixelwiseError as problem:
            err.print(f"{path.name}: skipped: {problem}")
            records.append({"image": str(path), "skipped": str(problem)})
            continue
        atomic_write_bytes(target, png_bytes(ex.overlay(display_rgb(image), e.cam, e.region)))
        hit = ex.pointing_hit(e.cam, e.region)
        records.append({"image": str(path), "overlay": str(target), "layer": e.layer, "region_pixels":
                        int(e.region.sum()), "pointing_hit": hit})
        err.print(f"{path.name}: {target} (layer {e.layer}; map peak {'inside' if hit else 'outside'} the region)")
    atomic_write_text(out_dir / "explanations.json", json.dumps(
        {"run": str(run), "class": class_name, "method": method, "region": region, "images": records}, indent=2))
    hits = [r["pointing_hit"] for r in records if "pointing_hit" in r]
    if hits:
        out.print(f"pointing game: the map's peak fell within 15 pixels of the {region} region in "
                  f"{sum(hits)}/{len(hits)} images")


def calibrate(
    run: Path = typer.Argument(..., help="Run directory (calibration.json is written into it)."),
    split: str = typer.Option("val", help="Split to fit the temperature on."),
    fit_fraction: float = typer.Option(0.5, min=0.01, max=1.0,
                                       help="Share of the split's images the temperature is fitted on; ECE "
                                            "before/after is measured on the rest (1: fit and measure on all)."),
    seed: int = typer.Option(0, min=0, help="Seed of the fit/held-out division and of the pixel sample."),
    data: Path | None = typer.Option(None, help="Dataset folder (default: the run's)."),
    fmt: str | None = typer.Option(None, "--format", help="Dataset layout (default: the run's)."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
) -> None:
    """Fit temperature scaling on a split; predict, eval, serve and export apply it (masks stay the same)."""
    from pixelwise.inference.calibration import calibrate_items, split_indices, write_calibration
    from pixelwise.inference.evaluation import open_run_split

    rs = open_run_split(run, split, data, fmt, device)
    fit, held = split_indices(len(rs.dataset), fit_fraction, seed)
    if not fit:
        raise PixelwiseError(f"the '{split}' split has no images to fit a temperature on")

    info = calibrate_items(rs.segmenter.logits, rs.dataset.load, fit, held, rs.segmenter.class_names, seed)
    info.update(split=split, fit_fraction=fit_fraction, seed=seed)
    path = write_calibration(run, info)
    out.print(f"temperature {info['temperature']:.4f} (fitted on {info['fit_images']} '{split}' images); ECE on "
              f"{info['eval_images']} {info['eval_on']}: {info['before']['ece']:.4f} before, "
              f"{info['after']['ece']:.4f} after; masks unchanged on {info['argmax_unchanged']:.4%} of pixels")
    err.print(f"written to {path}; predict, eval, serve and export apply it from now on")


def _severities(text: str) -> list[int]:
    try:
        if "-" in text:
            lo, hi = (int(v) for v in text.split("-"))
            return list(range(lo, hi + 1))
        return [int(v) for v in text.split(",") if v]
    except ValueError:
        raise PixelwiseError(f"--severities {text}: give a range (1-5) or a list (1,3,5)") from None


def robustness(
    run: Path = typer.Argument(..., help="Run directory."),
    corruptions: str | None = typer.Option(None, help="Comma-separated ImageNet-C names (default: all)."),
    severities: str = typer.Option("1,3,5", help="Severities: a range (1-5) or a list (1,3,5)."),
    split: str = typer.Option("val", help="Split to corrupt."),
    limit: int | None = typer.Option(None, min=1, help="Use this many images of the split, evenly spread."),
    data: Path | None = typer.Option(None, help="Another dataset (same classes): the domain-shift gap on its split."),
    fmt: str | None = typer.Option(None, "--format", help="Layout of --data (default: the run's)."),
    batch_size: int = typer.Option(4, min=1, help="Images per forward pass."),
    out_file: Path | None = typer.Option(None, "--out", help="Results JSON (default: RUN/robustness.json); the "
                                         "heatmap goes beside it (FILE with .png; default RUN/plots/robustness.png)."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    overwrite: bool = typer.Option(False, help="Replace the --out file and its .png if they exist."),
) -> None:
    """mIoU on corrupted copies of a split (noise, blur, weather, digital; ImageNet-C style), as a table and heatmap."""
    from pixelwise.inference.evaluation import open_run_split
    from pixelwise.inference.robustness import robustness as run_robustness
    from pixelwise.report.tables import robustness_table
    from pixelwise.report.trust import plot_robustness

    names = [c.strip() for c in corruptions.split(",") if c.strip()] if corruptions else None
    # with --out, the figure goes beside it: RUN/plots/robustness.png stays the picture of RUN/robustness.json
    figure = out_file.with_suffix(".png") if out_file is not None else run / "plots" / "robustness.png"
    if out_file is not None:
        if figure == out_file:
            raise PixelwiseError(f"--out {out_file}: give a results file not ending in .png (the heatmap is {figure})")
        check_new_file(out_file, overwrite)
        check_new_file(figure, overwrite)
    rs = open_run_split(run, split, None, None, device)
    other = open_run_split(run, split, data, fmt, device) if data is not None else None
    result = run_robustness(rs, names, _severities(severities), limit, batch_size, other)
    result["run"] = str(run)
    target = out_file or run / "robustness.json"
    atomic_write_text(target, json.dumps(result, indent=2))
    atomic_write_bytes(figure, plot_robustness(result))
    out.print(robustness_table(result))
    if "domain_shift" in result:
        shift = result["domain_shift"]
        out.print(f"domain shift: mIoU {shift['miou']:.4f} on {data} ('{split}'), gap {shift['gap']:.4f}")
    shown = "" if out_file is not None else " (the report shows them: pixelwise report RUN)"
    err.print(f"{result['seconds']} s; written to {target} and {figure}{shown}")
