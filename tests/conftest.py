"""Shared fixtures: tiny datasets written to temporary folders, and the real data beside the project."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

# Offline and with an empty Hugging Face cache, whatever this machine has cached: model.encoder_weights auto
# (the default) then decides the same way everywhere (random initialisation, except for encoders whose weights
# come from an installed offline package). Set before huggingface_hub is imported: it reads them once.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="pixelwise-test-hf-")
os.environ.pop("HF_HUB_CACHE", None)

import numpy as np
import pytest
from PIL import Image

from pixelwise.data import synthetic

atexit.register(shutil.rmtree, os.environ["HF_HOME"], ignore_errors=True)  # not left behind in /tmp per run

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PIXELWISE_SHARED_DATA", ROOT.parent / "shared" / "data"))


def shared_or_skip(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real data not found at {path} (set PIXELWISE_SHARED_DATA to its folder)")
    return path


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's synthetic set, small: train 12 and val 4 images of 64x64, folders layout with classes.yaml."""
    return synthetic.write_dataset(tmp_path_factory.mktemp("synthetic"), n_train=12, n_val=4, size=64, seed=1)


def write_pair(folder: Path, stem: str, image: np.ndarray, mask: np.ndarray) -> None:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(folder / "images" / f"{stem}.png")
    Image.fromarray(mask).save(folder / "masks" / f"{stem}.png")


def tiny_overrides(data: Path) -> list[str]:
    """--set overrides for a fast CPU run on a tiny dataset."""
    return [f"data.root={data}", "data.crop_size=32", "train.batch_size=4", "train.eval_batch_size=4",
            "model.encoder=resnet18", "model.options={decoder_channels: [16, 16, 16, 16, 16]}",
            "data.num_workers=0", "augment.preset=light"]


@pytest.fixture(scope="session")
def served_run(synthetic_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run trained for 2 steps on the synthetic set, exported beside itself (RUN/model.onnx): for the server."""
    from pixelwise.config import load_config
    from pixelwise.engine.trainer import Trainer
    from pixelwise.export.onnx import export_onnx

    run = tmp_path_factory.mktemp("served") / "run"
    Trainer(load_config(overrides=[*tiny_overrides(synthetic_data), "train.max_steps=2"]), run).fit()
    export_onnx(run, None, None)
    return run
