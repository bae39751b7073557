"""Experiment tracking as callbacks (``train.track: [mlflow]``, ``[wandb]``): the run's parameters, its metrics per
epoch, and at the end its report, plots, model and files.

MLflow: the tracking store is ``MLFLOW_TRACKING_URI`` when set, else ``sqlite:///mlflow.db`` in the working folder
(a real database, so ``mlflow ui --backend-store-uri sqlite:///mlflow.db`` lists the runs); the experiment is
``MLFLOW_EXPERIMENT_NAME`` or 'pixelwise'. The store is opened and the experiment found or created when the callback
is built, before any data is read: a store MLflow refuses or cannot reach is a ``PixelwiseError`` naming it, with
nothing trained or written. The MLflow run is named after the run directory; its id and the store's absolute URI
(a relative SQLite path resolved) are kept in ``RUN/mlflow.json``, so a resumed run goes on logging into the same
MLflow run. Resumed with another store (another working folder, another ``MLFLOW_TRACKING_URI``), or when that
MLflow run is gone, it logs to a new MLflow run holding the whole history, and a note says so. The client API is
used rather than MLflow's global "active run", so a user's own ``mlflow.start_run`` around ``pw.train`` is left
alone.

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
from pixelwise.engine.distributed import launched_rank
from pixelwise.errors import PixelwiseError
from pixelwise.progress import notice

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
    """The callbacks ``train.track`` names, each checked to be installed first (MLflow's store is opened too)."""
    for name in names:
        require(name)
    return [MLflow() if name == "mlflow" else WandB() for name in names]


def absolute_uri(uri: str) -> str:
    """``uri`` with a relative SQLite file or local folder made absolute (against the working folder now): the
    same store whichever folder a run is resumed from."""
    if uri.startswith("sqlite:///"):
        path, sep, query = uri[len("sqlite:///"):].partition("?")
        if path and path != ":memory:" and not Path(path).is_absolute():
            return f"sqlite:///{Path(path).resolve().as_posix()}{sep}{query}"
        return uri
    if ":" not in uri and ("/" in uri or "\\" in uri or uri.startswith(".")):  # a folder: MLflow's file store
        return str(Path(uri).resolve())
    return uri


def store_problem(uri: str, error: Exception) -> PixelwiseError:
    """A clear error for a tracking store MLflow refuses or cannot reach (no library traceback)."""
    text = " ".join(str(error).split()).split(". ")[0]  # MLflow's first sentence: what is wrong
    reason = f"{type(error).__name__}: {text[:300]}{'...' if len(text) > 300 else ''}"
    scheme = uri.split("://")[0] if "://" in uri else ""
    if scheme in ("", "file"):
        hint = ("MLflow 3 uses a folder (file) store only with MLFLOW_ALLOW_FILE_STORE=true set; or track into a "
                "database, e.g. MLFLOW_TRACKING_URI=sqlite:///mlflow.db (the default when it is unset)")
    elif scheme in ("http", "https"):
        hint = "check that the tracking server is running and reachable at that address"
    else:
        hint = "check MLFLOW_TRACKING_URI (a database such as sqlite:///mlflow.db, or http://HOST:PORT)"
    return PixelwiseError(f"train.track: mlflow cannot use the tracking store {uri} ({reason}); {hint}, or remove "
                          "mlflow from train.track")


class MLflow(Callback):
    """Logs a training run to MLflow (see the module's documentation); the store is opened when it is built."""

    def __init__(self, tracking_uri: str | None = None, experiment: str | None = None) -> None:
        require("mlflow")
        given = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
        self.tracking_uri = absolute_uri(given)  # the working folder of the start, not of a later call
        self.experiment = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or "pixelwise"
        self.client: Any = None
        self.experiment_id: str | None = None
        self.run_id: str | None = None
        if launched_rank() == 0:  # under torchrun only rank 0 logs: the others leave the store alone
            self.connect()

    def connect(self) -> None:
        """Open the store and find (or create) the experiment; a PixelwiseError naming the store if it fails."""
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        try:
            client = MlflowClient(self.tracking_uri)
            found = client.get_experiment_by_name(self.experiment)
            if found is not None and found.lifecycle_stage != "active":
                raise PixelwiseError(
                    f"train.track: mlflow: the experiment '{self.experiment}' in {self.tracking_uri} is deleted; "
                    f"restore it (mlflow experiments restore --experiment-id {found.experiment_id}) or name "
                    "another with MLFLOW_EXPERIMENT_NAME")
            self.experiment_id = found.experiment_id if found else client.create_experiment(self.experiment)
        except (MlflowException, OSError, ValueError) as e:  # refused store, unreachable server, bad setting ...
            raise store_problem(self.tracking_uri, e) from None
        self.client = client

    def _recorded_run(self, saved: dict[str, Any], run_dir: Path) -> tuple[str | None, str | None]:
        """(the MLflow run to go on with, a note why a new one is started) for a run directory's mlflow.json."""
        from mlflow.exceptions import MlflowException

        run_id = saved.get("run_id")
        if not run_id:
            return None, None
        recorded = absolute_uri(str(saved.get("tracking_uri") or ""))  # an earlier version kept it as given
        if recorded != self.tracking_uri:
            return None, (f"{run_dir} was tracked in {recorded} (MLflow run {run_id}), the store now is "
                          f"{self.tracking_uri}: a new MLflow run there holds the whole history (MLFLOW_TRACKING_URI"
                          f"={recorded} goes on with the first)")
        try:
            found = self.client.get_run(run_id)
        except MlflowException:
            found = None
        if found is None or found.info.lifecycle_stage != "active":
            return None, (f"MLflow run {run_id} of {run_dir} is not in {self.tracking_uri} (deleted?): a new "
                          "MLflow run holds the whole history")
        return run_id, None

    def on_train_start(self, state: RunState) -> None:
        if not state.is_main:
            return
        if self.client is None:
            self.connect()
        marker = state.run_dir / "mlflow.json"
        try:
            saved = json.loads(marker.read_text()) if marker.is_file() else {}
        except (OSError, ValueError):  # unreadable: its MLflow run cannot be told, so a new one is started
            saved = {}
        saved = saved if isinstance(saved, dict) else {}
        self.run_id, note = self._recorded_run(saved, state.run_dir)
        record = {"tracking_uri": self.tracking_uri, "run_id": self.run_id, "experiment": self.experiment}
        if self.run_id is not None:  # a resumed run: the same MLflow run
            self.client.update_run(self.run_id, status="RUNNING")
            if saved.get("tracking_uri") != self.tracking_uri:  # kept as given by an earlier version
                record["experiment"] = saved.get("experiment", self.experiment)
                atomic_write_text(marker, json.dumps(record, indent=2))
            return
        tags = {"pixelwise.run_dir": str(state.run_dir.resolve())}
        if note:
            notice("note", note)
            tags["pixelwise.note"] = note[:PARAM_LIMIT]
        run = self.client.create_run(self.experiment_id, run_name=state.run_dir.name, tags=tags)
        self.run_id = run.info.run_id
        atomic_write_text(marker, json.dumps({**record, "run_id": self.run_id}, indent=2))
        from mlflow.entities import Param

        params = [Param(k, v[:PARAM_LIMIT]) for k, v in
                  flatten(state.config.model_dump(mode="json")).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 parameters per call
            self.client.log_batch(self.run_id, params=params[i:i + 100])
        for row in state.history:  # a resumed run in a new MLflow run: the epochs before the resume
            self._log_metrics(row, 0)

    def _log_metrics(self, row: dict[str, Any], epoch: int) -> None:
        import time

        from mlflow.entities import Metric

        now, step = int(time.time() * 1000), int(row.get("epoch", epoch))
        metrics = [Metric(k, v, now, step) for k, v in finite_metrics(row).items()]
        for i in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics per call
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])

    def on_epoch_end(self, state: RunState) -> None:
        if self.run_id is not None:
            self._log_metrics(state.metrics, state.epoch)

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
