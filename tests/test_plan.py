"""Automatic configuration: each rule on hand-made fingerprints, the YAML round trip, and plan / train --auto."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import shared_or_skip

from pixelwise.config import load_config
from pixelwise.data.fingerprint import Fingerprint
from pixelwise.engine.progressive import progressive_gain
from pixelwise.plan import (
    Machine,
    make_plan,
    rule_augment,
    rule_crop,
    rule_data,
    rule_loss,
    rule_progressive,
    rule_schedule,
)

CPU = Machine("cpu", 2, 24.0, True)
GPU = Machine("cuda", 16, 128.0, True, "H100", 80.0)


def fingerprint(channels=3, size=(360, 480), layout=0.6, classes=11, train=367, val=101, binary_share=None,
                imbalance=40.0):
    fp = {"root": "/data/set", "format": "folders", "splits": {"train": train, "val": val},
          "pairs_readable": train + val, "channels": channels,
          "image_size": {"height": {"median": size[0]}, "width": {"median": size[1]}},
          "vertical_layout": layout, "imbalance": imbalance,
          "classes": [{"name": f"c{k}", "pixel_share": 1 / classes, "mean_row": k / classes} for k in range(classes)]}
    if binary_share is not None:  # an inferred binary table: value 0 -> class 0, 255 -> class 1
        fp["classes"] = [{"name": "value_0", "pixel_share": 1 - binary_share, "mean_row": 0.5},
                         {"name": "value_255", "pixel_share": binary_share, "mean_row": 0.5}]
        fp["class_table"] = {"names": ["value_0", "value_255"], "mapping": {0: 0, 255: 1}}
    return Fingerprint.model_validate(fp)  # what `pixelwise check` gives, typed


def test_crops_follow_the_median_image_and_the_device():
    assert rule_crop(fingerprint(size=(360, 480)), CPU).value == [320, 320]
    assert rule_crop(fingerprint(size=(360, 480)), GPU).value == [352, 480]
    assert rule_crop(fingerprint(size=(100, 90)), CPU).value == [96, 64]  # multiples of 32 within the image


def test_augmentation_follows_the_vertical_layout_and_channels():
    street = rule_augment(fingerprint(layout=0.66))
    micro = rule_augment(fingerprint(channels=1, layout=0.0))
    assert street.value == "default" and "c0 above c10" in street.reason
    assert micro.value == "strong" and "no colour jitter" in micro.reason


def test_binary_masks_make_the_rarer_value_the_foreground():
    swapped = {d.key: d.value for d in rule_data(fingerprint(classes=2, binary_share=0.78))}
    assert swapped["data.classes"] == {"names": ["value_255", "value_0"], "mapping": {255: 0, 0: 1}}
    kept = {d.key: d.value for d in rule_data(fingerprint(classes=2, binary_share=0.3))}
    assert "data.classes" not in kept  # already the rarer value as class 1: the inferred table stands
    assert rule_loss(fingerprint(classes=2, binary_share=0.3, imbalance=2.3)).value == {"ce": 1.0, "dice": 1.0}
    rare = rule_loss(fingerprint(classes=2, binary_share=0.03, imbalance=32.0))
    assert rare.value["class_weights"] == "auto" and "32x imbalanced" in rare.reason
    assert rule_loss(fingerprint(classes=11)).value == {"dice": 1.0}
    one = fingerprint(classes=2, imbalance=1.0)  # masks holding one class only: not "1.0x imbalance"
    one.classes[1].pixels, one.classes[0].pixels = 0, 4096
    assert "no pixel of c1 in any mask" in rule_loss(one).reason and "1.0x" not in rule_loss(one).reason


def test_epochs_and_evaluation_fit_the_budget():
    decisions = {d.key: d.value for d in rule_schedule(fingerprint(), 600, 4.0, [320, 320], 8)}
    assert decisions["train.time_budget"] == "10m"
    assert decisions["train.epochs"] == 7  # 600 s x 4 img/s = 2400 images = 6.5 epochs of 367
    assert decisions["train.eval_every"] == 2  # 101 whole frames ~ 42 s of forward passes against 92 s epochs


def test_short_cpu_budgets_train_on_progressive_crops_and_plan_their_extra_steps():
    decisions, gain = rule_progressive(CPU, 263, [320, 320])
    assert {d.key: d.value for d in decisions} == {"data.crop_start": 0.5, "data.crop_ramp": 0.5}
    assert gain == progressive_gain([320, 320], 0.5, 0.5)  # what the schedule below is planned with
    assert f"give {gain[0]:.2g}x the steps" in decisions[0].reason
    assert rule_progressive(CPU, 5000, [320, 320]) == ([], (1.0, 1.0))  # many steps: full crops
    assert rule_progressive(GPU, 263, [320, 320]) == ([], (1.0, 1.0))  # not measured on a GPU
    # without the sides' 32-pixel steps the gain would be ramp / start + 1 - ramp = 1.5; rounded down, a little more
    assert 1.5 < gain[0] < 1.75 and gain[1] == 4.0  # 160x160 crops at first
    assert progressive_gain([320, 320], 1.0, 0.5) == (1.0, 1.0)
    faster = {d.key: d for d in rule_schedule(fingerprint(), 600, 4.0, [320, 320], 8, gain=gain)}
    # epochs at the smallest crops' pace: the step count never leads the clock, so the time budget drives the
    # schedules, as in the measurement; the reason says how many are expected
    assert faster["train.epochs"].value == math.ceil(600 * 4.0 * 4.0 / 367) == 27
    assert f"about {math.ceil(600 * 4.0 * gain[0] / 367)} epochs" in faster["train.epochs"].reason
    plan = {d.key: d.value for d in make_plan(fingerprint(), "10m", CPU, measure=False).decisions}
    assert plan["data.crop_start"] == 0.5 and plan["train.epochs"] == 27
    on_gpu = {d.key for d in make_plan(fingerprint(), "10m", GPU, measure=False).decisions}
    assert "data.crop_start" not in on_gpu


@pytest.mark.parametrize("pretrained", [True, False])
def test_plan_yaml_has_a_reason_per_choice_and_loads_as_a_config(tmp_path, pretrained):
    fp = fingerprint(channels=1, size=(512, 512), layout=0.0, classes=2, train=30, val=0, binary_share=0.78,
                     imbalance=3.6)
    fp.validation = "held out"
    plan = make_plan(fp, "10m", CPU, measure=False, pretrained=pretrained)
    text = plan.to_yaml()
    leaves = [line for line in text.splitlines() if not line.startswith("#") and not line.endswith(":")]
    assert leaves and all("  # " in line for line in leaves), text
    (tmp_path / "plan.yaml").write_text(text)
    cfg = load_config(tmp_path / "plan.yaml")
    assert cfg.augment.preset == "strong" and cfg.train.batch_size == 4 and cfg.train.time_budget == "10m"
    assert cfg.model.encoder == ("tu-tf_efficientnet_lite0" if pretrained else "resnet18")
    assert cfg.data.classes.mapping == {255: 0, 0: 1}
    assert yaml.safe_load(text)["loss"] == {"ce": 1.0, "dice": 1.0}


def test_plan_command_measures_and_train_auto_runs_it(synthetic_data, tmp_path):
    from typer.testing import CliRunner

    from pixelwise.cli import app

    out = tmp_path / "plan.yaml"
    result = CliRunner().invoke(app, ["plan", str(synthetic_data), "--budget", "2m", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "train img/s" in out.read_text() and load_config(out).data.crop_size == (64, 64)
    again = CliRunner().invoke(app, ["plan", str(synthetic_data), "--out", str(out), "--no-measure"])
    assert again.exit_code != 0 and "exists" in str(again.exception)  # never overwrites
    run = tmp_path / "run"
    trained = CliRunner().invoke(app, ["train", "--data", str(synthetic_data), "--auto", "--time-budget", "20s",
                                       "--out", str(run), "--no-report", "--no-tensorboard",
                                       "--set", "train.max_steps=3", "--set", "data.num_workers=0"])
    assert trained.exit_code == 0, trained.output
    assert (run / "plan.yaml").is_file() and (run / "best.safetensors").is_file()
    assert json.loads((run / "summary.json").read_text())["steps"] == 3
    assert load_config(run / "config.yaml").train.time_budget == "20s"


def test_plan_file_elsewhere_reads_the_dataset_typed_relative_to_the_shell(synthetic_data, tmp_path, monkeypatch):
    """`plan data --out configs/x.yaml` then `train configs/x.yaml`: a config file's relative paths are read from
    its own folder, so the plan writes data.root as seen from there, not as typed."""
    from typer.testing import CliRunner

    from pixelwise.cli import app

    monkeypatch.chdir(synthetic_data.parent)
    out = tmp_path / "configs" / "plan.yaml"
    out.parent.mkdir()
    result = CliRunner().invoke(app, ["plan", synthetic_data.name, "--out", str(out), "--no-measure"])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(out.read_text())["data"]["root"] == os.path.relpath(synthetic_data, out.parent)
    monkeypatch.chdir(tmp_path)  # from any working folder
    assert load_config(out).data.root.resolve() == synthetic_data.resolve()
    assert f"root: {synthetic_data.name}  #" in result.stdout  # what is printed stays as typed


def test_plan_file_keeps_a_folder_name_with_brackets_spaces_and_dots(synthetic_data, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from pixelwise.cli import app

    odd = tmp_path / "set [v2] #1 :x"
    shutil.copytree(synthetic_data, odd)
    (tmp_path / "a" / "b").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "a")
    out = tmp_path / "a" / "b" / "plan.yaml"
    result = CliRunner().invoke(app, ["plan", f"b/../../{odd.name}", "--out", "b/plan.yaml", "--no-measure"])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(out.read_text())["data"]["root"] == f"../../{odd.name}"
    monkeypatch.chdir(synthetic_data)
    assert load_config(out).data.root == odd.resolve()


@pytest.mark.slow
def test_plans_for_the_real_datasets():
    from pixelwise.config import DataConfig
    from pixelwise.data.fingerprint import fingerprint as scan

    for name, preset in (("membrane", "strong"), ("camvid", "default")):
        fp = scan(DataConfig(root=shared_or_skip(name))).fingerprint
        plan = make_plan(fp, "10m", CPU, measure=False)
        assert plan.config().augment.preset == preset
        assert Path(plan.config().data.root).name == name


def test_train_auto_shows_the_plan_as_written(tmp_path):
    # an inferred binary table is swapped: the plan says names: [value_255, value_0], which rich would take as markup
    import numpy as np
    from conftest import write_pair
    from typer.testing import CliRunner

    from pixelwise.cli import app

    rng = np.random.default_rng(0)
    for i in range(6):
        mask = np.full((64, 64), 255, np.uint8)
        mask[rng.integers(0, 64, 300), rng.integers(0, 64, 300)] = 0
        write_pair(tmp_path / "data", f"s{i}", rng.integers(0, 255, (64, 64), dtype=np.uint8), mask)
    result = CliRunner().invoke(app, ["train", "--data", str(tmp_path / "data"), "--auto", "--time-budget", "20s",
                                      "--out", str(tmp_path / "run"), "--no-report", "--no-tensorboard",
                                      "--set", "train.max_steps=1", "--set", "data.num_workers=0"])
    assert result.exit_code == 0, result.output
    assert "names: [value_255, value_0]}" in result.output.replace("\n", "")
    assert (tmp_path / "run" / "plan.yaml").read_text() in result.output  # an absolute data.root holds anywhere
    assert load_config(tmp_path / "run" / "plan.yaml").data.root == (tmp_path / "data").resolve()


@pytest.mark.parametrize("budget,match", [("10x", r"^--time-budget: '10x' is not a duration"),
                                          ("0s", r"^--time-budget 0s: give a time above zero"),
                                          ("-5", r"^--time-budget: '-5' is not a duration")])
def test_a_bad_budget_is_one_error_naming_the_option(budget, match):
    from pixelwise.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        make_plan(fingerprint(), budget, CPU, measure=False, pretrained=False)


@pytest.mark.parametrize("budget,written,seconds", [("1000000s", "1000000s", 1e6), ("2.5s", "2.5s", 2.5),
                                                    ("0.75m", "45s", 45), ("1000000m", "1000000m", 6e7),
                                                    ("90.25s", "90.25s", 90.25), ("1.5h", "90m", 5400)])
def test_the_planned_budget_reads_back_for_large_and_fractional_budgets(tmp_path, budget, written, seconds):
    plan = make_plan(fingerprint(), budget, CPU, measure=False, pretrained=False)
    assert plan.config().train.time_budget == written
    (tmp_path / "plan.yaml").write_text(plan.to_yaml())
    assert load_config(tmp_path / "plan.yaml").train.time_budget_seconds == seconds


def test_a_plan_without_measuring_says_its_speed_is_assumed():
    from pixelwise.plan import _budget_text

    assumed = make_plan(fingerprint(), "10m", CPU, measure=False, pretrained=False).to_yaml()
    assert "assumed (not measured) 4.0 training images/s" in assumed and "measured 4.0" not in assumed
    measured = {d.key: d for d in rule_schedule(fingerprint(), 600, 4.0, [320, 320], 8)}
    assert measured["train.epochs"].reason.startswith("measured 4.0 training images/s")
    assert [_budget_text(s) for s in (600, 90, 1e6, 2.5)] == ["10m", "90s", "1000000s", "2.5s"]


def test_plan_out_replaces_a_file_only_with_overwrite(synthetic_data, tmp_path):
    from typer.testing import CliRunner

    from pixelwise.cli import app

    out = tmp_path / "plan.yaml"
    out.write_text("mine\n")
    args = ["plan", str(synthetic_data), "--no-measure", "--device", "cpu", "--out", str(out)]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code != 0 and "pass --overwrite to replace it" in str(refused.exception)
    assert out.read_text() == "mine\n"
    replaced = CliRunner().invoke(app, [*args, "--overwrite", "--time-budget", "1000000s"])
    assert replaced.exit_code == 0, replaced.output
    assert load_config(out).train.time_budget_seconds == 1e6
    bad = CliRunner().invoke(app, [*args, "--overwrite", "--time-budget", "10x"])
    assert bad.exit_code != 0 and "--time-budget: '10x' is not a duration" in str(bad.exception)
    assert load_config(out).train.time_budget_seconds == 1e6  # a refused plan leaves the file as it was
