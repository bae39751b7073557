"""The Python API: pw.train / Run / evaluate, callbacks and early stopping, your own Dataset and nn.Module."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, tiny_overrides
from torch import nn
from torch.utils.data import Dataset

import pixelwise as pw
from pixelwise.config import load_config, parse_override
from pixelwise.engine.callbacks import HOOKS, EarlyStopping
from pixelwise.engine.trainer import Trainer
from pixelwise.errors import ConfigError, PixelwiseError


def _tiny(data: Path) -> dict:
    """tiny_overrides as keyword overrides for pw.train."""
    out = dict(parse_override(text) for text in tiny_overrides(data))
    out.pop("data.root")
    return out


def test_public_names_are_visible():
    names = dir(pw)
    for name in ("train", "evaluate", "load_config", "Config", "Run", "Segmenter", "Callback", "RunState",
                 "EarlyStopping", "__version__"):
        assert name in names and name in pw.__all__, name
        assert getattr(pw, name) is not None


class Recorder(pw.Callback):
    """Records each hook with what the state said at that moment."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def on_train_start(self, state):
        self.calls.append(("on_train_start", state.epoch, state.step))

    def on_epoch_start(self, state):
        self.calls.append(("on_epoch_start", state.epoch, state.step))

    def on_step_end(self, state):
        assert state.loss is not None and state.loss.ndim == 0
        self.calls.append(("on_step_end", state.epoch, state.step))

    def on_evaluate(self, state, metrics):
        assert 0 <= metrics["miou"] <= 1 and state.metrics is metrics
        self.calls.append(("on_evaluate", state.epoch, state.step))

    def on_epoch_end(self, state):
        assert state.metrics["epoch"] == state.epoch and state.history[-1] is state.metrics
        self.calls.append(("on_epoch_end", state.epoch, state.step))

    def on_checkpoint(self, state, paths):
        assert all(Path(p).is_file() for p in paths.values()) and "last" in paths
        self.calls.append(("on_checkpoint", state.epoch, state.step))

    def on_train_end(self, state):
        assert isinstance(state.model, nn.Module) and (state.run_dir / "summary.json").is_file()
        self.calls.append(("on_train_end", state.epoch, state.step))


def test_every_hook_is_called_in_order_with_the_state(synthetic_data, tmp_path):
    rec = Recorder()
    cfg = load_config(overrides=[*tiny_overrides(synthetic_data), "train.epochs=2"])  # 12 images: 3 steps/epoch
    Trainer(cfg, tmp_path / "run", callbacks=[pw.EarlyStopping(patience=5), rec]).fit()
    per_epoch = lambda e: [("on_epoch_start", e, 3 * e), *[("on_step_end", e, 3 * e + i) for i in (1, 2, 3)],  # noqa: E731
                           ("on_evaluate", e + 1, 3 * e + 3), ("on_epoch_end", e + 1, 3 * e + 3)]
    assert rec.calls == [("on_train_start", 0, 0), *per_epoch(0), *per_epoch(1), ("on_train_end", 2, 6)]
    # on_checkpoint comes from the checkpoint callback, which runs before the recorder at each epoch's end
    assert set(HOOKS) == {c[0] for c in rec.calls} | {"on_checkpoint"}


def test_checkpoint_hook_follows_the_files(synthetic_data, tmp_path):
    rec = Recorder()
    cfg = load_config(overrides=[*tiny_overrides(synthetic_data), "train.max_steps=4"])
    from pixelwise.engine.callbacks import core_callbacks

    Trainer(cfg, tmp_path / "run", callbacks=[rec, *core_callbacks(cfg)]).fit()
    names = [c[0] for c in rec.calls]
    assert names.count("on_checkpoint") == 2 and names.index("on_checkpoint") > names.index("on_epoch_end")


