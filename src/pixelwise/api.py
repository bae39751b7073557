"""The Python API: ``pw.train`` returns a ``Run``; ``pw.evaluate``, ``pw.load_config``; the CLI uses the same calls.

    >>> import pixelwise as pw
    >>> run = pw.train(data="data/cells", model="unet", encoder="resnet18", **{"train.epochs": 5})
    >>> run.summary["best_miou"], run.history[-1]["val_loss"]
    >>> mask = run.segmenter().predict("new.png")

Paths may be ``str`` or ``Path`` everywhere. Overrides are dotted keys (``**{"optim.lr": 3e-4}``) or a section as a
dict (``optim={"lr": 3e-4}``); both are validated like a config file, with the same messages.
"""

from __future__ import annotations

import os
import re
from itertools import count
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pixelwise.config import SECTIONS, Config, suggest_key
from pixelwise.config import load_config as _load_config
from pixelwise.errors import ConfigError, DataError, PixelwiseError
from pixelwise.progress import notice

if TYPE_CHECKING:
    from torch import nn

    from pixelwise.engine.callbacks import Callback
    from pixelwise.inference.predictor import Segmenter

PathLike = str | os.PathLike


def load_config(config: PathLike | Config | dict[str, Any] | None = None, **overrides: Any) -> Config:
    """A validated Config from a YAML file, a Config or a dict, with overrides (dotted keys or section dicts).

    Architecture, loss, optimizer, augmentation and dataset-format names are checked too, so a typo fails here
    with the key's path and the close names, not after the data scan.
    """
    return _load(config, overrides)


def _load(config: PathLike | Config | dict[str, Any] | None, overrides: dict[str, Any],
          arguments: dict[str, Any] | None = None) -> Config:
    from pixelwise.validate import check_names

    values, source = _flatten(overrides), "the arguments"
    for key, value in (arguments or {}).items():  # train(encoder=...) and **{"model.encoder": ...} must agree
        if key in values and values[key] != value:
            raise ConfigError(f"{key} is given twice, as {values[key]!r} and as {value!r}")
        values[key] = value
    if isinstance(config, Config):
        cfg = _load_config(None, values=values, base=config.model_dump(mode="json", exclude_unset=True), source=source)
    elif isinstance(config, dict):
        cfg = _load_config(None, values=values, base=config, source=source)
    else:
        cfg = _load_config(Path(config) if config is not None else None, values=values, source=source)
    check_names(cfg)
    return cfg


def _flatten(overrides: dict[str, Any]) -> dict[str, Any]:
    """Keyword overrides as dotted key -> value; a section's dict is merged key by key when it names its fields."""
    flat: dict[str, Any] = {}

    def put(key: str, value: Any) -> None:
        if key in flat and flat[key] != value:
            raise ConfigError(f"{key} is given twice, as {flat[key]!r} and as {value!r}")
        flat[key] = value

    for key, value in overrides.items():
        if "." in key or key == "name":
            put(key, value)
        elif key in SECTIONS:
            fields = SECTIONS[key].model_fields
            if isinstance(value, dict) and value and set(value) <= set(fields):
                for k, v in value.items():
                    put(f"{key}.{k}", v)
            else:  # a shorthand for the whole section, e.g. loss={"ce": 1.0, "dice": 1.0}
                put(key, value)
        else:
            raise ConfigError(f"unknown setting '{key}'{suggest_key(key)}; give config keys as dotted names, "
                              "e.g. **{'train.epochs': 5}, or a section as a dict, e.g. train={'epochs': 5}")
    return flat


def check_paths(cfg: Config, need_data: bool = True) -> None:
    """The dataset folder (when ``need_data``) and a weights file the config names exist: answered before torch is
    imported, so a typo costs no start-up (the scan checks everything else)."""
    root = cfg.data.root
    if root is None and need_data:
        raise ConfigError("no dataset given: pass --data DIR or set data.root in the config")
    if root is not None and not root.expanduser().exists():
        raise DataError(f"{root}: dataset folder not found")
    weights = cfg.model.encoder_weights
    if weights not in (None, "imagenet", "auto") and not Path(weights).expanduser().is_file():
        raise PixelwiseError(f"model.encoder_weights: file not found: {weights}")
    source = cfg.model.init_from
    if source is not None and not source.startswith("hf://") and not Path(source).expanduser().exists():
        raise PixelwiseError(f"model.init_from: not found: {source} (a run directory, a .safetensors file or "
                             "hf://USER/REPO)")


