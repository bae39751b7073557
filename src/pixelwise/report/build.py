"""Evaluate a run with per-image scores and write its report.html with the plots beside it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from pixelwise.engine.checkpoint import atomic_write_bytes, atomic_write_text
from pixelwise.engine.rundir import read_metrics_csv
from pixelwise.progress import console

GALLERY_SIZE = 4  # worst and best images shown
FINGERPRINT = "model_fingerprint"  # the eval JSON's record of the model files it evaluated
CALIBRATION = "calibration.json"  # the one model file that only the probability figures depend on
PROBABILITY_FIGURES = ("trust",)  # an eval JSON's entries measured on calibrated probabilities (ECE, uncertainty)


def read_history(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.csv"
    return read_metrics_csv(path) if path.is_file() else []


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _shares(counts: list[int] | np.ndarray) -> list[float]:
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    return list(counts / total) if total > 0 else [0.0] * len(counts)


_DIGESTS: dict[tuple[str, int, int, int, int], str] = {}  # (path, size, mtime, ctime, inode) -> digest


def _digest(path: Path) -> str | None:
    """``sha256:HEX`` of a file's bytes (None when it is missing); hashed once per process while the file stays
    as it was (size, modification and status-change times: any write changes the last), about 0.2 s for 100 MB."""
    try:
        stat = path.stat()
    except OSError:
        return None
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        _DIGESTS[key] = f"sha256:{digest.hexdigest()}"
    return _DIGESTS[key]


def model_fingerprint(run_dir: Path) -> dict[str, str | None]:
    """The content hash (``_digest``) of each file the run's evaluation depends on: best.safetensors (a
    cross-validation parent's: folds.json and each fold's) and calibration.json (the temperature of the
    probability figures); None for one that is missing. Recorded in eval_SPLIT.json: weights trained further or
    a run replaced change it, and the evaluation is done again instead of being reused; a run copied without its
    modification times (cp -r) or moved keeps it."""
    names = ["best.safetensors", CALIBRATION]
    if (run_dir / "folds.json").is_file():
        from pixelwise.inference.ensemble import fold_runs

        names += ["folds.json", *(f"{fold.name}/best.safetensors" for fold in fold_runs(run_dir))]
    return {name: _digest(run_dir / name) for name in names}


def reusable(result: Any, stamp: dict[str, str | None]) -> dict[str, Any] | None:
    """What of an eval JSON ``result`` holds for the model files ``stamp`` (``model_fingerprint``) describes: all
    of it when it evaluated the same files; without its probability figures (``PROBABILITY_FIGURES``: ECE,
    uncertainty) when only calibration.json differs, since a temperature never changes an argmax (the masks,
    per-class IoU, precision, recall, F1, mIoU and pixel accuracy stay); None when the weights differ or it has no
    fingerprint (written by an earlier version)."""
    recorded = result.get(FINGERPRINT) if isinstance(result, dict) else None
    if not isinstance(recorded, dict):
        return None
    weights = {k: v for k, v in stamp.items() if k != CALIBRATION}
    if {k: v for k, v in recorded.items() if k != CALIBRATION} != weights:
        return None
    if recorded.get(CALIBRATION, "") != stamp.get(CALIBRATION):
        return {k: v for k, v in result.items() if k not in PROBABILITY_FIGURES}
    return result


def current_evaluation(run_dir: Path, split: str) -> dict[str, Any] | None:
    """``RUN/eval_SPLIT.json`` as far as it evaluated the model the run holds now (``reusable``: after a new
    calibration, without its probability figures); None when it is missing, unreadable, of other weights, or
    written without a fingerprint (by an earlier version)."""
    return reusable(_read_json(run_dir / f"eval_{split}.json"), model_fingerprint(run_dir))


def data_label(run_dir: Path, split: str, data_root: Path | None, data_format: str | None) -> str | None:
    """``SPLIT-FOLDER`` when ``data_root``/``data_format`` name another dataset than the run was trained on (its
    eval JSON and report then do not replace the run's own), else None."""
    if data_root is None and data_format is None:
        return None
    from pixelwise.config import load_run_config

    data = load_run_config(run_dir).data
    same_root = data_root is None or (data.root is not None and Path(data_root).resolve() == Path(data.root).resolve())
    if same_root and data_format in (None, data.format):
        return None
    folder = Path(data_root).resolve().name if data_root is not None else str(data_format)
    return f"{split}-" + "".join(c if c.isalnum() or c in "-_." else "_" for c in folder)


def report_path(run_dir: Path, split: str) -> Path:
    return run_dir / ("report.html" if split == "val" else f"report_{split}.html")


class _Items:
    """What the report reads of a split: each item's name, its image (HxWxC) and truth (HxW), and the predictor."""

    def __init__(self, names: list[str], load: Any, predict: Any) -> None:
        self.names, self.load, self.predict = names, load, predict


def _file_split(run_dir: Path, split: str, data_root: Path | None, data_format: str | None, batch_size: int | None,
                device: str, reuse: bool, trust: tuple[str, ...] = (), label: str | None = None, model: Any = None
                ) -> tuple[Any, Any, _Items, dict[str, Any]]:
    """The run's model and a split of its data files, with the metrics (evaluated, or reused when current) and,
    with ``trust`` (uncertainty methods), the calibration and uncertainty figures (``inference.trust``)."""
    from pixelwise.inference.evaluation import evaluate_split, open_run_split
    from pixelwise.inference.trust import trust_metrics

    stamp = model_fingerprint(run_dir)  # before loading: weights written after it make this evaluation stale
    rs = open_run_split(run_dir, split, data_root, data_format, device, model=model)
    eval_json = run_dir / f"eval_{label or split}.json"
    result = reusable(_read_json(eval_json), stamp) if reuse else None  # None: other weights, or no fingerprint
    paths = [str(p.image) for p in rs.dataset.pairs]
    fresh = result is None or [r.get("image") for r in result.get("per_image", [])] != paths
    if fresh:
        result = evaluate_split(rs, batch_size, per_image=True)
        result.update({"run": str(run_dir), FINGERPRINT: stamp})
    changed = fresh or result[FINGERPRINT] != stamp  # a new calibration: its probability figures were dropped
    result[FINGERPRINT] = stamp
    if trust and "trust" not in result:
        result["trust"] = trust_metrics(rs, list(trust))
    if changed or trust:
        atomic_write_text(eval_json, json.dumps(result, indent=2))
    return rs.segmenter, rs.cfg, _Items(paths, rs.dataset.load, rs.segmenter.predict), result


def _dataset_split(run_dir: Path, dataset: Any, model: Any, batch_size: int | None, device: str
                   ) -> tuple[Any, Any, _Items, dict[str, Any]]:
    """The run's best weights on the user's own validation Dataset (``pixelwise.data.custom``)."""
    from pixelwise.config import load_run_config
    from pixelwise.data.custom import custom_bundle
    from pixelwise.engine.evaluate import evaluate
    from pixelwise.inference.predictor import Segmenter

    cfg = load_run_config(run_dir)
    stamp = model_fingerprint(run_dir)
    seg = Segmenter.load(run_dir, device=device, model=model)
    bundle = custom_bundle(dataset, dataset, seg.table)
    result = evaluate(seg.model, bundle.val, bundle.val_sizes, seg.table.names, seg.runtime,
                      batch_size or cfg.train.eval_batch_size, per_image=True)
    names = [f"item {i}" for i in range(len(bundle.val))]
    for entry in result["per_image"]:
        entry["image"] = names[entry["index"]]
    result.update({"run": str(run_dir), "split": "val", FINGERPRINT: stamp})
    atomic_write_text(run_dir / "eval_val.json", json.dumps(result, indent=2))

    def load(i: int) -> tuple[np.ndarray, np.ndarray]:
        image, truth = bundle.val[i]
        return image.permute(1, 2, 0).numpy(), truth.numpy()

    return seg, cfg, _Items(names, load, lambda image: _predict(seg, image)), result


def _predict(seg: Any, image: np.ndarray) -> np.ndarray:
    """The model's classes for one HxWxC image of any dtype (the gallery's predictions)."""
    import torch

    from pixelwise.engine.padding import forward_padded

    x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None].to(seg.runtime.device)
    with torch.inference_mode():
        return forward_padded(seg.model, x, seg.runtime).argmax(dim=1)[0].to(torch.uint8).cpu().numpy()