def test_a_callback_stops_training_and_the_last_epoch_is_still_evaluated_and_saved(synthetic_data, tmp_path):
    class StopAtStep(pw.Callback):
        def on_step_end(self, state):
            if state.step == 4:
                state.stop("enough for the test")

    run = pw.train(data=str(synthetic_data), out=str(tmp_path / "run"), callbacks=[StopAtStep()],
                   **_tiny(synthetic_data), **{"train.epochs": 10, "train.report": False})
    s = run.summary
    assert s["steps"] == 4 and s["epochs"] == 2 and s["stopped_by"] == "enough for the test"
    assert run.history[-1]["val_miou"] is not None  # the cut epoch was evaluated
    assert (run.dir / "last.ckpt").is_file() and (run.dir / "best.safetensors").is_file()


class _FakeState:
    def __init__(self):
        self.history, self.stopped = [], None

    def stop(self, reason):
        self.stopped = self.stopped or reason


@pytest.mark.parametrize(("mious", "patience", "min_delta", "stops_at"), [
    ([0.50, 0.60, 0.60, 0.59, 0.61], 2, 0.0, 4),  # 0.60 equals the best: no gain; 0.59 neither -> stop at the 4th
    ([0.50, 0.60, 0.605, 0.606, 0.70], 2, 0.01, 4),  # gains below min_delta do not count
    ([0.50, 0.60, 0.70, 0.80], 1, 0.0, None),  # always improving
    ([0.50, 0.40], 1, 0.0, 2),
])
def test_early_stopping_on_a_scripted_metric_sequence(mious, patience, min_delta, stops_at):
    es, state = EarlyStopping(patience, min_delta), _FakeState()
    es.on_train_start(state)
    stopped_at = None
    for i, m in enumerate(mious, start=1):
        es.on_evaluate(state, {"miou": m})
        if state.stopped and stopped_at is None:
            stopped_at = i
    assert stopped_at == stops_at
    if stops_at:
        assert state.stopped.startswith("early_stopping")


def test_early_stopping_resumes_its_count_from_the_history():
    es, state = EarlyStopping(patience=2), _FakeState()
    state.history = [{"val_miou": 0.5}, {"val_miou": 0.7}, {"val_miou": 0.69}]  # one evaluation without a gain
    es.on_train_start(state)
    es.on_evaluate(state, {"miou": 0.68})
    assert state.stopped  # the second in a row


def test_early_stopping_from_the_config(synthetic_data, tmp_path):
    run = pw.train(data=synthetic_data, out=tmp_path / "run", **_tiny(synthetic_data),
                   train={"epochs": 20, "early_stopping": {"patience": 1, "min_delta": 1.0}, "report": False})
    # a gain of more than 1.0 mIoU is impossible: the second evaluation stops the run
    assert run.summary["epochs"] == 2 and run.summary["stopped_by"].startswith("early_stopping")


def test_train_takes_str_paths_dotted_keys_and_section_dicts(synthetic_data, tmp_path):
    run = pw.train(data=str(synthetic_data), model="unet", encoder="resnet18", out=str(tmp_path / "run"),
                   optim={"lr": 0.002, "scheduler": "constant"}, **{"train.max_steps": 2, "data.crop_size": 32},
                   **{k: v for k, v in _tiny(synthetic_data).items() if k != "data.crop_size"})
    cfg = run.config
    assert cfg.optim.lr == 0.002 and cfg.optim.scheduler == "constant" and cfg.train.max_steps == 2
    assert cfg.data.root == synthetic_data.resolve() and cfg.data.crop_size == (32, 32)
    assert run.summary["steps"] == 2 and len(run.history) == 1 and run.history[0]["step"] == 2
    assert (run.dir / "report.html").is_file() and (run.dir / "tensorboard").is_dir()  # the CLI's callbacks
    assert pw.evaluate(str(run.dir))["images"] == 4
    mask = run.segmenter().predict(synthetic_data / "val" / "images" / sorted(
        p.name for p in (synthetic_data / "val" / "images").iterdir())[0])
    assert mask.shape == (64, 64)


