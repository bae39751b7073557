"""Data-parallel training with torchrun: 2 CPU processes, gloo backend, a tiny dataset."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_overrides

from pixelwise.config import load_config
from pixelwise.engine.rundir import LOCK_NAME
from pixelwise.engine.trainer import Trainer

WORKER = Path(__file__).with_name("ddp_worker.py")


def _torchrun(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={
        **__import__("os").environ, "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def ddp_run(synthetic_data, tmp_path_factory):
    base = tmp_path_factory.mktemp("ddp")
    run, out = base / "run", base / "out"
    out.mkdir()
    overrides = [*tiny_overrides(synthetic_data), "train.device=cpu",  # gloo, also on a machine with a GPU
                 "train.batch_size=2", "train.epochs=2", "train.accumulate=2"]
    result = _torchrun(str(WORKER), str(run), str(out), *overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    return run, ranks, overrides


def test_ranks_hold_identical_weights_after_every_step(ddp_run):
    _, (r0, r1), _ = ddp_run
    assert r0["world"] == r1["world"] == 2
    # 12 training images, 6 per rank, batches of 2: 3 per epoch; accumulate 2 -> 2 updates per epoch
    assert r0["train_batches_per_epoch"] == 3 and len(r0["hashes"]) == 4
    assert r0["hashes"] == r1["hashes"]
    assert len(set(r0["hashes"])) == 4, "every update changed the weights"


def test_evaluation_across_ranks_equals_one_process(ddp_run):
    _, (r0, r1), _ = ddp_run
    for r in (r0, r1):
        assert r["shared"]["confusion_matrix"] == r0["alone"]["confusion_matrix"]
        assert r["shared"]["miou"] == r0["alone"]["miou"]
        assert r["shared"]["images"] == 4
    assert r0["summary"]["best_miou"] == r1["summary"]["best_miou"]


def test_only_rank_zero_writes_files(ddp_run):
    run, (r0, r1), _ = ddp_run
    assert r1["written"] == []
    names = {Path(p).name for p in r0["written"]}
    assert {"config.yaml", "last.ckpt", "metrics.csv", "summary.json", "best.safetensors"} <= names
    assert {p.name for p in run.iterdir()} - {LOCK_NAME} == {"config.yaml", "last.ckpt", "metrics.csv", "summary.json",
                                               "best.safetensors", "dataset.json", "tensorboard", "report.html",
                                               "eval_val.json", "plots"}


def test_resume_with_a_different_number_of_processes(ddp_run, synthetic_data, tmp_path):
    run, _, overrides = ddp_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    summary = Trainer(load_config(overrides=[*overrides, "train.epochs=3"]), copy, resume=True).fit()
    assert summary["epochs"] == 3  # resumed in one process after two epochs on two


def test_errors_are_shown_once(synthetic_data, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "something.txt").write_text("an earlier run")
    sets = [a for s in [*tiny_overrides(synthetic_data), "train.device=cpu"] for a in ("--set", s)]
    result = _torchrun("-m", "pixelwise", "train", *sets, "--out", str(run))
    assert result.returncode != 0
    assert " ".join(result.stderr.split()).count("the run directory already holds a run") == 1, result.stderr[-3000:]


def test_more_processes_than_gpus_is_one_clear_message(monkeypatch):
    import torch

    from pixelwise.engine import distributed
    from pixelwise.errors import PixelwiseError

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    with pytest.raises(PixelwiseError, match=r"process 1 on this machine, which has 1 GPU.*--nproc_per_node 1"):
        distributed.init_distributed("auto")


def test_an_error_of_another_rank_alone_is_printed_after_the_wait(monkeypatch, capsys):
    """Rank 0 prints the one message of an error all ranks share; torchrun stops the others while they wait. An
    error that only rank 1 meets (rank 0 carries on) is still printed, naming the rank."""
    from pixelwise import cli
    from pixelwise.errors import PixelwiseError

    def fails() -> None:
        raise PixelwiseError("shard 3 is unreadable")

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(cli, "RANK_ERROR_WAIT_S", 0.0)
    monkeypatch.setattr(cli, "app", fails)
    with pytest.raises(SystemExit) as stop:
        cli.main()
    assert stop.value.code == 1
    assert "(rank 1) shard 3 is unreadable" in " ".join(capsys.readouterr().err.split())
