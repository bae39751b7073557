import csv
import json

import pytest
import torch
from conftest import tiny_overrides
from safetensors.torch import load_file

from pixelwise.config import load_config
from pixelwise.engine.checkpoint import load_state
from pixelwise.engine.rundir import start_run_dir
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
    # deterministic: a no-op on a CPU; on a GPU it is what makes the weights repeat bit for bit
    same = ("train.max_steps=3", "augment.preset=default", "train.deterministic=true")
    a = Trainer(_cfg(synthetic_data, *same), tmp_path / "a").fit()
    b = Trainer(_cfg(synthetic_data, *same), tmp_path / "b").fit()
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


def _count_steps(trainer: Trainer) -> list[int]:
    calls = []
    step = trainer.optimizer.step

    def counting(*args, **kwargs):
        calls.append(trainer.state.step)
        return step(*args, **kwargs)

    trainer.optimizer.step = counting
    return calls


def test_full_batch_gd_steps_once_per_epoch(synthetic_data, tmp_path):
    trainer = Trainer(_cfg(synthetic_data, "optim.name=gd", "optim.lr=0.1", "train.epochs=2"), tmp_path / "gd")
    calls = _count_steps(trainer)
    summary = trainer.fit()
    assert summary["steps"] == 6  # 3 batches per epoch, all accumulated into one update
    assert calls == [2, 5]  # batches completed before each update: after the 3rd and the 6th


def test_gradient_accumulation_and_short_groups(synthetic_data, tmp_path):
    trainer = Trainer(_cfg(synthetic_data, "train.accumulate=2", "train.epochs=2"), tmp_path / "acc")
    calls = _count_steps(trainer)
    trainer.fit()
    # Batches completed before each update: 2nd batch; the 3rd is a group of one, stepped at the epoch's end.
    assert calls == [1, 3, 4, 6]


def test_accumulated_gradient_is_the_mean_of_the_batches(synthetic_data, tmp_path):
    # With a frozen-statistics model (eval mode) the accumulated gradient of k batches equals the mean of the
    # per-batch gradients; a short group is rescaled to a mean too.
    trainer = Trainer(_cfg(synthetic_data, "train.accumulate=4", "train.max_steps=3", "augment.preset=none",
                           "optim.name=sgd", "optim.momentum=0.0", "optim.weight_decay=0.0", "optim.lr=1.0",
                           "optim.warmup=0.0", "optim.scheduler=constant"), tmp_path / "mean")
    trainer.model.eval()
    trainer.model.train = lambda mode=True: trainer.model  # keep BatchNorm statistics frozen
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.sampler.set_epoch(0)
    grads = []
    for images, masks in list(trainer.loader)[:3]:
        trainer.model.zero_grad()
        device = trainer.runtime.device  # the loader yields CPU tensors; the loop moves them
        images, masks = images.to(device).contiguous(memory_format=torch.channels_last), masks.to(device)
        with trainer.runtime.autocast():
            logits = trainer.model(images)
        trainer.criterion(logits, masks).backward()
        grads.append({n: p.grad.clone() for n, p in trainer.model.named_parameters()})
    trainer.model.zero_grad(set_to_none=True)
    trainer.fit()  # 3 batches, one short group of 3 (< 4): one SGD step with lr 1 on the mean gradient
    for name, p in trainer.model.named_parameters():
        mean = sum(g[name] for g in grads) / 3
        assert torch.allclose(before[name] - mean, p.detach(), atol=1e-4), name


def test_ema_weights_are_evaluated_saved_and_resumed(synthetic_data, tmp_path):
    run = tmp_path / "ema"
    trainer = Trainer(_cfg(synthetic_data, "train.ema=0.9", "train.max_steps=3"), run)
    trainer.fit()
    saved = load_file(str(run / "best.safetensors"))
    ema_state = trainer.ema.module.state_dict()
    assert all(torch.equal(saved[k], ema_state[k].cpu()) for k in saved)
    raw = trainer.model.state_dict()
    assert any(not torch.equal(saved[k], raw[k].cpu()) for k in saved if raw[k].is_floating_point())
    assert load_state(run / "last.ckpt")["ema"]["updates"] == 3
    resumed = Trainer(_cfg(synthetic_data, "train.ema=0.9", "train.max_steps=6"), run, resume=True)
    assert resumed.ema.updates == 3
    resumed.fit()
    assert resumed.ema.updates == 6


def test_auto_class_weights_are_resolved_into_the_run_config(synthetic_data, tmp_path):
    run = tmp_path / "weighted"
    Trainer(_cfg(synthetic_data, "loss={terms: {ce: 1.0, lovasz: 1.0}, class_weights: auto}", "train.max_steps=1"),
            run).fit()
    weights = load_config(run / "config.yaml").loss.class_weights
    assert isinstance(weights, list) and len(weights) == 4
    assert weights[0] == min(weights)  # background is the most frequent class: the smallest weight