def default_run_name(cfg: Config, custom_network: bool = False) -> str:
    """DATASET-ARCH-ENCODER (e.g. camvid-unet-resnet18): the dataset folder's name and the model; one folder name."""
    root = Path(os.path.abspath(cfg.data.root.expanduser())) if cfg.data.root is not None else None
    parts = [("custom-data" if root is None else root.stem if root.is_file() else root.name)]
    if custom_network:
        parts.append("custom-model")
    else:  # seed_cnn is the one architecture without an encoder (models.factory imports torch)
        parts += [cfg.model.arch] if cfg.model.arch == "seed_cnn" else [cfg.model.arch, cfg.model.encoder]
    return re.sub(r"[^\w.+-]+", "_", "-".join(p for p in parts if p)).strip("._") or "run"


def run_directory(cfg: Config, out: PathLike | None = None, overwrite: bool = False,
                  custom_network: bool = False) -> tuple[Config, Path]:
    """Where a new run goes, and its config with its name settled.

    ``out`` is used as given: a run already there is refused unless ``overwrite``. Otherwise ``runs/NAME`` (NAME:
    ``name``, or ``default_run_name``); when that folder holds a run, the first free of NAME-2, NAME-3, ... and a
    note saying so (``--resume``/``--overwrite`` stay explicit). Under torchrun the ranks could count differently,
    so there a taken folder is refused as with ``out``.
    """
    derived = cfg.name is None
    name = default_run_name(cfg, custom_network) if derived else cfg.name
    if out is not None:
        return (cfg.model_copy(update={"name": name}) if derived else cfg), Path(out)
    from pixelwise.engine.rundir import holds_run

    run_dir = Path("runs") / name
    if holds_run(run_dir) and not overwrite and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        taken = run_dir
        run_dir = next(d for n in count(2) if not holds_run(d := taken.with_name(f"{name}-{n}")))
        notice("note", f"{taken} holds a run already: this one is written to {run_dir} (--resume {taken} continues "
               f"that run, --overwrite replaces it)")
    return (cfg.model_copy(update={"name": run_dir.name}) if derived else cfg), run_dir


def default_callbacks(cfg: Config) -> list[Callback]:
    """What ``pixelwise train`` runs with: progress, checkpoints, early stopping (if set), TensorBoard, the report."""
    from pixelwise.engine.callbacks import core_callbacks
    from pixelwise.report.callback import Report
    from pixelwise.report.tensorboard import TensorBoard, tensorboard_installed

    callbacks = core_callbacks(cfg)
    if cfg.train.tensorboard and not tensorboard_installed():  # on by default: a lean install still trains
        notice("note", "no TensorBoard event files: the tensorboard package is not installed (pip install "
               "'pixelwise[tensorboard]'; train.tensorboard: false or --no-tensorboard turns this note off)")
    elif cfg.train.tensorboard:
        callbacks.append(TensorBoard())
    if cfg.train.report:
        callbacks.append(Report())
    if cfg.train.track:  # after the report: its page and plots are logged with the run
        from pixelwise.report.mlflow import tracking_callbacks

        callbacks += tracking_callbacks(cfg.train.track)
    return callbacks