def test_config_mistakes_from_python_are_as_clear_as_from_the_cli(synthetic_data, tmp_path):
    with pytest.raises(ConfigError, match=r"unknown setting 'epochs' \(did you mean 'train.epochs'\?\)"):
        pw.train(data=synthetic_data, epochs=3)
    with pytest.raises(ConfigError, match=r"optim.lrr: unknown key \(did you mean 'lr'\?\)"):
        pw.load_config(**{"optim.lrr": 0.1})
    with pytest.raises(ConfigError, match=r"model.arch: unknown architecture 'unett'.*Did you mean 'unet'"):
        pw.load_config(model={"arch": "unett"})
    with pytest.raises(ConfigError, match=r"train.batch_size: Input should be greater than or equal to 1"):
        pw.load_config(train={"batch_size": 0})
    assert not (tmp_path / "runs").exists()


def test_load_config_from_a_file_a_config_or_a_dict(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 7\n")
    assert pw.load_config(path).train.epochs == 7 and pw.load_config(str(path)).train.epochs == 7
    base = pw.load_config(path, **{"optim.lr": 0.01})
    again = pw.load_config(base, train={"batch_size": 2})
    assert again.train.epochs == 7 and again.optim.lr == 0.01 and again.train.batch_size == 2
    assert pw.load_config({"model": {"arch": "fpn"}}).model.arch == "fpn"


class Squares(Dataset):
    """Numpy items (float-free uint8 image, int64 mask): a bright square is class 1."""

    def __init__(self, n: int, seed: int, size: int = 32) -> None:
        self.n, self.seed, self.size = n, seed, size

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        rng = np.random.default_rng([self.seed, i])
        image = rng.integers(0, 80, (3, self.size, self.size), dtype=np.uint8)
        mask = np.zeros((self.size, self.size), dtype=np.int64)
        y, x = rng.integers(0, self.size - 12, 2)
        mask[y:y + 12, x:x + 12] = 1
        image[:, mask == 1] += 150
        return image, mask


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 2, 1))

    def forward(self, x):
        return self.body(x)


def test_your_own_dataset_and_module_train_save_and_predict(tmp_path):
    run = pw.train(data=Squares(16, 0), val_data=Squares(4, 1), model=Net(), classes=["bg", "square"],
                   out=tmp_path / "run", **{"train.epochs": 3, "train.batch_size": 4, "optim.lr": 0.01,
                                            "train.ema": 0.9, "loss": {"ce": 1.0, "dice": 1.0}})
    assert run.summary["epochs"] == 3 and run.summary["best_miou"] > 0
    assert (run.dir / "best.safetensors").is_file() and run.config.model.arch == "custom"
    page = (run.dir / "report.html").read_text()  # the report works with your parts too
    assert "item 0" in page or "item 1" in page  # gallery captions name the Dataset's items
    assert [row["epoch"] for row in run.history] == [1, 2, 3]
    image, truth = Squares(1, 5)[0]
    mask = run.segmenter(device="cpu").predict(image.transpose(1, 2, 0))
    assert mask.shape == truth.shape
    with pytest.raises(PixelwiseError, match="your own nn.Module.*Segmenter.load\\(run, model=MyNet\\(\\)\\)"):
        pw.Segmenter.load(run.dir)
    loaded = pw.Segmenter.load(run.dir, model=Net(), device="cpu")
    assert np.array_equal(loaded.predict(image.transpose(1, 2, 0)), mask)
    assert pw.Run(run.dir, model=Net()).evaluate(dataset=Squares(4, 1))["images"] == 4
    with pytest.raises(PixelwiseError, match="evaluate it with run.evaluate\\(dataset=...\\)"):
        pw.Run(run.dir, model=Net()).evaluate()


