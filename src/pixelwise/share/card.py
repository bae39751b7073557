"""The model card of a pushed run: README.md with the Hub's YAML metadata, written from the run's own files.

Everything in it is read from the run directory (config.yaml, summary.json, dataset.json, eval_val.json); what a
run lacks (no validation, no evaluation yet) is said, not invented. The network is described from the model registry
(``models.factory``): an architecture without an encoder (``seed_cnn``) is not given one, and only
segmentation-models-pytorch's own architectures are tagged with it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from pixelwise import __version__
from pixelwise.config import read_yaml
from pixelwise.data.classes import default_palette
from pixelwise.inference.calibration import read_temperature
from pixelwise.report.build import current_evaluation


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def network(model: dict[str, Any]) -> tuple[str, list[str]]:
    """The network in words and its Hub tags: an smp architecture with its encoder, pixelwise's own (``seed_cnn``
    has no encoder, ``reseg`` takes an smp/timm one but is not an smp model), or the user's own nn.Module."""
    import segmentation_models_pytorch as smp

    from pixelwise.models.factory import ARCHITECTURES, CUSTOM_ARCH

    arch, encoder = str(model.get("arch") or "unet"), str(model.get("encoder") or "")
    if arch == CUSTOM_ARCH:
        return "a network of its own, an nn.Module to pass to `Segmenter.load(..., model=...)`", []
    uses_encoder = (arch not in ARCHITECTURES or ARCHITECTURES.get(arch).uses_encoder) and encoder
    tags = ["segmentation-models-pytorch"] if arch in smp.MODEL_ARCHITECTURES_MAPPING else []
    if uses_encoder:
        return f"{arch} with a {encoder} encoder", [*tags, arch, encoder]
    return f"{arch}, a network without an encoder", [*tags, arch]


def metadata(cfg: dict[str, Any], summary: dict[str, Any], evaluation: dict[str, Any], name: str,
             dataset: str) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "library_name": "pixelwise",
        "pipeline_tag": "image-segmentation",
        "tags": ["pixelwise", "semantic-segmentation", *network(cfg.get("model", {}))[1]],
    }
    miou = evaluation.get("miou", summary.get("best_miou"))
    if miou is not None:
        metrics = [{"type": "mean_iou", "value": round(float(miou), 4), "name": "val mIoU"}]
        if evaluation.get("pixel_accuracy") is not None:
            metrics.append({"type": "accuracy", "value": round(float(evaluation["pixel_accuracy"]), 4),
                            "name": "val pixel accuracy"})
        meta["model-index"] = [{"name": name, "results": [{
            "task": {"type": "image-segmentation", "name": "Semantic segmentation"},
            "dataset": {"name": dataset, "type": dataset, "split": "validation"}, "metrics": metrics}]}]
    return meta


def class_rows(cfg: dict[str, Any], evaluation: dict[str, Any], stats: dict[str, Any]) -> list[str]:
    table = cfg.get("data", {}).get("classes") or {}
    names = table.get("names", [])
    colors = table.get("colors") or default_palette(len(names))  # what predictions are drawn in (ClassTable)
    per_class = evaluation.get("classes", {})
    train_px = stats.get("train", {}).get("class_pixels")
    total = sum(train_px) if train_px else 0
    rows = ["| class | colour | val IoU % | precision % | recall % | F1 % | share of training pixels |",
            "|---|---|---|---|---|---|---|"]
    for i, name in enumerate(names):
        m = per_class.get(name, {})
        colour = "#" + "".join(f"{int(c):02x}" for c in colors[i]) if i < len(colors) else "-"
        share = f"{100 * train_px[i] / total:.1f}%" if total and i < len(train_px) else "-"
        rows.append(f"| {name} | {colour} | {_pct(m.get('iou'))} | {_pct(m.get('precision'))} | "
                    f"{_pct(m.get('recall'))} | {_pct(m.get('f1'))} | {share} |")
    if names and not table.get("colors"):
        rows += ["", "The classes name no colours: those shown are pixelwise's default palette, which predictions, "
                     "overlays and reports draw them in."]
    return rows


