"""The HTML report: one self-contained page (pictures embedded as data URIs) from a run's results."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from pixelwise.report.plots import ERROR_VOID_RGB, VOID_RGB, WRONG_RGB

CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, Roboto, sans-serif; margin: 0 auto; max-width: 1320px;
       padding: 16px 24px; color: #1d1d1f; background: #fff; }
h1 { margin-bottom: 4px; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 4px; margin-top: 32px; }
.headline { display: flex; gap: 28px; flex-wrap: wrap; margin: 12px 0; }
.metric { background: #f4f6f8; border-radius: 8px; padding: 10px 16px; }
.metric b { display: block; font-size: 1.6em; } .metric span { color: #555; font-size: 0.9em; }
table.classes { border-collapse: collapse; font-variant-numeric: tabular-nums; }
table.classes th, table.classes td { padding: 4px 10px; border-bottom: 1px solid #eee; text-align: right; }
table.classes th:first-child, table.classes td:first-child { text-align: left; }
.swatch { display: inline-block; width: 12px; height: 12px; border: 1px solid #888; margin-right: 6px;
          vertical-align: middle; }
.row { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
figure { margin: 8px 0 18px 0; } figcaption { color: #444; font-size: 0.9em; margin-top: 4px; }
img { max-width: 100%; }
pre { background: #f4f6f8; padding: 10px; border-radius: 6px; overflow-x: auto; font-size: 0.85em; }
.legend span { margin-right: 14px; white-space: nowrap; } .muted { color: #666; }
"""


@dataclass
class GalleryItem:
    name: str
    miou: float | None
    pixel_accuracy: float | None
    png: bytes


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _fmt(x: float | None, digits: int = 4) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _swatch(rgb: tuple[int, int, int]) -> str:
    return f'<span class="swatch" style="background: rgb{tuple(rgb)}"></span>'


def class_table(result: dict[str, Any], palette: list[tuple[int, int, int]]) -> str:
    rows = []
    for (name, m), rgb in zip(result["classes"].items(), palette, strict=True):
        rows.append(f"<tr><td>{_swatch(rgb)}{html.escape(name)}</td><td>{_fmt(m['iou'])}</td>"
                    f"<td>{_fmt(m['precision'])}</td><td>{_fmt(m['recall'])}</td><td>{_fmt(m['f1'])}</td>"
                    f"<td>{m['support']:,}</td></tr>")
    return ('<table class="classes"><thead><tr><th>class</th><th>IoU</th><th>precision</th><th>recall</th>'
            "<th>F1 / Dice</th><th>support (pixels)</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def legend(names: list[str], palette: list[tuple[int, int, int]]) -> str:
    classes = "".join(f"<span>{_swatch(rgb)}{html.escape(n)}</span>" for n, rgb in zip(names, palette, strict=True))
    errors = (f"<span>{_swatch(VOID_RGB)}void (truth panel)</span>"
              f"<span>{_swatch((90, 90, 90))}correct (dimmed image)</span>"
              f"<span>{_swatch(WRONG_RGB)}wrong</span><span>{_swatch(ERROR_VOID_RGB)}void (not scored)</span>")
    return f'<p class="legend">{classes}</p><p class="legend">error map: {errors}</p>'


def gallery(title: str, items: list[GalleryItem]) -> str:
    figures = "".join(
        f'<figure><img src="{data_uri(it.png)}" alt="{html.escape(it.name)}">'
        f"<figcaption><b>{html.escape(it.name)}</b> — mIoU {_fmt(it.miou, 3)}, pixel accuracy "
        f"{_fmt(it.pixel_accuracy, 3)} &nbsp;<span class='muted'>image | truth | prediction | error</span>"
        "</figcaption></figure>"
        for it in items
    )
    return f"<h3>{html.escape(title)}</h3>{figures or '<p class=muted>no images</p>'}"


def render(
    *,
    title: str,
    split: str,
    result: dict[str, Any],
    palette: list[tuple[int, int, int]],
    config_yaml: str,
    plots: dict[str, bytes],
    worst: list[GalleryItem],
    best: list[GalleryItem],
    summary: dict[str, Any] | None,
    trust: str = "",
) -> str:
    """The report page. ``plots`` keys: curves, confusion, class_iou, frequencies (each optional); ``trust``: the
    "Can I trust it?" section's HTML (``report.trust``)."""
    names = list(result["classes"])
    metric = [("mIoU", result["miou"]), ("pixel accuracy", result["pixel_accuracy"]),
              ("mean accuracy", result["mean_accuracy"]), ("fw IoU", result["fw_iou"])]
    head = "".join(f'<div class="metric"><b>{_fmt(v)}</b><span>{k}</span></div>' for k, v in metric)
    head += f'<div class="metric"><b>{result["images"]}</b><span>{html.escape(split)} images</span></div>'
    facts = []
    if summary:
        facts.append(f"trained {summary.get('epochs')} epochs / {summary.get('steps')} steps in "
                     f"{summary.get('wall_seconds')} s on {html.escape(str(summary.get('runtime')))}, "
                     f"stopped by {html.escape(str(summary.get('stopped_by')))}; best val mIoU "
                     f"{_fmt(summary.get('best_miou'))} at epoch {summary.get('best_epoch')}")
    facts.append(f"written {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}")

    def figure(key: str, caption: str) -> str:
        if key not in plots:
            return ""
        return f'<figure><img src="{data_uri(plots[key])}" alt="{key}"><figcaption>{caption}</figcaption></figure>'

    curves = figure("curves", "Training curves (metrics.csv).") or "<p class=muted>no training history</p>"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p class="muted">{" · ".join(facts)}</p>
<div class="headline">{head}</div>
<h2 id="curves">Training</h2>{curves}
<h2 id="classes">Per-class results ({html.escape(split)})</h2>
<div class="row"><div>{class_table(result, palette)}</div>
{figure("class_iou", "IoU per class; dashed: mIoU.")}</div>
<h2 id="confusion">Confusion matrix</h2>
{figure("confusion", "Rows: true class, columns: predicted class; each row is normalised to 1.")}
<h2 id="data">Class frequencies</h2>
{figure("frequencies", "Share of the labelled pixels of each class (void excluded).")}
<h2 id="gallery">Where the model fails, and where it works</h2>
<p>Validation images ranked by their own mIoU (classes present in the truth or the prediction).</p>
{legend(names, palette)}
{gallery(f"Worst {len(worst)}", worst)}
{gallery(f"Best {len(best)}", best)}
{trust}
<h2 id="config">Configuration</h2>
<pre>{html.escape(config_yaml)}</pre>
</body></html>
"""