def test_your_own_dataset_is_checked_before_training(tmp_path):
    class Bad(Squares):
        def __getitem__(self, i):
            image, mask = super().__getitem__(i)
            return image, mask + 5

    with pytest.raises(PixelwiseError, match="outside the 2 classes"):
        pw.train(data=Bad(4, 0), classes=["bg", "fg"], out=tmp_path / "r")

    class LaterBad(Squares):  # item 0 is fine; a later mask would wrap to 44 in uint8, or be left out of metrics
        def __getitem__(self, i):
            image, mask = super().__getitem__(i)
            return image, np.where(mask == 1, 300, mask) if i == 3 else mask

    with pytest.raises(PixelwiseError, match=r"validation dataset\[3\]'s mask holds \[300\], outside the 2 classes"):
        pw.train(data=Squares(4, 0), val_data=LaterBad(4, 1), classes=["bg", "fg"], out=tmp_path / "r2")
    with pytest.raises(PixelwiseError, match=r"training dataset\[3\]'s mask holds \[300\]"):
        pw.train(data=LaterBad(4, 0), classes=["bg", "fg"], out=tmp_path / "r3",
                 **{"train.epochs": 1, "train.batch_size": 2})
    with pytest.raises(PixelwiseError, match="name the classes"):
        pw.train(data=Squares(4, 0), out=tmp_path / "r")


@pytest.mark.parametrize("change, message", [
    (lambda image, mask: (np.concatenate([image, image[:1]]), mask),
     r"dataset\[2\] gives a 4-channel torch.uint8 image; the training dataset's first item is 3-channel"),
    (lambda image, mask: (image.astype(np.float32), mask), r"dataset\[2\] gives a 3-channel torch.float32 image"),
    (lambda image, mask: (image, mask[:-3]), r"dataset\[2\] gives an image of shape \(3, 32, 32\) and a mask of "
                                             r"shape \(29, 32\)"),
    (lambda image, mask: image, r"dataset\[2\] must be a pair"),
])
def test_every_item_of_your_own_dataset_is_checked_not_only_the_first(tmp_path, change, message):
    # a later item unlike the first failed inside torch (torch.stack, a size mismatch in the metrics)
    class LaterOdd(Squares):
        def __getitem__(self, i):
            item = super().__getitem__(i)
            return change(*item) if i == 2 else item

    with pytest.raises(PixelwiseError, match=f"validation {message}"):
        pw.train(data=Squares(4, 0), val_data=LaterOdd(4, 1), model=Net(), classes=["bg", "fg"], out=tmp_path / "v")
    with pytest.raises(PixelwiseError, match=f"training {message}"):
        pw.train(data=LaterOdd(4, 0), model=Net(), classes=["bg", "fg"], out=tmp_path / "t",
                 **{"train.epochs": 1, "train.batch_size": 4})


def test_training_items_of_different_sizes_are_said_in_words(tmp_path):
    class Sizes(Squares):
        def __getitem__(self, i):
            image, mask = super().__getitem__(i)
            return (image[:, :24], mask[:24]) if i == 1 else (image, mask)

    with pytest.raises(PixelwiseError, match=r"batch differ in size \(24x32, 32x32\).*train.batch_size: 1"):
        pw.train(data=Sizes(4, 0), model=Net(), classes=["bg", "fg"], out=tmp_path / "t",
                 **{"train.epochs": 1, "train.batch_size": 4})
    run = pw.train(data=Sizes(4, 0), model=Net(), classes=["bg", "fg"], out=tmp_path / "one",
                   **{"train.epochs": 1, "train.batch_size": 1})  # one item per batch: any sizes
    assert run.summary["epochs"] == 1
    with pytest.raises(PixelwiseError, match="class_weights: auto .* give the weights as a list"):
        pw.train(data=Squares(4, 0), classes=["bg", "fg"], out=tmp_path / "r", loss={"terms": {"ce": 1.0},
                                                                                     "class_weights": "auto"})


@pytest.mark.parametrize("bad, message", [
    (np.full((32, 32), -1, np.int64), r"\[-1\], outside the 2 classes"),  # would wrap to 255, void
    (np.full((32, 32), 2**40 + 1, np.int64), r"\[1099511627777\], outside"),  # would wrap to 1, a real class
    (np.full((32, 32), 256, np.int16), r"\[256\], outside"),  # would wrap to 0
    (np.ones((32, 32), bool), "must hold integer class indices, got torch.bool"),
    (np.full((32, 32), 1.0, np.float32), "must hold integer class indices, got torch.float32"),
])
def test_a_hostile_mask_after_the_first_item_is_refused_naming_it(tmp_path, bad, message):
    class Late(Squares):  # items 0-2 are fine: only the check of every item as it is read finds item 3
        def __getitem__(self, i):
            image, mask = super().__getitem__(i)
            return image, bad if i == 3 else mask

    with pytest.raises(PixelwiseError, match=r"validation dataset\[3\].*" + message):
        pw.train(data=Squares(4, 0), val_data=Late(4, 1), classes=["bg", "fg"], out=tmp_path / "r")
    assert not (tmp_path / "r" / "best.safetensors").exists()  # refused before any training