def train(
    config: PathLike | Config | dict[str, Any] | None = None,
    *,
    data: PathLike | Any = None,
    val_data: Any = None,
    model: str | nn.Module | dict[str, Any] | None = None,
    encoder: str | None = None,
    classes: list[str] | PathLike | None = None,
    callbacks: list[Callback] | None = None,
    out: PathLike | None = None,
    resume: PathLike | None = None,
    overwrite: bool = False,
    **overrides: Any,
) -> Run:
    """Train a model and return its ``Run``; what ``pixelwise train`` does, from Python.

    Args:
        config: a YAML file, a ``Config`` or a dict; None: defaults plus the arguments below.
        data: the dataset folder (data.root), or your own ``torch.utils.data.Dataset`` of (image CxHxW, mask HxW)
            pairs (see ``pixelwise.data.custom`` for the contract); then ``val_data`` is the validation Dataset.
        model: an architecture name (model.arch), or your own ``nn.Module`` mapping (N, C, H, W) images to
            (N, classes, H, W) logits; losses, schedules, EMA, checkpoints and evaluation work the same.
        encoder: model.encoder.
        classes: class names (data.classes), needed with your own Dataset; or a classes file.
        callbacks: added after the default ones (progress, checkpoints, early stopping, TensorBoard, report).
        out: the run directory (default ``runs/NAME``, NAME being ``name`` or DATASET-ARCH-ENCODER, numbered NAME-2,
            ... when it holds a run; see ``run_directory``); ``resume``: a run directory to continue.
        overrides: config keys, dotted (``**{"optim.lr": 3e-4}``) or as section dicts (``optim={"lr": 3e-4}``).
    """
    from torch import nn
    from torch.utils.data import Dataset

    from pixelwise.engine.setup import Parts
    from pixelwise.engine.trainer import Trainer

    parts = Parts()
    values: dict[str, Any] = {}
    if isinstance(data, Dataset):
        parts.train, parts.val = data, val_data
    elif data is not None:
        values["data.root"] = str(data)
    if val_data is not None and parts.train is None:
        raise PixelwiseError("val_data is for your own Dataset; give the training Dataset as data=...")
    if isinstance(model, nn.Module):
        parts.network = model
    elif isinstance(model, dict):
        overrides["model"] = model
    elif model is not None:
        values["model.arch"] = model
    if encoder is not None:
        values["model.encoder"] = encoder
    if classes is not None:
        values["data.classes"] = str(classes) if isinstance(classes, (str, os.PathLike)) else {"names": list(classes)}
    if resume is not None:
        if config is not None or out is not None:
            raise PixelwiseError("resume continues a run in its own directory with its own config.yaml; give "
                                 "overrides, not a config or out")
        run_dir = Path(resume)
        cfg = _load(run_dir / "config.yaml", overrides, values)
    else:
        cfg = _load(config, overrides, values)
        cfg, run_dir = run_directory(cfg, out, overwrite, custom_network=parts.network is not None)
    trainer = Trainer(cfg, run_dir, resume=resume is not None, overwrite=overwrite,
                      callbacks=default_callbacks(cfg) + list(callbacks or []), parts=parts)
    trainer.fit()
    return Run(run_dir, model=parts.network)


