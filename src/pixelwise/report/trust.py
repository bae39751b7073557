"""The report's "Can I trust it?" section: explanations of the worst images, uncertainty against error, the
reliability diagram before and after temperature scaling, and the robustness heatmap.

Reads what the commands left in the run: the eval result's ``trust`` entry (``pixelwise eval``),
RUN/calibration.json (``pixelwise calibrate``) and RUN/robustness.json (``pixelwise robustness``); whatever is
missing is named with the command that makes it. Explanations need the ``explain`` extra (grad-cam).
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pixelwise.data.classes import IGNORE
from pixelwise.display import display_rgb
from pixelwise.errors import PixelwiseError
from pixelwise.report.plots import figure_png, plain_text, png_bytes, pyplot

EXPLAINED = 2  # worst images explained


@plain_text
def plot_reliability(curves: dict[str, dict[str, Any]]) -> bytes:
    """Accuracy against confidence per bin, one line per curve (e.g. before / after temperature scaling)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ax.plot([0, 1], [0, 1], "--", color="#999", label="perfect calibration")
    for (label, rel), colour in zip(curves.items(), ("#d62728", "#1f77b4", "#2ca02c"), strict=False):
        pts = [(c, a) for c, a in zip(rel["confidence"], rel["accuracy"], strict=True) if a is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), "o-", color=colour, label=label, markersize=4)
    ax.set_xlabel("confidence (top-class probability)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title("reliability diagram (pixels)")
    return figure_png(fig)


@plain_text
def plot_robustness(result: dict[str, Any]) -> bytes:
    """Relative robustness (corrupted / clean mIoU) per corruption x severity, with the mIoU in each cell."""
    plt = pyplot()
    names, sev = result["corruptions"], [str(s) for s in result["severities"]]
    rel = np.array([[result["table"][n][s]["relative"] or 0.0 for s in sev] for n in names])
    miou = np.array([[result["table"][n][s]["miou"] or 0.0 for s in sev] for n in names])
    fig, ax = plt.subplots(figsize=(1.2 * len(sev) + 3.2, 0.36 * len(names) + 1.4))
    im = ax.imshow(rel, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(sev)), [f"severity {s}" for s in sev])
    ax.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(sev)):
            ax.text(j, i, f"{miou[i, j]:.3f} ({rel[i, j]:.0%})", ha="center", va="center", fontsize=7)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="corrupted / clean mIoU")
    ax.set_title(f"mIoU under corruption (clean {result['clean_miou']:.3f}, {result['images']} images)")
    return figure_png(fig)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _uri(png: bytes) -> str:
    from pixelwise.report.html import data_uri

    return data_uri(png)


def _figure(png: bytes, caption: str) -> str:
    return f'<figure><img src="{_uri(png)}" alt=""><figcaption>{caption}</figcaption></figure>'


def _worst_explanations(seg: Any, data: Any, worst: list[dict[str, Any]], names: list[str]
                        ) -> tuple[str, dict[str, bytes]]:
    """For each of the worst images: the class predicted most often where it is wrong, its wrongly predicted
    pixels as the region, and Grad-CAM of it (image | map with the region's outline)."""
    from pixelwise.inference.explain import explain_region, overlay

    parts, pngs = [], {}
    for rank, entry in enumerate(worst[:EXPLAINED]):
        image, truth = data.load(entry["index"])
        pred = data.predict(image)
        wrong = (pred != truth) & (truth != IGNORE)
        if not wrong.any():
            continue
        k = int(np.bincount(pred[wrong], minlength=len(names)).argmax())
        region = wrong & (pred == k)
        try:
            e = explain_region(seg, image, k, region)
        except PixelwiseError as err:
            parts.append(f"<p class=muted>{html.escape(str(err))}</p>")
            continue
        rgb = display_rgb(image)
        pic = np.concatenate([rgb, np.full((rgb.shape[0], 4, 3), 255, np.uint8), overlay(rgb, e.cam, region)], 1)
        scale = min(4.0, 720 / pic.shape[1])  # small images enlarged, large ones shrunk
        pic = np.asarray(Image.fromarray(pic).resize((round(pic.shape[1] * scale), round(pic.shape[0] * scale))))
        png = png_bytes(pic)
        pngs[f"explain_worst_{rank + 1}"] = png
        name = html.escape(Path(entry["image"]).name)
        parts.append(_figure(png, f"<b>{name}</b> (mIoU {entry['miou']:.3f}): Grad-CAM ({html.escape(e.layer)}) "
                                  f"of the pixels wrongly called <b>{html.escape(names[k])}</b> (outlined in white): "
                                  "what the network looked at where it was wrong (red: most, blue: least)."))
    return "".join(parts), pngs


