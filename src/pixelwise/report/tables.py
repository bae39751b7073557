"""Console tables of evaluation results."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

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
    table.add_row("[bold]mIoU", f"[bold]{_fmt(result['miou'])}", "", "", "", "")
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
    head = Table(title=f"{escape(fp.root)} ({fp.format})", show_header=False)
    head.add_column(style="bold")
    head.add_column()
    head.add_row("splits", escape(", ".join(f"{k}: {v}" for k, v in fp.splits.items()) + (
        f" ({fp.validation})" if fp.validation else "")))
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
            table.add_row(str(k), escape(c.name), f"{c.pixels:,}", f"{c.pixel_share:.2%}", f"{c.image_share:.0%}", row)
        console.print(table)
    for n in result.notes:
        console.print(f"[dim]note:[/] {escape(n)}")
    for w in result.warnings:
        console.print(f"[yellow]warning:[/] {escape(w)}")
    for e in result.errors:
        console.print(f"[bold red]error:[/] {escape(e)}")
    if result.errors:
        console.print(f"[bold red]{len(result.errors)} problem(s): the data cannot be trained on as it is[/]")
    else:
        console.print(f"[green]ok[/]: {fp.pairs_readable} pairs can be trained on"
                      + (f" ({len(result.warnings)} warning(s))" if result.warnings else ""))
