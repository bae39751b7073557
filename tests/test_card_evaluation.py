"""The model card's evaluation and network: eval_val.json is matched to the weights by their content (a run copied
without its modification times keeps it), a calibration keeps its mask figures and drops only its probability
ones, and a network is described as it is (no encoder for seed_cnn, the default palette's colours)."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import yaml

from pixelwise.data.classes import default_palette
from pixelwise.inference.calibration import read_temperature
from pixelwise.report.build import FINGERPRINT, current_evaluation, model_fingerprint, report_run
from pixelwise.share.card import model_card

LIGHT = {"trust": ("entropy",), "explain_worst": False}  # the report's evaluation, without Grad-CAM


@pytest.fixture(scope="module")
def evaluated_run(served_run, tmp_path_factory):
    """The served run with its report's eval_val.json (per-class metrics, trust figures, fingerprint)."""
    run = tmp_path_factory.mktemp("card") / "run"
    shutil.copytree(served_run, run)
    report_run(run, **LIGHT)
    return run


def _calibrate(run, *options):
    """`pixelwise calibrate RUN`, as a user runs it before pushing."""
    from typer.testing import CliRunner

    from pixelwise.cli import app

    result = CliRunner().invoke(app, ["calibrate", str(run), "--device", "cpu", *options])
    assert result.exit_code == 0, result.output


def _class_row(card, name):
    return next(line for line in card.splitlines() if line.startswith(f"| {name} |")).split(" | ")


def test_a_calibrated_run_keeps_its_mask_metrics_and_drops_only_its_probability_figures(evaluated_run, tmp_path):
    # calibration.json was part of the fingerprint: after `pixelwise calibrate` (the recommended step before a
    # push) the card lost its per-class metrics and pixel accuracy, though a temperature never changes a mask.
    run = tmp_path / "run"
    shutil.copytree(evaluated_run, run)
    before = json.loads((run / "eval_val.json").read_text())
    assert before["trust"]["temperature"] == 1.0
    _calibrate(run)
    temperature = read_temperature(run)
    now = current_evaluation(run, "val")
    assert now is not None and "trust" not in now  # ECE and uncertainty were measured without the temperature
    assert now["classes"] == before["classes"] and now["pixel_accuracy"] == before["pixel_accuracy"]
    card = model_card(run, "alice/shapes", [])
    assert "val pixel accuracy" in card and f"temperature {temperature:.3f}" in card
    row = _class_row(card, "disc")
    assert row[2] == f"{100 * before['classes']['disc']['iou']:.1f}"  # not "-"

    (run / "eval_val.json").write_text(json.dumps({**before, "images_per_second": -1.0}))  # marks the reuse
    again, _ = report_run(run, reuse=True, **LIGHT)  # `pixelwise report`: masks reused, trust measured anew
    assert again["images_per_second"] == -1.0 and again["trust"]["temperature"] == pytest.approx(temperature)
    written = json.loads((run / "eval_val.json").read_text())
    assert written[FINGERPRINT] == model_fingerprint(run) and written["trust"] == again["trust"]
    _calibrate(run, "--fit-fraction", "1")  # another temperature
    plain, _ = report_run(run, reuse=True, trust=(), explain_worst=False)  # no trust asked: the stale one goes
    assert plain["images_per_second"] == -1.0 and "trust" not in json.loads((run / "eval_val.json").read_text())


def test_the_evaluation_follows_the_weights_content_not_their_modification_time(evaluated_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(evaluated_run, copy, copy_function=shutil.copy)  # cp -r: new modification times
    os.utime(copy / "best.safetensors", ns=(1, 1))
    assert current_evaluation(copy, "val") is not None
    card = model_card(copy, "alice/shapes", [])
    assert "val pixel accuracy" in card and _class_row(card, "disc")[2] != "-"

    stat = (copy / "best.safetensors").stat()
    data = bytearray((copy / "best.safetensors").read_bytes())
    data[-4:] = bytes(4) if data[-4:] != bytes(4) else b"\x00\x00\x80\x3f"  # the last weight: 0.0 or 1.0
    (copy / "best.safetensors").write_bytes(bytes(data))
    os.utime(copy / "best.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size, same time
    assert current_evaluation(copy, "val") is None  # other weights: not theirs
    assert "val pixel accuracy" not in model_card(copy, "alice/shapes", [])

    old = json.loads((evaluated_run / "eval_val.json").read_text())
    stamps = {"best.safetensors": [stat.st_size, stat.st_mtime_ns], "calibration.json": None}
    for written in ({k: v for k, v in old.items() if k != FINGERPRINT}, {**old, FINGERPRINT: stamps}):
        (copy / "eval_val.json").write_text(json.dumps(written))  # by earlier versions: stale
        assert current_evaluation(copy, "val") is None


def test_an_encoderless_network_is_described_without_an_encoder_and_default_colours_are_shown(evaluated_run,
                                                                                               tmp_path):
    # A seed_cnn run was "seed_cnn with a resnet18 encoder", tagged resnet18 and segmentation-models-pytorch; and
    # classes without colours showed "-" though predictions are drawn in the default palette.
    run = tmp_path / "run"
    shutil.copytree(evaluated_run, run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["model"].update(arch="seed_cnn", encoder="resnet18", encoder_weights=None, options={})
    cfg["data"]["classes"].pop("colors", None)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    card = model_card(run, "alice/seed", [])
    tags = yaml.safe_load(card.split("---")[1])["tags"]
    assert "seed_cnn" in tags and "resnet18" not in tags and "segmentation-models-pytorch" not in tags
    assert "resnet18" not in card and "seed_cnn, a network without an encoder (random initialisation)" in card
    names = cfg["data"]["classes"]["names"]
    for name, colour in zip(names, default_palette(len(names)), strict=True):
        assert _class_row(card, name)[1] == "#{:02x}{:02x}{:02x}".format(*colour)
    assert "default palette" in card

    from pixelwise.share.card import metadata, network

    assert network({"arch": "unet", "encoder": "resnet34"}) == (
        "unet with a resnet34 encoder", ["segmentation-models-pytorch", "unet", "resnet34"])
    assert network({"arch": "reseg", "encoder": "resnet18"}) == ("reseg with a resnet18 encoder", ["reseg", "resnet18"])
    text, tags = network({"arch": "custom", "encoder": "resnet18"})
    assert "resnet18" not in text and tags == []
    assert "resnet18" not in str(metadata({"model": {"arch": "custom", "encoder": "resnet18"}}, {}, {}, "x", "d"))
