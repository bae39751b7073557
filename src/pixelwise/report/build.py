"""Evaluate a run with per-image scores and write its report.html with the plots beside it."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from pixelwise.engine.checkpoint import atomic_write_bytes, atomic_write_text
from pixelwise.progress import console

GALLERY_SIZE = 4  # worst and best images shown


def read_history(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _shares(counts: list[int] | np.ndarray) -> list[float]:
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    return list(counts / total) if total > 0 else [0.0] * len(counts)


def report_path(run_dir: Path, split: str) -> Path:
    return run_dir / ("report.html" if split == "val" else f"report_{split}.html")


def report_run(
    run_dir: Path,
    split: str = "val",
    data_root: Path | None = None,
    data_format: str | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    reuse: bool = False,
    gallery_size: int = GALLERY_SIZE,
) -> tuple[dict[str, Any], Path]:
    """Evaluate ``run_dir``'s best weights on ``split`` (or reuse its eval JSON) and write the HTML report.

    Returns the metrics (also written to ``eval_<split>.json``, with per-image scores) and the report's path.
    ``reuse``: take the metrics from an existing eval JSON of the same images instead of evaluating again
    (``pixelwise report``); only the gallery images are predicted.
    """
    from pixelwise.engine.evaluate import evaluate_split, open_run_split
    from pixelwise.report import html, plots

    run_dir = Path(run_dir)
    rs = open_run_split(run_dir, split, data_root, data_format, device)
    seg, dataset, cfg = rs.segmenter, rs.dataset, rs.cfg
    eval_json = run_dir / f"eval_{split}.json"
    result = _read_json(eval_json) if reuse else None
    paths = [str(p.image) for p in dataset.pairs]
    if result is None or [r.get("image") for r in result.get("per_image", [])] != paths:
        result = evaluate_split(rs, batch_size, per_image=True)
        result["run"] = str(run_dir)
        atomic_write_text(eval_json, json.dumps(result, indent=2))

    names, palette = seg.table.names, seg.table.palette
    figures: dict[str, bytes] = {}
    history = read_history(run_dir)
    if history:
        figures["curves"] = plots.plot_curves(history)
    figures["confusion"] = plots.plot_confusion(np.asarray(result["confusion_matrix"]), names)
    figures["class_iou"] = plots.plot_class_bars({n: m["iou"] for n, m in result["classes"].items()},
                                                 f"IoU per class ({split})", "IoU", result["miou"], palette)
    shares = {split: _shares([m["support"] for m in result["classes"].values()])}
    stats = _read_json(run_dir / "dataset.json")
    if stats and len(stats.get("train", {}).get("class_pixels", [])) == len(names):
        shares = {"train": _shares(stats["train"]["class_pixels"]), **shares}
    figures["frequencies"] = plots.plot_frequencies(shares, names)

    scored = sorted((r for r in result["per_image"] if r["miou"] is not None), key=lambda r: r["miou"])
    k = min(gallery_size, len(scored) // 2)  # worst and best never share an image
    worst, best = scored[: max(k, 1)], scored[::-1][:k]
    items: dict[str, list[html.GalleryItem]] = {"worst": [], "best": []}
    plot_dir = run_dir / "plots"
    for old in (plot_dir / "gallery").glob(f"{split}_*.png"):  # an earlier report's picks
        old.unlink()
    for group, entries in (("worst", worst), ("best", best)):
        for rank, entry in enumerate(entries):
            image, truth = dataset.load(entry["index"])
            pred = seg.predict(image)
            png = plots.png_bytes(plots.panel(image, truth, pred, palette))
            name = Path(entry["image"]).name
            atomic_write_bytes(plot_dir / "gallery" / f"{split}_{group}_{rank + 1}_{Path(name).stem}.png", png)
            items[group].append(html.GalleryItem(name, entry["miou"], entry["pixel_accuracy"], png))
    for key, png in figures.items():
        atomic_write_bytes(plot_dir / (f"{key}.png" if split == "val" or key == "curves" else f"{key}_{split}.png"),
                           png)
    page = html.render(
        title=f"{cfg.name}: {split}", split=split, result=result, palette=palette,
        config_yaml=(run_dir / "config.yaml").read_text(), plots=figures, worst=items["worst"],
        best=items["best"], summary=_read_json(run_dir / "summary.json"),
    )
    target = report_path(run_dir, split)
    atomic_write_text(target, page)
    console.print(f"report written to {target}")
    return result, target