class Run:
    """A run directory: its config, summary and history, and the trained model to predict, evaluate and export.

    Args:
        path: the run directory.
        model: for a run that trained your own ``nn.Module``: an instance of it. The weights are loaded into a copy
            of it each time one is needed (``segmenter``, ``evaluate``, ``export``, ``report``), so your module is
            left as it is, and training it further changes no ``Segmenter`` made before.
    """

    def __init__(self, path: PathLike, model: nn.Module | None = None) -> None:
        self.dir = Path(path)
        if not (self.dir / "config.yaml").is_file():
            raise PixelwiseError(f"{self.dir}: not a run directory (no config.yaml)")
        self._model = model

    def _network(self) -> nn.Module | None:
        """A copy of the module this Run was given, for the weights to load into; None: the config builds it."""
        if self._model is None:
            return None
        import copy

        try:
            return copy.deepcopy(self._model)
        except Exception as e:  # e.g. a module holding tensors computed in a forward (weight_norm) or open handles
            raise PixelwiseError(f"could not copy your nn.Module to load this run's weights into ({type(e).__name__}: "
                                 f"{e}); give the Run a new instance of it, e.g. pixelwise.Run(run, model=MyNet())"
                                 ) from None

    def _own_dataset(self, what: str, data: Any) -> None:
        """Refuse ``what`` on a run of your own Dataset when it needs the run's data files and none are given."""
        if data is None and self.config.data.root is None:
            raise PixelwiseError(f"this run trained on your own Dataset, and {what}")

    def __repr__(self) -> str:
        summary = self.summary
        best = summary.get("best_miou") if summary else None
        return f"Run('{self.dir}', best_miou={best})"

    @property
    def config(self) -> Config:
        from pixelwise.config import load_run_config

        return load_run_config(self.dir)

    @property
    def summary(self) -> dict[str, Any]:
        """summary.json: best_miou, best_epoch, epochs, steps, wall_seconds, train_images_per_second, ..."""
        import json

        path = self.dir / "summary.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    @property
    def history(self) -> list[dict[str, Any]]:
        """metrics.csv as one dict per epoch: epoch, step, train_loss, val_loss, val_miou, lr, ..."""
        from pixelwise.engine.rundir import read_metrics_csv

        path = self.dir / "metrics.csv"
        return read_metrics_csv(path) if path.is_file() else []

    def segmenter(self, device: str = "auto", weights: str = "best.safetensors", amp: str = "auto") -> Segmenter:
        """The trained model as a ``Segmenter`` (predict, probabilities, overlay); with your own ``nn.Module``, in a
        copy of it: the Segmenter and your module never share weights or train/eval mode."""
        from pixelwise.inference.predictor import Segmenter

        return Segmenter.load(self.dir, device=device, weights=weights, amp=amp, model=self._network())

    def evaluate(self, split: str = "val", data: PathLike | None = None, dataset: Any = None,
                 batch_size: int | None = None, device: str = "auto") -> dict[str, Any]:
        """Metrics of the best weights on ``split`` of the run's data (or of ``data``), or on your ``dataset``."""
        if dataset is not None:
            from pixelwise.data.custom import custom_bundle
            from pixelwise.engine.evaluate import evaluate

            seg = self.segmenter(device)
            bundle = custom_bundle(dataset, dataset, seg.table)
            return evaluate(seg.model, bundle.val, bundle.val_sizes, seg.table.names, seg.runtime,
                            batch_size or self.config.train.eval_batch_size)
        self._own_dataset("its data files are not known: evaluate it with run.evaluate(dataset=...)", data)
        root = Path(data) if data is not None else None
        if self._model is not None:  # your own network on data files: the split read as evaluate_run reads it
            from pixelwise.data.build import build_eval_dataset
            from pixelwise.inference.evaluation import RunSplit, evaluate_split

            cfg, seg = self.config, self.segmenter(device)
            dataset, sizes = build_eval_dataset(cfg.data, split, seg.table, seg.channels, root=root)
            return {**evaluate_split(RunSplit(cfg, seg, dataset, sizes, split), batch_size), "run": str(self.dir)}
        from pixelwise.inference.evaluation import evaluate_run

        return evaluate_run(self.dir, split, root, None, batch_size, device)

    def export(self, out: PathLike | None = None, int8: bool = False, data: PathLike | None = None) -> dict[str, Any]:
        """ONNX export (``RUN/model.onnx``), parity-checked against PyTorch on images of the run's data (or of
        ``data``); ``int8`` adds a quantized model, calibrated on its training images."""
        from pixelwise.export.onnx import export_onnx

        self._own_dataset("the export checks the ONNX model against PyTorch on the run's data files (int8 also "
                          "calibrates on them): give a folder of such images, run.export(data=FOLDER)", data)
        data_root = Path(data) if data is not None else None
        network = self._network()  # your own nn.Module: the weights go into a copy of it
        result = export_onnx(self.dir, Path(out) if out is not None else None, data_root,
                             **({} if network is None else {"model": network}))
        if int8:
            from pixelwise.export.quantize import compare_on_split, quantize

            path = quantize(self.dir, Path(result["path"]), data_root=data_root)
            result["int8"] = {"path": str(path), **compare_on_split(self.dir, Path(result["path"]), path,
                                                                     data_root=data_root)}
        return result

    def report(self, split: str = "val", device: str = "auto", dataset: Any = None) -> Path:
        """Write (or refresh) the HTML report for ``split``; returns its path.

        ``dataset``: your own validation Dataset, for a run that trained on your own Datasets (reported as val).
        """
        from pixelwise.report.build import report_run

        if dataset is not None:
            if split != "val":
                raise PixelwiseError(f"run.report(dataset=...) reports your Dataset as the val split, not {split!r}")
            return report_run(self.dir, "val", device=device, dataset=dataset, model=self._network())[1]
        self._own_dataset("its data files are not known: report it with run.report(dataset=...)", None)
        return report_run(self.dir, split, device=device, reuse=True, model=self._network())[1]


def evaluate(run: PathLike, split: str = "val", data: PathLike | None = None, batch_size: int | None = None,
             device: str = "auto") -> dict[str, Any]:
    """Metrics of a run's best weights on a split: mIoU, pixel accuracy, per-class IoU/precision/recall/F1."""
    return Run(run).evaluate(split, data, batch_size=batch_size, device=device)
