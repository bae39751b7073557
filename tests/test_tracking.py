"""train.track: [mlflow]: a run read back from MLflow's SQLite store (params, metric history, artifacts)."""

from __future__ import annotations

import json

import pytest
from conftest import tiny_overrides

import pixelwise as pw
from pixelwise.config import parse_override
from pixelwise.errors import PixelwiseError
from pixelwise.report import mlflow as tracking


def _tiny(data):
    out = dict(parse_override(text) for text in tiny_overrides(data))
    out.pop("data.root")
    out["train.batch_size"] = 6  # 12 images: two steps an epoch
    return out


def test_mlflow_run_is_read_back_from_the_default_sqlite_store(synthetic_data, tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="the tracking extra: pip install 'pixelwise[tracking]'")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # the default store is sqlite:///mlflow.db in the working folder
    run = pw.train(data=synthetic_data, out=tmp_path / "run", **_tiny(synthetic_data),
                   train={"max_steps": 4, "track": ["mlflow"], "tensorboard": False})
    assert (tmp_path / "mlflow.db").is_file()
    marker = json.loads((run.dir / "mlflow.json").read_text())
    client = MlflowClient("sqlite:///mlflow.db")
    logged = client.get_run(marker["run_id"])
    assert logged.info.status == "FINISHED" and logged.info.run_name == "run"
    assert logged.data.params["model.arch"] == "unet" and logged.data.params["train.max_steps"] == "4"
    assert logged.data.params["model.encoder_weights"] == "null"  # auto, settled offline: random initialisation
    history = client.get_metric_history(marker["run_id"], "val_miou")
    assert [m.step for m in history] == [1, 2]  # 12 images in batches of 6: two epochs of two steps
    assert [m.value for m in history] == pytest.approx([r["val_miou"] for r in run.history], rel=1e-4)
    assert logged.data.tags["summary.best_miou"] == str(run.summary["best_miou"])
    artifacts = {a.path for a in client.list_artifacts(marker["run_id"])}
    assert {"best.safetensors", "config.yaml", "metrics.csv", "summary.json", "report.html", "plots"} <= artifacts
    assert "last.ckpt" not in artifacts
    assert client.list_artifacts(marker["run_id"], "plots")  # the report's figures


def test_a_missing_tracker_package_is_named(monkeypatch):
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(PixelwiseError, match=r"pip install 'pixelwise\[tracking\]'"):
        tracking.tracking_callbacks(["mlflow"])
    assert tracking.flatten({"a": {"b": [1, 2], "c": None}, "d": "x"}) == {"a.b": "[1, 2]", "a.c": "null", "d": "x"}
