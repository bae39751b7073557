"""Contracts of the training engine and the Run: hook order, a stop at an epoch's end, callbacks that fail to
close, a Segmenter independent of your module, the Run's module in export and report, batch-independent
validation loss, step milestones over the whole training."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_overrides
from torch import nn
from torch.utils.data import Dataset

import pixelwise as pw
from pixelwise.config import LossConfig, OptimConfig, load_config
from pixelwise.engine.callbacks import Callback, core_callbacks
from pixelwise.engine.evaluate import evaluate
from pixelwise.engine.runtime import Runtime
from pixelwise.engine.trainer import Trainer
from pixelwise.errors import PixelwiseError
from pixelwise.losses import create_loss
from pixelwise.optim import lr_factor

QUIET = {"train.tensorboard": False, "train.report": False}


def _cfg(data: Path, *extra: str):
    return load_config(overrides=[*tiny_overrides(data), *extra])


class Log(Callback):
    """Records every hook but on_step_end, with the epoch and what it was given."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.rows: list[dict] = []

    def on_train_start(self, state):
        self.calls.append(("train_start", state.epoch))

    def on_epoch_start(self, state):
        self.calls.append(("epoch_start", state.epoch))

    def on_evaluate(self, state, metrics):
        self.calls.append(("evaluate", state.epoch))

    def on_epoch_end(self, state):
        self.calls.append(("epoch_end", state.epoch))
        self.rows.append(dict(state.metrics))

    def on_checkpoint(self, state, paths):
        assert all(Path(p).is_file() for p in paths.values())
        self.calls.append(("checkpoint", state.epoch, tuple(sorted(paths))))

    def on_train_end(self, state):
        self.calls.append(("train_end", state.epoch))


def test_every_callback_sees_epoch_end_before_checkpoint(synthetic_data, tmp_path):
    """The recorder comes after the checkpointer: it still gets each epoch's on_epoch_end first."""
    cfg = _cfg(synthetic_data, "train.epochs=2")
    first, log = Log(), Log()
    Trainer(cfg, tmp_path / "run", callbacks=[first, *core_callbacks(cfg), log]).fit()
    expected = [("train_start", 0)]
    for epoch in (1, 2):
        expected += [("epoch_start", epoch - 1), ("evaluate", epoch), ("epoch_end", epoch), ("checkpoint", epoch)]
    expected.append(("train_end", 2))
    for calls in (first.calls, log.calls):
        assert [c[:2] for c in calls] == expected
        assert calls[4][2] == ("best", "last", "metrics")  # the first evaluation is the best so far


class StopAtEpochEnd(Callback):
    def on_epoch_end(self, state):
        state.stop("enough")


class TimeRunsOutAtEpochEnd(Callback):
    def on_epoch_end(self, state):
        state.trainer.state.elapsed += 7200  # as a slow save would: the 1h budget is spent by the epoch's end


@pytest.mark.parametrize("stopper, reason", [(StopAtEpochEnd, "enough"), (TimeRunsOutAtEpochEnd, "time_budget")])
def test_a_stop_at_an_epoch_end_still_evaluates_and_saves_that_epoch(synthetic_data, tmp_path, stopper, reason):
    cfg = _cfg(synthetic_data, "train.epochs=10", "train.eval_every=2", "train.time_budget=1h")
    log = Log()
    run = tmp_path / "run"
    summary = Trainer(cfg, run, callbacks=[*core_callbacks(cfg), stopper(), log]).fit()
    assert summary["stopped_by"].startswith(reason) and summary["epochs"] == 1
    assert summary["best_miou"] is not None and summary["best_epoch"] == 1
    assert (run / "best.safetensors").is_file()
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert len(rows) == 1 and rows[0]["val_miou"] not in ("", None)
    # the epoch's end ran without a validation; the late one follows, and the epoch ends again with it in its row
    # (what loggers and the progress line read), the files written again
    assert log.calls == [("train_start", 0), ("epoch_start", 0), ("epoch_end", 1),
                         ("checkpoint", 1, ("last", "metrics")), ("evaluate", 1), ("epoch_end", 1),
                         ("checkpoint", 1, ("best", "last", "metrics")), ("train_end", 1)]
    assert log.rows[-1]["val_miou"] == summary["best_miou"]


class FailsToClose(Callback):
    def __init__(self, message: str) -> None:
        self.message = message

    def on_train_end(self, state): ...

    def close(self):
        raise RuntimeError(self.message)


class Closes(Callback):
    closed = False

    def on_train_end(self, state): ...

    def close(self):
        self.closed = True


def test_a_callback_failing_to_close_closes_the_others_and_frees_the_run(synthetic_data, tmp_path):
    run, after = tmp_path / "run", Closes()
    cfg = _cfg(synthetic_data, "train.max_steps=1")
    trainer = Trainer(cfg, run, callbacks=[*core_callbacks(cfg), FailsToClose("first"), FailsToClose("second"),
                                           after])
    with pytest.raises(RuntimeError, match="^first$"):
        trainer.fit()
    assert after.closed  # closed although two callbacks before it failed to
    # the run directory is free again in this process: resuming it is not refused as a live run
    summary = Trainer(_cfg(synthetic_data, "train.max_steps=2"), run, resume=True).fit()
    assert summary["steps"] == 2


