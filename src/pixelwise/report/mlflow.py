"""Experiment tracking as callbacks (``train.track: [mlflow]``, ``[wandb]``): the run's parameters, its metrics per
epoch, and at the end its report, plots, model and files.

MLflow: the tracking store is ``MLFLOW_TRACKING_URI`` when set, else ``sqlite:///mlflow.db`` in the working folder
(a real database, so ``mlflow ui --backend-store-uri sqlite:///mlflow.db`` lists the runs); the experiment is
``MLFLOW_EXPERIMENT_NAME`` or 'pixelwise'; the MLflow run is named after the run directory, and its id is kept in
``RUN/mlflow.json`` so a resumed run goes on logging into the same MLflow run. The client API is used rather than
MLflow's global "active run", so a user's own ``mlflow.start_run`` around ``pw.train`` is left alone.

Weights & Biases (``wandb``, optional): ``wandb.init`` with the flattened config, ``wandb.log`` per epoch, files
saved at the end; ``WANDB_MODE=offline`` keeps it local.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path
from typing import Any

from pixelwise.atomic import atomic_write_text
from pixelwise.engine.callbacks import Callback, RunState
from pixelwise.errors import PixelwiseError

DEFAULT_URI = "sqlite:///mlflow.db"  # relative to the working folder, as MLflow reads it
SKIPPED = ("last.ckpt", "mlflow.json", ".lock")  # resume state (large, pickled containers) and bookkeeping
PARAM_LIMIT = 6000  # MLflow's longest parameter value


def flatten(tree: Any, prefix: str = "") -> dict[str, str]:
    """Nested config -> dotted keys with string values (lists kept whole, as YAML flow text)."""
    if isinstance(tree, dict) and tree:
        out: dict[str, str] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): json.dumps(tree) if not isinstance(tree, str) else tree}


def finite_metrics(row: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in row.items() if k != "epoch" and isinstance(v, (int, float))
            and not isinstance(v, bool) and math.isfinite(v)}


def run_files(run_dir: Path) -> list[Path]:
    """The run's files worth keeping with the tracked run (not the resume state)."""
    return [p for p in sorted(run_dir.rglob("*")) if p.is_file() and not p.name.endswith(SKIPPED)]


def require(name: str) -> None:
    module, extra = {"mlflow": ("mlflow", "tracking"), "wandb": ("wandb", "wandb")}[name]
    if importlib.util.find_spec(module) is None:
        raise PixelwiseError(f"train.track: {name} needs the {module} package: pip install 'pixelwise[{extra}]' "
                             f"(or remove {name} from train.track)")


def tracking_callbacks(names: list[str]) -> list[Callback]:
    """The callbacks ``train.track`` names, each checked to be installed first."""
    for name in names:
        require(name)
    return [MLflow() if name == "mlflow" else WandB() for name in names]


class MLflow(Callback):
    """Logs a training run to MLflow (see the module's documentation)."""

    def __init__(self, tracking_uri: str | None = None, experiment: str | None = None) -> None:
        require("mlflow")
        self.tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
        self.experiment = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or "pixelwise"
        self.client: Any = None
        self.run_id: str | None = None

    def on_train_start(self, state: RunState) -> None:
        if not state.is_main:
            return
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(self.tracking_uri)
        marker = state.run_dir / "mlflow.json"
        saved = json.loads(marker.read_text()) if marker.is_file() else {}
        if saved.get("tracking_uri") == self.tracking_uri and saved.get("run_id"):
            self.run_id = saved["run_id"]  # a resumed run: the same MLflow run
            self.client.update_run(self.run_id, status="RUNNING")
            return
        found = self.client.get_experiment_by_name(self.experiment)
        experiment_id = found.experiment_id if found else self.client.create_experiment(self.experiment)
        run = self.client.create_run(experiment_id, run_name=state.run_dir.name,
                                     tags={"pixelwise.run_dir": str(state.run_dir.resolve())})
        self.run_id = run.info.run_id
        atomic_write_text(marker, json.dumps({"tracking_uri": self.tracking_uri, "run_id": self.run_id,
                                              "experiment": self.experiment}, indent=2))
        from mlflow.entities import Param

        params = [Param(k, v[:PARAM_LIMIT]) for k, v in
                  flatten(state.config.model_dump(mode="json")).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 parameters per call
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def on_epoch_end(self, state: RunState) -> None:
        if self.run_id is None:
            return
        import time

        from mlflow.entities import Metric

        now, step = int(time.time() * 1000), int(state.metrics.get("epoch", state.epoch))
        metrics = [Metric(k, v, now, step) for k, v in finite_metrics(state.metrics).items()]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def on_train_end(self, state: RunState) -> None:
        if self.run_id is None:
            return
        summary = state.run_dir / "summary.json"
        if summary.is_file():
            facts = json.loads(summary.read_text())
            tags = {f"summary.{k}": str(v) for k, v in facts.items() if isinstance(v, (int, float, str))}
            for key, value in tags.items():
                self.client.set_tag(self.run_id, key, value[:PARAM_LIMIT])
        for path in run_files(state.run_dir):  # report.html, plots/, best.safetensors (the model), config ...
            folder = path.parent.relative_to(state.run_dir).as_posix()
            self.client.log_artifact(self.run_id, str(path), None if folder == "." else folder)
        self.client.set_terminated(self.run_id, "FINISHED")
        self.run_id = None

    def close(self) -> None:
        if self.run_id is not None and self.client is not None:  # training ended by an error
            self.client.set_terminated(self.run_id, "FAILED")
            self.run_id = None


class WandB(Callback):
    """Logs a training run to Weights & Biases (optional; ``WANDB_MODE=offline`` keeps it local)."""

    def __init__(self) -> None:
        require("wandb")
        self.run: Any = None

    def on_train_start(self, state: RunState) -> None:
        if state.is_main:
            import wandb

            self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "pixelwise"), name=state.run_dir.name,
                                  config=flatten(state.config.model_dump(mode="json")), dir=str(state.run_dir),
                                  resume="allow")

    def on_epoch_end(self, state: RunState) -> None:
        if self.run is not None:
            self.run.log(finite_metrics(state.metrics), step=int(state.metrics.get("epoch", state.epoch)))

    def on_train_end(self, state: RunState) -> None:
        if self.run is not None:
            for path in run_files(state.run_dir):
                if "wandb" not in path.relative_to(state.run_dir).parts:
                    self.run.save(str(path), base_path=str(state.run_dir), policy="end")
            self.run.finish()
            self.run = None

    def close(self) -> None:
        if self.run is not None:
            self.run.finish(exit_code=1)
            self.run = None
