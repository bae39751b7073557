"""Console tables of evaluation results."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from pixelwise.progress import notice, styled

if TYPE_CHECKING:
    from pixelwise.data.fingerprint import CheckResult, PixelStats


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def metrics_table(result: dict[str, Any], title: str = "") -> Table:
    """Per-class IoU, precision, recall, F1 and support, then the overall metrics as the last rows."""
    table = Table(title=title or None, show_lines=False)
    for col, justify in (("class", "left"), ("IoU", "right"), ("precision", "right"), ("recall", "right"),
                         ("F1/Dice", "right"), ("support (px)", "right")):
        table.add_column(col, justify=justify)
    for name, m in result["classes"].items():
        table.add_row(name, _fmt(m["iou"]), _fmt(m["precision"]), _fmt(m["recall"]), _fmt(m["f1"]),
                      f"{m['support']:,}")
    table.add_section()
    table.add_row(Text("mIoU", style="bold"), Text(_fmt(result["miou"]), style="bold"), "", "", "", "")
    table.add_row("pixel accuracy", _fmt(result["pixel_accuracy"]), "", "", "", "")
    table.add_row("mean accuracy", _fmt(result["mean_accuracy"]), "", "", "", "")
    table.add_row("fw IoU", _fmt(result["fw_iou"]), "", "", "", "")
    return table


def _num(x: float) -> str:
    return f"{x:,.6g}"


def channel_table(px: PixelStats) -> Table:
    """Per channel: value range, the bits an integer channel uses, percentiles, mean and std (``pixelwise check``)."""
    table = Table(title=f"channels ({px.dtype})")
    for col in ("channel", "min", "max", "bits used", "p0.5", "p50", "p99.5", "mean", "std"):
        table.add_column(col, justify="right")
    for c in px.channels:
        pct = c.percentiles
        table.add_row(str(c.channel), _num(c.min), _num(c.max), "-" if c.bits_used is None else str(c.bits_used),
                      _num(pct["0.5"]), _num(pct["50"]), _num(pct["99.5"]), _num(c.mean), _num(c.std))
    return table


def fingerprint_view(result: CheckResult, console: Console) -> None:
    """``pixelwise check``: the fingerprint as tables, then warnings and errors naming the files."""
    fp = result.fingerprint
    head = Table(title=f"{fp.root} ({fp.format})", show_header=False)
    head.add_column(style="bold")
    head.add_column()
    head.add_row("splits", ", ".join(f"{k}: {v}" for k, v in fp.splits.items()))
    if fp.split_decision:
        head.add_row("training", fp.split_decision)
    head.add_row("pairs readable", f"{fp.pairs_readable} ({fp.pairs_with_problems} with problems)")
    px = fp.pixels
    if fp.image_size is not None:
        size = fp.image_size
        common = ", ".join(f"{s['size'][1]}x{s['size'][0]} ({s['images']})" for s in size.most_common)
        head.add_row("image size (w x h)", f"median {size.width.median:.0f}x{size.height.median:.0f}, "
                     f"{size.width.min}x{size.height.min} .. {size.width.max}x{size.height.max}"
                     f"; {size.distinct} distinct: {common}")
        if px is not None and not set(px.files_by_channels) <= {"1", "3"}:
            head.add_row("channels", f"{fp.channels} (files: " + ", ".join(
                f"{n} with {c} channel(s)" for c, n in px.files_by_channels.items()) + ")")
        elif fp.files is not None:
            head.add_row("channels", f"{fp.channels} (files: {fp.files.grayscale} grayscale, {fp.files.colour} colour)")
        if fp.intensity is not None and (px is None or px.dtype == "uint8"):
            head.add_row("intensity (0-255)", "mean " + ", ".join(f"{m:.1f}" for m in fp.intensity.mean)
                         + "; std " + ", ".join(f"{s:.1f}" for s in fp.intensity.std))
        if px is not None:
            mixed = ", ".join(f"{k}: {v}" for k, v in px.files_by_dtype.items())
            head.add_row("pixel type", f"{px.dtype} ({mixed} files), to the model as {px.model_input}")
    if fp.classes:
        head.add_row("void share", f"{fp.void_share:.2%} of pixels")
        if fp.imbalance:
            head.add_row("imbalance", f"most / least frequent class: {fp.imbalance:.1f}x")
        head.add_row("vertical layout", f"{fp.vertical_layout:.2f} (spread of the classes' mean heights; "
                     "0: no up and down, as in micrographs)")
    console.print(head)
    if px is not None:
        console.print(channel_table(px))
    if fp.classes:
        table = Table(title="classes")
        for col in ("#", "class", "pixels", "pixel share", "in images", "mean height"):
            table.add_column(col, justify="left" if col == "class" else "right")
        for k, c in enumerate(fp.classes):
            row = "-" if c.mean_row is None else f"{c.mean_row:.2f}"
            table.add_row(str(k), c.name, f"{c.pixels:,}", f"{c.pixel_share:.2%}", f"{c.image_share:.0%}", row)
        console.print(table)
    for n in result.notes:
        notice("note", n, "dim", to=console)
    for w in result.warnings:
        notice("warning", w, to=console)
    for e in result.errors:
        notice("error", e, "bold red", to=console)
    if result.errors:
        console.print(Text(f"{len(result.errors)} problem(s): the data cannot be trained on as it is",
                           style="bold red"))
    else:
        console.print(styled(("ok", "green"), f": {fp.pairs_readable} pairs can be trained on"
                             + (f" ({len(result.warnings)} warning(s))" if result.warnings else "")))


def trust_table(trust: dict[str, Any]) -> Table:
    """ECE and, per uncertainty method, its AUROC as a detector of misclassified pixels."""
    table = Table(title=f"Can I trust it? (temperature {trust['temperature']:.3g}, {trust['images']} images)")
    for col, justify in (("measure", "left"), ("value", "right"), ("note", "left")):
        table.add_column(col, justify=justify)
    table.add_row("ECE (expected calibration error)", _fmt(trust["calibration"]["ece"]), "0 = perfectly calibrated")
    for method, u in trust["uncertainty"].items():
        table.add_row(f"AUROC of {method} for errors", _fmt(u.get("auroc")),
                      u.get("unavailable") or "0.5 = says nothing about errors, 1 = finds every error")
    return table


def robustness_table(result: dict[str, Any]) -> Table:
    """mIoU and relative robustness (corrupted / clean) per corruption x severity."""
    sev = [str(s) for s in result["severities"]]
    table = Table(title=f"mIoU under corruption ({result['images']} '{result['split']}' images; clean "
                        f"{_fmt(result['clean_miou'])})")
    table.add_column("corruption")
    for s in sev:
        table.add_column(f"severity {s}", justify="right")
    for name, row in result["table"].items():
        table.add_row(name, *[f"{_fmt(row[s]['miou'])} ({row[s]['relative']:.0%})" if row[s]["relative"] is not None
                              else _fmt(row[s]["miou"]) for s in sev])
    table.add_section()
    table.add_row("mean relative robustness", _fmt(result.get("mean_relative")), *[""] * (len(sev) - 1))
    return table