def report_run(
    run_dir: Path,
    split: str = "val",
    data_root: Path | None = None,
    data_format: str | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    reuse: bool = False,
    gallery_size: int = GALLERY_SIZE,
    dataset: Any = None,
    model: Any = None,
    trust: tuple[str, ...] = ("entropy",),
    explain_worst: bool = True,
    label: str | None = None,
) -> tuple[dict[str, Any], Path]:
    """Evaluate ``run_dir``'s best weights on ``split`` (or reuse its eval JSON) and write the HTML report.

    Returns the metrics (also written to ``eval_<split>.json``, with per-image scores and the fingerprint of the
    model files, ``model_fingerprint``) and the report's path. ``reuse``: take the metrics from an existing eval
    JSON of the same images and the same model files instead of evaluating again (``pixelwise report``); only the
    gallery images are predicted. ``dataset``: the user's own validation Dataset instead of the run's files;
    ``model``: an instance of the user's own network, for such a run.
    ``trust``: the uncertainty methods measured against errors, with calibration (``()``: none);
    ``explain_worst``: Grad-CAM of the worst images in the "Can I trust it?" section (needs the explain extra).
    ``label``: the name the outputs carry instead of ``split`` (``data_label``: a split of another dataset than the
    run's gets its own eval JSON, report and plots, never the run's own).
    """
    from pixelwise.report import html, plots
    from pixelwise.report.trust import trust_section

    run_dir = Path(run_dir)
    if dataset is not None:
        seg, cfg, data, result = _dataset_split(run_dir, dataset, model, batch_size, device)
    else:
        seg, cfg, data, result = _file_split(run_dir, split, data_root, data_format, batch_size, device, reuse,
                                             tuple(trust), label, model)
    split = label or split  # from here on, the name the outputs carry

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
            image, truth = data.load(entry["index"])
            png = plots.png_bytes(plots.panel(image, truth, data.predict(image), palette))
            name = Path(entry["image"]).name
            atomic_write_bytes(plot_dir / "gallery" / f"{split}_{group}_{rank + 1}_{Path(name).stem}.png", png)
            items[group].append(html.GalleryItem(name, entry["miou"], entry["pixel_accuracy"], png))
    section, trust_figures = trust_section(run_dir, result, seg, data, worst, explain_worst)
    figures.update({f"trust_{key}": png for key, png in trust_figures.items()})
    for key, png in figures.items():
        atomic_write_bytes(plot_dir / (f"{key}.png" if split == "val" or key == "curves" else f"{key}_{split}.png"),
                           png)
    page = html.render(
        title=f"{cfg.name}: {split}", split=split, result=result, palette=palette,
        config_yaml=(run_dir / "config.yaml").read_text(), plots=figures, worst=items["worst"],
        best=items["best"], summary=_read_json(run_dir / "summary.json"), trust=section,
    )
    target = report_path(run_dir, split)
    atomic_write_text(target, page)
    console.print(f"report written to {target}")
    return result, target
