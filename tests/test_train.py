import csv
import json

import pytest
import torch
from conftest import tiny_overrides
from safetensors.torch import load_file

from pixelwise.config import load_config
from pixelwise.engine.checkpoint import load_state
from pixelwise.engine.trainer import Trainer
from pixelwise.errors import PixelwiseError
from pixelwise.optim import lr_factor


def _cfg(data, *extra):
    return load_config(overrides=[*tiny_overrides(data), *extra])


def test_two_steps_then_resume(synthetic_data, tmp_path):
    run = tmp_path / "run"
    summary = Trainer(_cfg(synthetic_data, "train.max_steps=2"), run).fit()
    for name in ("config.yaml", "best.safetensors", "last.ckpt", "metrics.csv", "summary.json"):
        assert (run / name).is_file(), name
    assert summary["steps"] == 2 and summary["epochs"] == 1 and summary["stopped_by"] == "max_steps (2)"
    for key in ("best_miou", "epochs", "steps", "wall_seconds", "train_images_per_second"):
        assert key in json.loads((run / "summary.json").read_text())
    # The resolved config carries what loading needs: class table and channels.
    resolved = load_config(run / "config.yaml")
    assert resolved.data.classes.names == ["background", "disc", "square", "triangle"]
    assert resolved.model.in_channels == 3

    before = load_state(run / "last.ckpt")
    summary = Trainer(_cfg(synthetic_data, "train.max_steps=5"), run, resume=True).fit()
    assert summary["steps"] == 5 and summary["epochs"] == 2
    assert load_config(run / "config.yaml").train.max_steps == 5  # the override is now the run's config
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == [2, 5]
    assert {"train_loss", "val_loss", "val_miou", "lr", "images_per_second"} <= set(rows[0])
    after = load_state(run / "last.ckpt")
    changed = [k for k in before["model"] if not torch.equal(before["model"][k], after["model"][k])]
    assert changed, "resumed training must update the weights"
    # best.safetensors holds weights only, loadable without pickle
    assert set(load_file(str(run / "best.safetensors"))) == set(after["model"])


def test_resume_when_already_done_does_nothing(synthetic_data, tmp_path):
    run = tmp_path / "run"
    Trainer(_cfg(synthetic_data, "train.max_steps=1"), run).fit()
    summary = Trainer(_cfg(synthetic_data, "train.max_steps=1"), run, resume=True).fit()
    assert summary["steps"] == 1


def test_existing_run_is_not_overwritten(synthetic_data, tmp_path):
    run = tmp_path / "run"
    Trainer(_cfg(synthetic_data, "train.max_steps=1"), run).fit()
    weights = (run / "best.safetensors").read_bytes()
    with pytest.raises(PixelwiseError, match="--resume"):
        Trainer(_cfg(synthetic_data, "train.max_steps=1"), run)
    assert (run / "best.safetensors").read_bytes() == weights
    Trainer(_cfg(synthetic_data, "train.max_steps=1"), run, overwrite=True).fit()
    with pytest.raises(PixelwiseError, match="nothing to resume"):
        Trainer(_cfg(synthetic_data), tmp_path / "empty", resume=True)


def test_epochs_and_time_budget_stop(synthetic_data, tmp_path):
    summary = Trainer(_cfg(synthetic_data, "train.epochs=2"), tmp_path / "a").fit()
    assert summary["epochs"] == 2 and summary["steps"] == 6 and summary["stopped_by"] == "epochs (2)"
    summary = Trainer(_cfg(synthetic_data, "train.time_budget=0.01s"), tmp_path / "b").fit()
    assert summary["steps"] == 1 and summary["stopped_by"].startswith("time_budget")


def test_same_seed_same_result(synthetic_data, tmp_path):
    a = Trainer(_cfg(synthetic_data, "train.max_steps=3", "augment.preset=default"), tmp_path / "a").fit()
    b = Trainer(_cfg(synthetic_data, "train.max_steps=3", "augment.preset=default"), tmp_path / "b").fit()
    assert a["best_miou"] == b["best_miou"]
    wa, wb = load_file(str(tmp_path / "a" / "best.safetensors")), load_file(str(tmp_path / "b" / "best.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_grayscale_data_gives_one_channel_model(tmp_path):
    import numpy as np
    from conftest import write_pair

    rng = np.random.default_rng(0)
    for i in range(6):
        write_pair(tmp_path / "data", f"{i}", rng.integers(0, 255, (40, 40), dtype=np.uint8),
                   (rng.random((40, 40)) > 0.5).astype(np.uint8) * 255)
    summary = Trainer(_cfg(tmp_path / "data", "train.max_steps=1", "data.val_fraction=0.34"), tmp_path / "r").fit()
    assert summary["train_images"] == 4 and summary["val_images"] == 2
    assert load_config(tmp_path / "r" / "config.yaml").model.in_channels == 1


def test_schedules():
    cfg = load_config(overrides=["optim.warmup=0.1", "optim.min_lr_ratio=0.0"]).optim
    assert lr_factor(0.05, cfg) == pytest.approx(0.5)
    assert lr_factor(0.1, cfg) == pytest.approx(1.0)
    assert lr_factor(1.0, cfg) == pytest.approx(0.0, abs=1e-9)
    assert lr_factor(0.55, cfg) == pytest.approx(0.5)  # cosine midpoint
    const = load_config(overrides=["optim.scheduler=constant", "optim.warmup=0"]).optim
    assert lr_factor(0.7, const) == 1.0