def test_cuda_determinism_settings_trade_speed_for_repeatable_runs():
    from pixelwise.engine.setup import set_cuda_determinism

    cudnn = torch.backends.cudnn
    try:
        set_cuda_determinism(deterministic=False, benchmark=True)  # the default on a GPU: fastest kernels
        assert cudnn.benchmark and not cudnn.deterministic and not torch.are_deterministic_algorithms_enabled()
        set_cuda_determinism(deterministic=True, benchmark=True)  # deterministic wins over benchmark
        assert not cudnn.benchmark and cudnn.deterministic and torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()  # ops without such a kernel warn, not fail
    finally:
        set_cuda_determinism(deterministic=False, benchmark=False)


class _Counting(torch.nn.Module):
    """Stands in for torch.compile's wrapper: calls the network and counts the calls."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net, self.calls = net, 0

    def forward(self, x):
        self.calls += 1
        return self.net(x)


@pytest.mark.parametrize("value, mode", [("true", None), ("reduce-overhead", "reduce-overhead")])
def test_compile_trains_through_the_compiled_module_with_its_mode(synthetic_data, tmp_path, monkeypatch, value, mode):
    compiled = []

    def fake_compile(module, **kwargs):
        compiled.append((_Counting(module), kwargs))
        return compiled[-1][0]

    monkeypatch.setattr(torch, "compile", fake_compile)
    trainer = Trainer(_cfg(synthetic_data, "train.max_steps=3", f"train.compile={value}"), tmp_path / "run")
    trainer.fit()
    (wrapper, kwargs), = compiled
    assert kwargs == {"mode": mode} and wrapper.calls == 3  # every training step; evaluation uses the bare network
    assert load_config(tmp_path / "run" / "config.yaml").train.compile == (True if value == "true" else value)


def test_compile_mode_must_be_one_torch_knows():
    with pytest.raises(PixelwiseError, match="train.compile"):
        load_config(overrides=["train.compile=fastest"])


def test_overwrite_removes_every_file_of_the_previous_run_and_keeps_the_users(synthetic_data, tmp_path, capsys):
    import shutil

    import numpy as np

    from pixelwise.config import load_run_config
    from pixelwise.engine.checkpoint import load_run_network
    from pixelwise.engine.runtime import resolve_runtime
    from pixelwise.inference.calibration import write_calibration
    from pixelwise.inference.predictor import Segmenter
    from pixelwise.inference.torch_backend import TorchBackend

    run = tmp_path / "run"
    Trainer(_cfg(synthetic_data, "train.max_steps=1"), run).fit()
    # The old run grew what later commands write: a temperature, a cross-validation's folds, eval, report, exports.
    shutil.copytree(run, tmp_path / "fold")
    for fold in ("fold_0", "fold_1"):
        shutil.copytree(tmp_path / "fold", run / fold)
    (run / "folds.json").write_text(json.dumps({"folds": 2, "runs": ["fold_0", "fold_1"], "split_seed": 0}))
    write_calibration(run, {"temperature": 7.5})
    for name in ("eval_val.json", "eval_test.json", "report_test.html", "cv_summary.json", "model.onnx",
                 "plots/curves.png", "tensorboard/events.out", "mlflow.json"):
        (run / name).parent.mkdir(exist_ok=True)
        (run / name).write_text("{}")
    (run / "notes.txt").write_text("mine")  # the user's: kept, as is predict's output
    (run / "predictions").mkdir()
    (run / "predictions" / "a.png").write_bytes(b"png")
    capsys.readouterr()
    Trainer(_cfg(synthetic_data, "train.max_steps=2", "train.seed=3"), run, overwrite=True).fit()
    assert sorted(p.name for p in run.iterdir()) == sorted([
        ".pixelwise.lock", "best.safetensors", "config.yaml", "dataset.json", "last.ckpt", "metrics.csv",
        "summary.json", "notes.txt", "predictions"])
    assert (run / "notes.txt").read_text() == "mine" and (run / "predictions" / "a.png").read_bytes() == b"png"
    assert "notes.txt, predictions/" in capsys.readouterr().err  # named, as they may describe the old model
    seg = Segmenter.load(run, device="cpu", amp="off")  # the new model: no old temperature, no old ensemble
    own = TorchBackend(load_run_network(run, load_run_config(run)), resolve_runtime("cpu", "off"))
    batch = np.random.default_rng(0).integers(0, 255, (1, 3, 48, 40), dtype=np.uint8)
    assert seg.temperature == 1.0 and np.array_equal(seg.backend(batch), own(batch))

    mine = tmp_path / "project"  # not a run: its config.yaml and plots/ are the user's, and nothing is removed
    (mine / "plots").mkdir(parents=True)
    (mine / "config.yaml").write_text("mine: true\n")
    (mine / "plots" / "figure.png").write_bytes(b"png")
    start_run_dir(mine)
    assert (mine / "config.yaml").read_text() == "mine: true\n" and (mine / "plots" / "figure.png").is_file()


def test_resume_trains_with_the_optimizer_settings_its_config_now_has(synthetic_data, tmp_path, capsys):
    run = tmp_path / "run"
    Trainer(_cfg(synthetic_data, "train.max_steps=1", "optim.weight_decay=0.0001", "optim.encoder_lr_mult=0.1"),
            run).fit()
    saved = load_state(run / "last.ckpt")["optimizer"]
    resumed = Trainer(_cfg(synthetic_data, "train.max_steps=2", "optim.weight_decay=0.5", "optim.encoder_lr_mult=0.5",
                           "optim.options={betas: [0.5, 0.6]}"), run, resume=True)
    assert "weight_decay" in capsys.readouterr().err
    groups = resumed.optimizer.param_groups  # (encoder, decayed): no, no / no, yes / yes, no / yes, yes
    assert [g["weight_decay"] for g in groups] == [0.0, 0.5, 0.0, 0.5]
    assert [g["lr_scale"] for g in groups] == [1.0, 1.0, 0.5, 0.5]
    assert all(tuple(g["betas"]) == (0.5, 0.6) for g in groups)
    state = resumed.optimizer.state_dict()["state"]  # the moments and step counts still come from the checkpoint
    assert state.keys() == saved["state"].keys()
    assert all(torch.equal(state[k]["exp_avg"], saved["state"][k]["exp_avg"]) for k in state)
    assert all(float(state[k]["step"]) == 1 for k in state)
    resumed.fit()
    groups = resumed.optimizer.param_groups
    assert groups[1]["weight_decay"] == 0.5 and groups[3]["lr"] == pytest.approx(groups[1]["lr"] * 0.5)
    assert all(float(s["step"]) == 2 for s in resumed.optimizer.state_dict()["state"].values())


def test_time_in_epoch_end_callbacks_counts_against_the_time_budget(synthetic_data, tmp_path):
    import time

    from pixelwise.engine.callbacks import Callback, core_callbacks

    class SlowSave(Callback):  # as writing a large checkpoint to a slow disk would be
        def on_epoch_end(self, state):
            time.sleep(0.3)

    cfg = _cfg(synthetic_data, "train.epochs=50", "train.time_budget=0.2s")
    summary = Trainer(cfg, tmp_path / "run", callbacks=[*core_callbacks(cfg), SlowSave()]).fit()
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    assert summary["stopped_by"].startswith("time_budget") and summary["epochs"] == 1
    assert summary["wall_seconds"] >= float(rows[-1]["elapsed_seconds"]) + 0.29  # the epoch's end is counted


def test_a_run_that_evaluated_nothing_has_no_best_miou(synthetic_data, tmp_path):
    """Stopped between evaluations before the first one (killed after epoch 1 of eval_every 2), then resumed at its
    budget: the summary says null, not a made-up 0.0, and a cross-validation summary leaves it out."""
    from pixelwise.engine.callbacks import Callback, Checkpointer
    from pixelwise.kfold import fold_metrics, summarise

    class Killed(Callback):
        def on_epoch_end(self, state):
            raise KeyboardInterrupt

    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        Trainer(_cfg(synthetic_data, "train.epochs=3", "train.eval_every=2"), run,
                callbacks=[Checkpointer(), Killed()]).fit()
    assert not (run / "best.safetensors").exists()  # nothing was evaluated
    summary = Trainer(_cfg(synthetic_data, "train.epochs=1", "train.eval_every=2"), run, resume=True).fit()
    assert summary["epochs"] == 1 and summary["best_miou"] is None
    assert json.loads((run / "summary.json").read_text())["best_miou"] is None
    assert fold_metrics(run) == {"miou": None}
    assert summarise([fold_metrics(run), {"miou": 0.5}])["miou"] == {"mean": 0.5, "std": 0.0, "folds": 1}


def test_validation_masks_without_a_labelled_pixel_give_no_miou_not_zero(tmp_path, capsys):
    """All-void validation masks: mIoU is undefined. It is recorded as empty, the summary says null (not 0.0), and
    the latest weights are kept as best, with a warning saying why."""
    import numpy as np
    from conftest import write_pair

    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("val", 2)):
        for i in range(n):
            image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            labelled = (rng.random((32, 32)) > 0.5).astype(np.uint8)
            mask = labelled if split == "train" else np.full((32, 32), 255, np.uint8)
            write_pair(tmp_path / "data" / split, f"{split}{i}", image, mask)
    (tmp_path / "data" / "classes.yaml").write_text("names: [background, thing]\nignore_index: 255\n")
    run = tmp_path / "run"
    summary = Trainer(_cfg(tmp_path / "data", "train.epochs=2"), run).fit()
    assert summary["best_miou"] is None and (run / "best.safetensors").is_file()
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [r["val_miou"] for r in rows] == ["", ""] and all(r["val_loss"] for r in rows)
    out = capsys.readouterr().err
    assert out.count("hold no labelled pixel") == 1 and "no validation mIoU" in out