def test_a_float_dataset_reaches_the_network_unscaled(tmp_path):
    seen = []

    class Spy(Net):
        def forward(self, x):
            seen.append(float(x.max()))
            return super().forward(x)

    class Floats(Squares):
        def __getitem__(self, i):
            image, mask = super().__getitem__(i)
            return torch.from_numpy(image).float() / 1000.0, torch.from_numpy(mask)  # values below 0.25

    pw.train(data=Floats(4, 0), model=Spy(), classes=["bg", "fg"], out=tmp_path / "r",
             **{"train.max_steps": 1, "train.batch_size": 4, "train.amp": "off"})
    assert len(seen) == 2 and 0 < seen[1] < 0.26  # seen[0]: the output-shape check's zero image, before training


def test_segmenter_predicts_lists_and_iterators_and_overlays_files(synthetic_data, tmp_path):
    cfg = load_config(overrides=[*tiny_overrides(synthetic_data), "train.max_steps=1"])
    Trainer(cfg, tmp_path / "run").fit()
    seg = pw.Segmenter.load(tmp_path / "run", device="cpu")
    files = sorted((synthetic_data / "val" / "images").iterdir())
    one = [seg.predict(f) for f in files]
    many = seg.predict([str(f) for f in files], batch_size=3)
    assert isinstance(many, list) and all(np.array_equal(a, b) for a, b in zip(one, many, strict=True))
    lazy = seg.predict(f for f in files)
    assert not isinstance(lazy, list) and all(np.array_equal(a, b) for a, b in zip(one, lazy, strict=True))
    shown = seg.overlay(files[0])
    assert shown.shape == (64, 64, 3) and shown.dtype == np.uint8
    assert np.array_equal(shown, seg.overlay(files[0], one[0]))


@pytest.mark.parametrize("example", ["train_folder.py", "custom_dataset_and_model.py"])
def test_examples_run(example, tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "examples" / example), "--steps", "4"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Run(" in result.stdout


def test_batch_size_one_is_refused_for_architectures_that_need_two(synthetic_data, tmp_path):
    overrides = {k: v for k, v in _tiny(synthetic_data).items() if k != "model.options"}
    with pytest.raises(ConfigError, match="'deeplabv3' needs train.batch_size of at least 2"):
        pw.train(data=synthetic_data, out=tmp_path / "r", **{**overrides, "model.arch": "deeplabv3",
                                                             "train.batch_size": 1, "train.max_steps": 1})


class Downsampling(nn.Module):  # half the resolution: a common mistake with a custom decoder
    def __init__(self, classes: int = 2) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, classes, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x)


class Pair(Net):  # returns (logits, something): a tuple, not a tensor
    def forward(self, x):
        return self.body(x), x


@pytest.mark.parametrize("network, message", [
    (Downsampling(), r"your network returned \(N, 2, 16, 16\) for a \(N, 3, 32, 32\) input; pixelwise needs "
                     r"\(N, 2, 32, 32\) logits, one channel per class"),
    (Downsampling(classes=1), r"returned \(N, 1, 16, 16\)"),
    (Pair(), r"your network returned a tuple for a \(N, 3, 32, 32\) input"),
])
def test_your_own_module_of_the_wrong_output_shape_is_refused_before_training(tmp_path, network, message):
    with pytest.raises(PixelwiseError, match=message):
        pw.train(data=Squares(4, 0), model=network, classes=["bg", "square"], out=tmp_path / "r",
                 **{"train.epochs": 1, "train.batch_size": 2})
    assert network.training  # the check leaves the network's mode as it found it
