"""train.track: [mlflow] when the store is refused or unreachable (one clear error before anything is trained or
written) and when a run is resumed from another working folder or its MLflow run is gone (a new MLflow run that
holds the whole history, with a note)."""

from __future__ import annotations

import json
import socket

import pytest
from conftest import tiny_overrides

import pixelwise as pw
from pixelwise.config import parse_override
from pixelwise.errors import PixelwiseError
from pixelwise.report import mlflow as tracking

pytest.importorskip("mlflow", reason="the tracking extra: pip install 'pixelwise[tracking]'")


def _tiny(data):
    out = dict(parse_override(text) for text in tiny_overrides(data))
    out.pop("data.root")
    out["train.batch_size"] = 6  # 12 images: two steps an epoch
    return out


def _train(data, run, **train):
    """A tiny tracked run (or its resume, with ``resume=True``): no report or TensorBoard, to stay quick."""
    settings = {"track": ["mlflow"], "tensorboard": False, "report": False, **train}
    if settings.pop("resume", False):
        return pw.train(resume=run, train=settings)
    return pw.train(data=data, out=run, **_tiny(data), train=settings)


def test_a_file_store_mlflow_refuses_is_one_clear_error_before_anything_is_written(synthetic_data, tmp_path,
                                                                                  monkeypatch):
    # MLflow 3 refuses file stores unless MLFLOW_ALLOW_FILE_STORE=true: that was a raw MlflowException at
    # on_train_start, after the data check and the model build, with the run directory half written.
    store = tmp_path / "store"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file://{store}")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with pytest.raises(PixelwiseError, match=rf"tracking store file://{store} .*MLFLOW_ALLOW_FILE_STORE=true"):
        _train(synthetic_data, tmp_path / "run", max_steps=2)
    assert not (tmp_path / "run").exists() and not store.exists()
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "maybe")  # a value MLflow cannot read: said, not a traceback
    with pytest.raises(PixelwiseError, match="MLFLOW_ALLOW_FILE_STORE value must be one of"):
        tracking.tracking_callbacks(["mlflow"])


def test_an_unreachable_tracking_server_is_named_when_the_callbacks_are_built(monkeypatch):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(PixelwiseError, match=rf"http://127.0.0.1:{port} .*running and reachable"):
        tracking.tracking_callbacks(["mlflow"])


def test_a_deleted_experiment_is_named_instead_of_failing_at_the_first_run(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path.as_posix()}/m.db"
    client = MlflowClient(uri)
    client.delete_experiment(client.create_experiment("pixelwise"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    with pytest.raises(PixelwiseError, match="experiment 'pixelwise' .* is deleted; restore it"):
        tracking.tracking_callbacks(["mlflow"])


def test_relative_sqlite_stores_are_recorded_as_absolute_uris(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert tracking.absolute_uri("sqlite:///mlflow.db") == f"sqlite:///{(tmp_path / 'mlflow.db').as_posix()}"
    assert tracking.absolute_uri("sqlite:///sub/m.db?timeout=5") == f"sqlite:///{tmp_path.as_posix()}/sub/m.db?timeout=5"
    assert tracking.absolute_uri("./mlruns") == str(tmp_path / "mlruns")
    for fixed in ("sqlite:////abs/m.db", "sqlite://", "http://host:5000", "databricks", "file:///abs/store"):
        assert tracking.absolute_uri(fixed) == fixed


def test_a_resume_from_another_folder_or_of_a_deleted_mlflow_run_logs_the_whole_history(synthetic_data, tmp_path,
                                                                                       monkeypatch):
    # The default store sqlite:///mlflow.db was recorded as given and compared as a string: resumed from another
    # folder, update_run went to that folder's database -> "Run with id=... not found", and an empty mlflow.db.
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    first, second, run = tmp_path / "a", tmp_path / "b", tmp_path / "run"
    first.mkdir()
    second.mkdir()
    monkeypatch.chdir(first)
    _train(synthetic_data, run, epochs=1)
    marker = json.loads((run / "mlflow.json").read_text())
    assert marker["tracking_uri"] == f"sqlite:///{(first / 'mlflow.db').as_posix()}"
    (run / "mlflow.json").write_text(json.dumps({**marker, "tracking_uri": "sqlite:///mlflow.db"}))  # as recorded
    _train(synthetic_data, run, epochs=2, resume=True)  # same folder, a marker of an earlier version: same run
    assert json.loads((run / "mlflow.json").read_text())["run_id"] == marker["run_id"]
    client = MlflowClient(marker["tracking_uri"])
    assert [m.step for m in client.get_metric_history(marker["run_id"], "val_miou")] == [1, 2]

    monkeypatch.chdir(second)
    _train(synthetic_data, run, epochs=3, resume=True)  # another folder: its own store, a new MLflow run there
    moved = json.loads((run / "mlflow.json").read_text())
    assert moved["tracking_uri"] == f"sqlite:///{(second / 'mlflow.db').as_posix()}"
    assert moved["run_id"] != marker["run_id"]
    there = MlflowClient(moved["tracking_uri"])
    logged = there.get_run(moved["run_id"])
    assert logged.info.status == "FINISHED" and str(first / "mlflow.db") in logged.data.tags["pixelwise.note"]
    history = there.get_metric_history(moved["run_id"], "val_miou")
    assert [m.step for m in history] == [1, 2, 3]  # the epochs before the resume too
    assert [m.value for m in history] == pytest.approx([r["val_miou"] for r in pw.Run(run).history], rel=1e-4)
    assert client.get_run(marker["run_id"]).info.status == "FINISHED"  # the first store is left as it was

    there.delete_run(moved["run_id"])  # the recorded MLflow run is gone: a new one, not a traceback
    _train(synthetic_data, run, epochs=4, resume=True)
    again = json.loads((run / "mlflow.json").read_text())["run_id"]
    assert again != moved["run_id"] and "is not in" in there.get_run(again).data.tags["pixelwise.note"]
    assert [m.step for m in there.get_metric_history(again, "val_miou")] == [1, 2, 3, 4]
