"""k-fold cross-validation: deterministic folds through plan_splits, one run per fold under a parent, mean +- std,
and the parent (or a list of runs) loading as the ensemble of the folds, in Segmenter, predict and ONNX."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_overrides

from pixelwise.config import DataConfig, load_config
from pixelwise.data.io import Pair
from pixelwise.data.splits import fold_of, plan_splits, select_split
from pixelwise.errors import DataError, PixelwiseError
from pixelwise.inference.predictor import Segmenter


def _pairs(n: int) -> list[Pair]:
    return [Pair(Path(f"img/{i:02d}.png"), Path(f"mask/{i:02d}.png")) for i in range(n)]


def test_folds_partition_the_pool_deterministically_and_check_and_eval_agree():
    pool = _pairs(23)
    assignment = fold_of(pool, 5, seed=0)
    assert sorted(np.bincount(assignment).tolist()) == [4, 4, 5, 5, 5]
    assert fold_of(list(reversed(pool)), 5, seed=0) == list(reversed(assignment))  # by path, not by listing order
    assert fold_of(pool, 5, seed=1) != assignment
    vals = []
    for fold in range(5):
        cfg = DataConfig(folds=5, fold=fold)
        plan = plan_splits({"train": pool, "test": _pairs(2)}, cfg)
        assert not {p.image for p in plan.train} & {p.image for p in plan.val}
        assert len(plan.train) + len(plan.val) == 23 and plan.val_from.startswith(f"fold {fold} of 5")
        assert select_split({"train": pool}, cfg, "val")[0] == plan.val  # eval --split val: the fold's images
        vals += [p.image for p in plan.val]
    assert sorted(vals) == sorted(p.image for p in pool)  # every image validates exactly once
    with pytest.raises(DataError, match="cross-validation parent"):
        plan_splits({"train": pool}, DataConfig(folds=5))
    with pytest.raises(DataError, match="5 folds need at least 5"):
        plan_splits({"train": _pairs(3)}, DataConfig(folds=5, fold=0))
    with pytest.raises(ValueError, match="data.fold counts from 0"):
        DataConfig(folds=3, fold=3)


def test_train_folds_summary_and_the_parent_as_an_ensemble(synthetic_data, tmp_path):
    from pixelwise.export.onnx import export_onnx
    from pixelwise.kfold import train_folds

    cfg = load_config(overrides=[*tiny_overrides(synthetic_data), "train.max_steps=1", "train.report=false",
                                 "train.tensorboard=false", "data.val_split=null"])
    parent = tmp_path / "cv"
    result = train_folds(cfg, parent, 2)
    assert result["runs"] == ["fold_0", "fold_1"] and json.loads((parent / "folds.json").read_text())["folds"] == 2
    saved = json.loads((parent / "cv_summary.json").read_text())
    mious = [json.loads((parent / f"fold_{i}" / "summary.json").read_text())["best_miou"] for i in range(2)]
    assert saved["summary"]["miou"]["mean"] == pytest.approx(np.mean(mious))
    assert saved["summary"]["miou"]["std"] == pytest.approx(np.std(mious, ddof=1))
    fold_cfgs = [load_config(parent / f"fold_{i}" / "config.yaml") for i in range(2)]
    assert [(c.data.folds, c.data.fold) for c in fold_cfgs] == [(2, 0), (2, 1)]
    image = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    members = [Segmenter.load(parent / f"fold_{i}", device="cpu", amp="off").probabilities(image) for i in range(2)]
    ensemble = Segmenter.load(parent, device="cpu", amp="off").probabilities(image)
    assert np.allclose(ensemble, np.mean(members, axis=0), atol=1e-6)
    listed = Segmenter.load([parent / "fold_0", parent / "fold_1"], device="cpu", amp="off").probabilities(image)
    assert np.allclose(listed, ensemble, atol=1e-6)
    onnx = export_onnx(parent)  # one graph averaging the folds
    assert onnx["argmax_agreement"] >= 0.999
    assert np.allclose(Segmenter.load(onnx["path"]).probabilities(image), ensemble, atol=1e-4)
    again = train_folds(cfg, parent, 2)  # finished folds are kept
    assert again["per_fold"] == result["per_fold"]
    with pytest.raises(PixelwiseError, match="leave data.fold unset"):
        train_folds(cfg.model_copy(update={"data": cfg.data.model_copy(update={"folds": 2, "fold": 0})}), parent, 2)


def _cv_config(data: Path, *extra: str):
    return load_config(overrides=[*tiny_overrides(data), "train.max_steps=1", "train.report=false",
                                  "train.tensorboard=false", "data.val_split=null", *extra])


def test_folds_of_another_split_or_config_are_refused_not_mixed_in(synthetic_data, tmp_path):
    from pixelwise.kfold import train_folds

    parent = tmp_path / "cv"
    train_folds(_cv_config(synthetic_data), parent, 2)
    kept = {p: p.stat().st_mtime_ns for p in parent.rglob("*") if p.is_file()}
    for folds, extra, said in [(4, (), "data.folds 2, now 4"), (2, ("data.split_seed=1",), "data.split_seed 0, now 1"),
                               (2, ("train.max_steps=2",), "train.max_steps 1, now 2"),
                               (2, ("data.root=" + str(tmp_path / "other"),), "data.root")]:
        with pytest.raises(PixelwiseError, match=f"{said}.*--overwrite") as e:
            train_folds(_cv_config(synthetic_data, *extra), parent, folds)
        assert "fold_0" in str(e.value)
    assert not (parent / "fold_2").exists()  # refused before any fold trained
    assert {p: p.stat().st_mtime_ns for p in parent.rglob("*") if p.is_file()} == kept  # and nothing written
    # what only says how a fold runs does not matter; an interrupted fold resumes with a new budget
    train_folds(_cv_config(synthetic_data, "train.eval_batch_size=2", "data.cache=false"), parent, 2)
    for fold in range(2):
        (parent / f"fold_{fold}" / "summary.json").unlink()  # as if both were stopped before their end
    resumed = train_folds(_cv_config(synthetic_data, "train.max_steps=2"), parent, 2)
    assert [json.loads((parent / f"fold_{i}" / "summary.json").read_text())["steps"] for i in range(2)] == [2, 2]
    assert resumed["runs"] == ["fold_0", "fold_1"]
    # --overwrite trains every fold again, with the new split
    result = train_folds(_cv_config(synthetic_data), parent, 4, overwrite=True)
    assert result["runs"] == [f"fold_{i}" for i in range(4)] and len(result["per_fold"]) == 4
    assert [load_config(parent / f"fold_{i}" / "config.yaml").data.folds for i in range(4)] == [4] * 4


def test_overwrite_over_an_ordinary_run_removes_its_files_and_keeps_the_users(synthetic_data, tmp_path, capsys):
    from pixelwise.engine.trainer import Trainer
    from pixelwise.kfold import train_folds

    parent = tmp_path / "run"
    Trainer(_cv_config(synthetic_data), parent).fit()
    for name in ("eval_val.json", "report.html"):  # as the report writes them
        (parent / name).write_text("{}")
    (parent / "notes.txt").write_text("mine")
    with pytest.raises(PixelwiseError, match="not a cross-validation.*--overwrite"):
        train_folds(_cv_config(synthetic_data), parent, 2)
    assert (parent / "best.safetensors").is_file()  # refused: nothing removed
    train_folds(_cv_config(synthetic_data), parent, 2, overwrite=True)
    for name in ("best.safetensors", "last.ckpt", "summary.json", "eval_val.json", "metrics.csv", "report.html",
                 "dataset.json"):
        assert not (parent / name).exists(), name
    assert (parent / "notes.txt").read_text() == "mine" and "notes.txt" in capsys.readouterr().err
    assert {"folds.json", "config.yaml", "cv_summary.json", "fold_0", "fold_1"} <= {p.name for p in parent.iterdir()}
    assert Segmenter.load(parent, device="cpu").probabilities(np.zeros((32, 32, 3), np.uint8)).ndim == 3


def test_fold_metrics_use_only_an_evaluation_of_the_present_weights(synthetic_data, tmp_path):
    from pixelwise.kfold import fold_metrics, train_folds
    from pixelwise.report.build import FINGERPRINT, model_fingerprint

    parent = tmp_path / "cv"
    train_folds(_cv_config(synthetic_data), parent, 2)
    run = parent / "fold_0"
    best = json.loads((run / "summary.json").read_text())["best_miou"]
    evaluation = {"miou": 0.123, "classes": {}, FINGERPRINT: model_fingerprint(run)}
    (run / "eval_val.json").write_text(json.dumps(evaluation))
    assert fold_metrics(run)["miou"] == 0.123
    (run / "eval_val.json").write_text(json.dumps({**evaluation, FINGERPRINT: None}))  # before fingerprints
    assert fold_metrics(run) == {"miou": best}


def test_imagenet_weights_are_a_name_not_a_path_when_folds_are_compared():
    # 'imagenet' as a path (CWD/imagenet) made every finished fold differ from itself: "imagenet", now "imagenet"
    from pixelwise.kfold import _as_run

    assert _as_run("model.encoder_weights", "imagenet") == "imagenet"
    assert _as_run("model.encoder_weights", "w.safetensors").endswith("/w.safetensors")
