"""Console tables of evaluation results."""

from __future__ import annotations

from typing import Any

from rich.table import Table


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
