"""End to end on a handful of real images from ../shared/data (skipped when it is absent).

The tests link the files into a temporary folder; nothing is copied into the project.
"""

import json

import numpy as np
from conftest import shared_or_skip
from PIL import Image

from pixelwise import Segmenter
from pixelwise.config import load_config
from pixelwise.engine.trainer import Trainer
from pixelwise.inference.evaluation import evaluate_run


def _link(files, folder):
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        (folder / f.name).symlink_to(f)


def test_camvid_8_images(tmp_path):
    camvid = shared_or_skip("camvid")
    data = tmp_path / "camvid"
    for split, n in (("train", 6), ("val", 2)):
        images = sorted((camvid / split).glob("*.png"))[:n]
        _link(images, data / split)
        _link([camvid / f"{split}annot" / f.name for f in images], data / f"{split}annot")
    cfg = load_config(overrides=[f"data.root={data}", "data.crop_size=128", "train.batch_size=2",
                                 "train.max_steps=2", "train.eval_batch_size=2", "data.num_workers=0"])
    summary = Trainer(cfg, tmp_path / "run").fit()
    assert summary["classes"][0] == "sky" and len(summary["classes"]) == 11 and summary["val_images"] == 2
    result = evaluate_run(tmp_path / "run", "val")
    assert result["images"] == 2
    # void (11) pixels are never counted: labelled pixels = all pixels - void
    masks = [np.asarray(Image.open(p)) for p in sorted((data / "valannot").iterdir())]
    assert result["labelled_pixels"] == sum(int((m != 11).sum()) for m in masks)
    seg = Segmenter.load(tmp_path / "run")
    image = sorted((data / "val").iterdir())[0]
    assert seg.predict(image).shape == (360, 480)


def test_membrane_4_images(tmp_path):
    membrane = shared_or_skip("membrane")
    data = tmp_path / "membrane"
    names = [f"{i}.png" for i in range(4)]
    _link([membrane / "image" / n for n in names], data / "image")
    _link([membrane / "label" / n for n in names], data / "label")
    cfg = load_config(overrides=[f"data.root={data}", "data.crop_size=128", "train.batch_size=2",
                                 "train.max_steps=2", "data.val_fraction=0.25", "data.num_workers=0"])
    summary = Trainer(cfg, tmp_path / "run").fit()
    assert summary["train_images"] == 3 and summary["val_images"] == 1
    resolved = load_config(tmp_path / "run" / "config.yaml")
    assert resolved.model.in_channels == 1 and resolved.data.classes.mapping == {0: 0, 255: 1}
    result = evaluate_run(tmp_path / "run", "val")
    assert result["images"] == 1 and result["labelled_pixels"] == 512 * 512
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 2
