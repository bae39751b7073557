"""``export --to smp``'s usage snippet, run exactly as printed, gives the run's own predictions: for an 8-bit RGB run
(encoder normalisation) and for a 5-band uint16 run trained on data.bands [4, 3, 2, 5] (z-score with clip bounds),
whose preprocessing.json names the bands. The snippet once made float64 input (a list subtracted from a float32
array), skipped the clip and fed every band of the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scientific_data as sd
import tifffile
import torch
from PIL import Image

from pixelwise.config import load_config
from pixelwise.engine.trainer import Trainer
from pixelwise.export.smp import USAGE, export_smp
from pixelwise.inference.predictor import Segmenter

SMALL = ["data.crop_size=32", "train.batch_size=4", "train.eval_batch_size=4", "data.num_workers=0",
         "augment.preset=light", "train.amp=off", "train.tensorboard=false", "train.report=false",
         "model.encoder=resnet18", "model.options={encoder_depth: 3, decoder_channels: [16, 16, 16]}"]


def _run_snippet(run: Path, out: Path, image) -> dict:
    """Export ``run`` to ``out`` and execute its usage text, verbatim, with ``image`` defined as the user's."""
    done = export_smp(run, out)
    assert done["usage"] == USAGE.format(folder=out)
    namespace = {"image": image}
    exec(done["usage"], namespace)
    return namespace


def _same_as_segmenter(run: Path, got: dict, image) -> None:
    seg = Segmenter.load(run, device="cpu", amp="off")
    assert got["x"].dtype == np.float32
    with torch.inference_mode():
        probs = got["logits"].softmax(1)[0].numpy()
    assert np.abs(probs - seg.probabilities(image)).max() < 1e-4
    assert np.array_equal(got["mask"], seg.predict(image))


def test_the_printed_snippet_predicts_as_the_run_for_8_bit_rgb(served_run, synthetic_data, tmp_path):
    path = sorted((synthetic_data / "val" / "images").iterdir())[0]
    image = Image.open(path)  # 64x64 RGB, as a user of plain smp would open it
    got = _run_snippet(served_run, tmp_path / "smp", image)
    pre = json.loads((tmp_path / "smp" / "preprocessing.json").read_text())
    assert pre["bands"] is None and pre["clip"] is None and pre["nan_fill"] is None
    _same_as_segmenter(served_run, got, path)


@pytest.fixture(scope="module")
def band_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("bands")
    data = sd.write_dataset(root / "data", "5band", n_train=4, n_val=2)
    cfg = load_config(overrides=[f"data.root={data}", "data.bands=[4, 3, 2, 5]", "train.max_steps=2", *SMALL])
    Trainer(cfg, root / "run").fit()
    return data, root / "run"


def test_preprocessing_json_names_the_bands_and_the_snippet_selects_and_clips_them(band_run, tmp_path):
    _, run = band_run
    rng = np.random.default_rng(3)
    stored = sd.five_band(rng, sd.regions(rng, 64))  # 64x64x5 uint16, as the file holds it
    path = tmp_path / "scene.tif"
    tifffile.imwrite(path, stored, photometric="minisblack", planarconfig="contig")
    got = _run_snippet(run, tmp_path / "smp", tifffile.imread(path))
    pre = json.loads((tmp_path / "smp" / "preprocessing.json").read_text())
    assert pre["bands"] == [4, 3, 2, 5] and "bands 4, 3, 2, 5" in pre["input"]
    assert len(pre["mean"]) == len(pre["clip"]) == 4 and pre["pages_as_channels"] is False
    assert pre["channel_axis"] == "auto" and pre["nan_fill"] is None
    assert got["x"].shape == (64, 64, 4)
    clip = np.float32(pre["clip"])
    assert ((stored[:, :, [3, 2, 1, 4]] < clip[:, 0]) | (stored[:, :, [3, 2, 1, 4]] > clip[:, 1])).any()  # clip bites
    _same_as_segmenter(run, got, path)