class Squares(Dataset):
    """uint8 items of 32x32: a bright square is class 1."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed = n, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        rng = np.random.default_rng([self.seed, i])
        image = rng.integers(0, 80, (3, 32, 32), dtype=np.uint8)
        mask = np.zeros((32, 32), dtype=np.int64)
        y, x = rng.integers(0, 20, 2)
        mask[y:y + 12, x:x + 12] = 1
        image[:, mask == 1] += 150
        return image, mask


class BatchNormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 2, 1))

    def forward(self, x):
        return self.body(x)


def _train_own(tmp_path: Path, net: nn.Module, **extra) -> pw.Run:
    return pw.train(data=Squares(8, 0), val_data=Squares(4, 1), model=net, classes=["bg", "square"],
                    out=tmp_path / "run", **{"train.max_steps": 2, "train.batch_size": 4, **QUIET, **extra})


def test_the_segmenter_and_your_module_share_no_state(tmp_path):
    net = BatchNormNet()
    run = _train_own(tmp_path, net, **{"optim.lr": 0.1})
    before = {k: v.clone() for k, v in net.state_dict().items()}
    seg = run.segmenter(device="cpu")
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items()) and net.training  # left as it was
    assert seg.model.net is not net
    image = Squares(1, 7)[0][0].transpose(1, 2, 0)
    probabilities = seg.probabilities(image)
    with torch.no_grad():  # the caller goes on training its module
        for p in net.parameters():
            p.add_(1.0)
    net.train()
    assert np.array_equal(seg.probabilities(image), probabilities) and not seg.model.training
    other = np.full_like(image, 255)
    assert np.array_equal(seg.predict(image), seg.predict([image, other])[0])  # BatchNorm in eval mode


def test_report_and_export_of_a_run_of_your_own_dataset_and_module(tmp_path):
    run = pw.Run(_train_own(tmp_path, BatchNormNet()).dir, model=BatchNormNet())
    path = run.report(device="cpu", dataset=Squares(4, 1))
    assert path == run.dir / "report.html" and "item 0" in path.read_text()
    with pytest.raises(PixelwiseError, match=r"your own Dataset.*run\.report\(dataset=\.\.\.\)"):
        run.report(device="cpu")
    with pytest.raises(PixelwiseError, match="val split"):
        run.report(split="test", dataset=Squares(4, 1))
    with pytest.raises(PixelwiseError, match=r"your own Dataset.*run\.export\(data=FOLDER\)"):
        run.export(out=tmp_path / "model.onnx")


class SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1))  # 4 synthetic classes

    def forward(self, x):
        return self.body(x)


def _own_module_on_files(synthetic_data: Path, tmp_path: Path) -> pw.Run:
    trained = pw.train(data=str(synthetic_data), model=SmallNet(), out=tmp_path / "run",
                       **{"data.crop_size": 32, "train.batch_size": 4, "train.eval_batch_size": 4,
                          "data.num_workers": 0, "augment.preset": "light", "train.max_steps": 1, **QUIET})
    return pw.Run(trained.dir, model=SmallNet())


def test_evaluate_a_run_of_your_own_module_on_its_data_files(synthetic_data, tmp_path):
    run = _own_module_on_files(synthetic_data, tmp_path)
    result = run.evaluate(split="val", device="cpu")
    assert result["images"] == 4 and result["split"] == "val" and result["run"] == str(run.dir)


def test_export_a_run_of_your_own_module(synthetic_data, tmp_path):
    run = _own_module_on_files(synthetic_data, tmp_path)
    result = run.export(out=tmp_path / "model.onnx")
    assert Path(result["path"]).is_file() and result["argmax_agreement"] >= 0.999


def test_report_a_run_of_your_own_module_on_its_data_files(synthetic_data, tmp_path):
    run = _own_module_on_files(synthetic_data, tmp_path)
    assert run.report(device="cpu").is_file()


class Fixed(nn.Module):
    """Logits from the first channel alone, no BatchNorm: the loss of an image depends on it alone."""

    pad_multiple, min_size = 1, 1

    def forward(self, x):
        x = x.float()
        return torch.cat([x[:, :1] / 50, -x[:, :1] / 50], dim=1)


def test_validation_loss_does_not_depend_on_the_batch_size():
    torch.manual_seed(0)
    shapes = [(8, 8)] * 4 + [(8, 16)]  # the odd size makes a batch of its own
    images = [torch.randint(0, 255, (1, *s), dtype=torch.uint8) for s in shapes]
    masks = [torch.randint(0, 2, s) for s in shapes]

    class Items(Dataset):
        def __len__(self):
            return len(images)

        def __getitem__(self, i):
            return images[i], masks[i]

    criterion = create_loss(LossConfig(terms={"ce": 1.0}), 2)
    runtime = Runtime(torch.device("cpu"), None, False)
    losses = [evaluate(Fixed(), Items(), shapes, ["a", "b"], runtime, batch_size=b, criterion=criterion)["loss"]
              for b in (1, 2, 4)]
    per_image = np.mean([nn.functional.cross_entropy(Fixed()(x[None]), m[None]).item()
                         for x, m in zip(images, masks, strict=True)])
    assert losses == pytest.approx([per_image] * 3, rel=1e-5)


def test_step_milestones_are_fractions_of_the_whole_training():
    c = OptimConfig(scheduler="step", warmup=0.03)  # milestones [1/3, 2/3], gamma 0.1
    assert [lr_factor(p, c) for p in (0.32, 0.34, 0.66, 0.67, 1.0)] == pytest.approx([1, 0.1, 0.1, 0.01, 0.01])
    late = OptimConfig(scheduler="step", warmup=0.2, step_milestones=[0.5], step_gamma=0.5)
    assert [lr_factor(p, late) for p in (0.1, 0.49, 0.5)] == pytest.approx([0.5, 1.0, 0.5])