def trust_section(run_dir: Path, result: dict[str, Any], seg: Any, data: Any, worst: list[dict[str, Any]],
                  explain_worst: bool = True) -> tuple[str, dict[str, bytes]]:
    """The section's HTML and its figures (name -> PNG bytes, saved under plots/)."""
    out, figures = ['<h2 id="trust">Can I trust it?</h2>'], {}
    names = list(result["classes"])
    trust = result.get("trust")
    out.append("<h3>What the network looked at where it was wrong</h3>")
    if not explain_worst:
        out.append("<p class=muted>not drawn for this report</p>")
    else:
        try:
            body, pngs = _worst_explanations(seg, data, worst, names)
            figures.update(pngs)
            out.append(body or "<p class=muted>the worst images have no wrong pixels</p>")
        except PixelwiseError as e:
            out.append(f"<p class=muted>{html.escape(str(e))}</p>")
    out.append("<h3>Uncertainty against error</h3>")
    if trust and trust.get("uncertainty"):
        rows = "".join(
            f"<tr><td>{html.escape(m)}</td><td>{_f(u.get('auroc'))}</td><td>{_f(u.get('mean_wrong'))}</td>"
            f"<td>{_f(u.get('mean_right'))}</td><td>{html.escape(u.get('unavailable', ''))}</td></tr>"
            for m, u in trust["uncertainty"].items())
        out.append('<table class="classes"><thead><tr><th>uncertainty</th><th>AUROC for errors</th><th>mean on wrong '
                   "pixels</th><th>mean on right pixels</th><th></th></tr></thead><tbody>" + rows + "</tbody></table>"
                   f"<p class=muted>On {trust['images']} images. AUROC: the chance that a misclassified pixel is "
                   "more uncertain than a correct one (0.5: the map says nothing about errors; 1: it finds every "
                   "one).</p>")
    else:
        out.append("<p class=muted>not measured: run <code>pixelwise eval RUN</code></p>")
    out.append("<h3>Calibration</h3>")
    calib = _read(Path(run_dir) / "calibration.json")
    curves: dict[str, Any] = {}
    if calib and all(isinstance(calib.get(k), dict) for k in ("before", "after")):  # as `calibrate` writes it
        curves = {f"before (T = 1, ECE {_f(calib['before']['ece'])})": calib["before"]["reliability"],
                  f"after (T = {calib['temperature']:.3f}, ECE {_f(calib['after']['ece'])})":
                  calib["after"]["reliability"]}
        text = (f"Temperature {calib['temperature']:.3f} fitted on {calib['fit_images']} '{calib.get('split')}' "
                f"images; ECE measured on {calib['eval_images']} {html.escape(calib['eval_on'])}.")
    elif trust:
        curves = {f"this split (ECE {_f(trust['calibration']['ece'])})": trust["calibration"]["reliability"]}
        text = "Not calibrated: <code>pixelwise calibrate RUN</code> fits a temperature on the val split."
    else:
        text = "not measured: run <code>pixelwise eval RUN</code> or <code>pixelwise calibrate RUN</code>"
    if trust:
        text += (f" On {trust['images']} images of this split (T = {trust['temperature']:.3f} applied): ECE "
                 f"{_f(trust['calibration']['ece'])}.")
    if curves:
        figures["reliability"] = plot_reliability(curves)
        out.append(_figure(figures["reliability"], text))
    else:
        out.append(f"<p class=muted>{text}</p>")
    out.append("<h3>Robustness to corruption</h3>")
    robust = _read(Path(run_dir) / "robustness.json")
    if robust and robust.get("table"):
        figures["robustness"] = plot_robustness(robust)
        caption = (f"mIoU (relative to clean) on corrupted copies of {robust['images']} '{robust['split']}' images; "
                   f"mean relative robustness {_f(robust.get('mean_relative'))}.")
        shift = robust.get("domain_shift")
        if shift:
            caption += (f" Domain shift: mIoU {_f(shift['miou'])} on {html.escape(str(shift['data']))} "
                        f"(gap {_f(shift['gap'])}).")
        out.append(_figure(figures["robustness"], caption))
    else:
        out.append("<p class=muted>not measured: run <code>pixelwise robustness RUN</code></p>")
    return "\n".join(out), figures


def _f(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"