def model_card(run_dir: Path, repo_id: str, files: list[str]) -> str:
    """README.md for ``repo_id`` from ``run_dir``'s files; ``files``: what the repository holds besides it."""
    cfg = read_yaml(run_dir / "config.yaml")
    summary, stats = _json(run_dir / "summary.json"), _json(run_dir / "dataset.json")
    evaluation = current_evaluation(run_dir, "val") or {}  # an evaluation of these weights, not of earlier ones
    data, model, train = cfg.get("data", {}), cfg.get("model", {}), cfg.get("train", {})
    dataset = Path(str(data.get("root") or "custom-data")).name
    names = (data.get("classes") or {}).get("names", [])
    name = repo_id.split("/")[-1]
    source = str(model.get("init_from") or "")  # a local path is shown by its name only, as in the pushed config
    from pixelwise.models.factory import CUSTOM_ARCH

    described = network(model)[0]
    start = (f"fine-tuned from {source if source.startswith('hf://') else Path(source).name}" if source else
             "initialised by its own code" if model.get("arch") == CUSTOM_ARCH else
             "ImageNet-pretrained encoder" if model.get("encoder_weights") == "imagenet" else
             "random initialisation" if model.get("encoder_weights") is None else
             f"encoder weights from {Path(str(model['encoder_weights'])).name}")
    budget = ", ".join(f"{k} {train[k]}" for k in ("epochs", "max_steps", "time_budget") if train.get(k))
    loss = " + ".join(f"{w:g} x {t}" for t, w in (cfg.get("loss", {}).get("terms") or {}).items())
    miou = evaluation.get("miou", summary.get("best_miou"))
    lines = [
        "---", yaml.safe_dump(metadata(cfg, summary, evaluation, name, dataset), sort_keys=False).strip(), "---",
        f"# {name}", "",
        f"Semantic segmentation ({len(names)} classes) trained with pixelwise {__version__}: "
        f"{described} ({start}), {model.get('in_channels')} input "
        f"channel(s) of {data.get('dtype') or 'uint8'} pixels. Validation mIoU "
        f"{'not measured' if miou is None else f'{miou:.4f}'}.", "",
        "## Use", "", "```python", "import pixelwise as pw", f'seg = pw.Segmenter.load("hf://{repo_id}")',
        'mask = seg.predict("image.png")   # HxW class indices, in the order of the table below', "```", "",
        f"`pixelwise serve hf://{repo_id}` serves it over HTTP; `model.init_from: hf://{repo_id}` fine-tunes it.",
    ]
    temperature = read_temperature(run_dir)  # validated, as Segmenter reads it
    if temperature is not None:
        lines.append(f"Its probabilities are calibrated: temperature {temperature:.3f} "
                     "(`calibration.json`, applied by `Segmenter` and folded into `model.onnx`; masks are unchanged).")
    if "model.onnx" in files:
        lines.append("`model.onnx` runs without pixelwise or PyTorch (ONNX Runtime; uint8 input, preprocessing in the "
                     "graph)" + (", `model.int8.onnx` is its int8 version." if "model.int8.onnx" in files else "."))
    if "smp/config.json" in files:
        lines.append("`smp/` loads with plain segmentation-models-pytorch: `smp.from_pretrained` on that folder, "
                     "with the normalisation in `smp/preprocessing.json`.")
    lines += ["", "## Dataset", "",
              f"`{dataset}` ({data.get('format', 'auto')} layout): {stats.get('train', {}).get('images', '?')} "
              f"training images, {stats.get('val', {}).get('images', 'no')} validation images; training crops "
              f"{data.get('crop_size')}.", "",
              "## Classes and validation metrics", "", *class_rows(cfg, evaluation, stats), "",
              "## Training", "",
              f"- network: {described} ({start}), "
              f"options {model.get('options') or {}}",
              f"- loss: {loss or '-'}; optimizer {cfg.get('optim', {}).get('name')} at lr "
              f"{cfg.get('optim', {}).get('lr')}, batch {train.get('batch_size')}",
              f"- budget: {budget or '-'}; done: {summary.get('epochs', '?')} epochs, {summary.get('steps', '?')} "
              f"steps in {summary.get('wall_seconds', '?')} s on {summary.get('runtime', '?')}, stopped by "
              f"{summary.get('stopped_by', '?')}; best epoch {summary.get('best_epoch', '-')}",
              "- the full configuration is `config.yaml`; the metrics per epoch are `metrics.csv`", "",
              "## Intended use", "",
              f"Segmenting images like those of `{dataset}`: the same kind of sensor, scale, pixel type and the "
              "classes above. It is a starting point for fine-tuning on related data (`model.init_from`).", "",
              "## Limitations", "",
              f"- Measured on {stats.get('val', {}).get('images', 'no')} validation images of one dataset only; on "
              "images from another camera, scale or domain expect lower scores, and check on your own labelled "
              "images before relying on it.",
              "- Classes with few training pixels (see the table) are the least reliable.",
              "- It predicts one of the classes above for every pixel; it cannot say 'none of these'.",
              "- Not validated for safety-critical or medical decisions.", ""]
    return "\n".join(lines)
