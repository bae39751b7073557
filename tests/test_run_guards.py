"""One writer per run directory, weights that turn NaN never saved, and throughput of runs shorter than the warm-up."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from conftest import tiny_overrides
from safetensors.torch import load_file, safe_open

from pixelwise.config import load_config
from pixelwise.engine.callbacks import Callback, RunState
from pixelwise.engine.rundir import LOCK_NAME
from pixelwise.engine.trainer import Trainer
from pixelwise.errors import ConfigError, PixelwiseError

fcntl = pytest.importorskip("fcntl", reason="run-directory locks use fcntl (POSIX); there is none on Windows")


def _cfg(data, *extra):
    return load_config(overrides=[*tiny_overrides(data), *extra])


def test_a_second_writer_is_refused_while_a_run_trains(synthetic_data, tmp_path):
    run = tmp_path / "run"
    first = Trainer(_cfg(synthetic_data, "train.max_steps=1"), run)  # holds the run until its fit() ends
    with pytest.raises(PixelwiseError, match="pixelwise process .* is training into this run directory now"):
        Trainer(_cfg(synthetic_data, "train.max_steps=1"), run, overwrite=True)  # would clear first's files
    assert (run / "config.yaml").is_file()  # the refused writer touched nothing
    first.fit()
    Trainer(_cfg(synthetic_data, "train.max_steps=2"), run, resume=True).fit()  # free again once fit() ended


def test_another_process_holding_the_run_is_named_and_a_killed_one_frees_it(synthetic_data, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); "
         "f.write('pixelwise process 4242 on gpu-box\\n'); f.flush(); print('locked', flush=True); time.sleep(60)",
         str(run / LOCK_NAME)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(PixelwiseError, match="pixelwise process 4242 on gpu-box is training into this run"):
            Trainer(_cfg(synthetic_data, "train.max_steps=1"), run)
    finally:
        holder.kill()  # as kill -9 would: the kernel drops the lock with the process
        holder.wait()
    summary = Trainer(_cfg(synthetic_data, "train.max_steps=1"), run).fit()  # only the lock file was there
    assert summary["steps"] == 1


def test_a_run_refused_before_it_starts_leaves_no_folder(synthetic_data, tmp_path):
    run = tmp_path / "never"
    with pytest.raises(PixelwiseError, match="dataset folder not found"):
        Trainer(_cfg(synthetic_data, f"data.root={tmp_path / 'missing'}"), run)
    assert not run.exists()


class _PoisonInSecondEpoch(Callback):
    """What an overflowing optimizer step does after a finite loss: a weight becomes NaN (here after the second
    epoch's last step, so no loss ever sees it)."""

    def on_step_end(self, state: RunState) -> None:
        t = state.trainer
        if t.state.epoch == 1 and t.epoch_batches == len(t.loader):
            with torch.no_grad():
                next(state.trainer.net.parameters()).fill_(math.nan)


def test_weights_that_turn_nan_are_never_evaluated_or_saved(synthetic_data, tmp_path):
    run = tmp_path / "run"
    from pixelwise.engine.callbacks import core_callbacks

    cfg = _cfg(synthetic_data, "train.epochs=3")
    with pytest.raises(PixelwiseError, match=r"weights became NaN/Inf during epoch 2 \(1 tensor.*although the loss "
                                             r"was finite.*last good checkpoint is .*last.ckpt \(epoch 1\)"):
        Trainer(cfg, run, callbacks=[*core_callbacks(cfg), _PoisonInSecondEpoch()]).fit()
    best = load_file(str(run / "best.safetensors"))
    assert all(torch.isfinite(t).all() for t in best.values())
    with safe_open(str(run / "best.safetensors"), "pt") as f:
        assert f.metadata()["epoch"] == "1"  # the first epoch's weights, not the poisoned second's
    assert len((run / "metrics.csv").read_text().splitlines()) == 2  # header and epoch 1 only


def test_a_learning_rate_that_is_not_a_number_is_a_config_error(synthetic_data):
    for value in ("inf", "nan"):
        with pytest.raises(ConfigError, match="optim.lr"):
            _cfg(synthetic_data, f"optim.lr={value}")


def test_a_run_shorter_than_the_warm_up_still_reports_its_throughput(synthetic_data, tmp_path):
    summary = Trainer(_cfg(synthetic_data, "train.max_steps=1"), tmp_path / "run").fit()
    assert summary["train_images_per_second"] > 0  # was 0.0: both steps of the warm-up are excluded
