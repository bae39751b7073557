"""The HTML report, its plots, TensorBoard events and the data preview sheet."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_overrides
from PIL import Image

from pixelwise.api import default_callbacks
from pixelwise.config import load_config
from pixelwise.engine.evaluate import per_image_confusion, per_image_scores
from pixelwise.engine.trainer import Trainer
from pixelwise.report import plots
from pixelwise.report.build import report_run
from pixelwise.report.preview import preview_sheet


def _png_size(data: bytes) -> tuple[int, int]:
    import io

    return Image.open(io.BytesIO(data)).size


def test_per_image_scores_by_hand():
    # image 0: classes 0 and 1, one pixel of class 1 predicted as 0; image 1: all correct, with a void pixel
    target = torch.tensor([[[0, 0], [1, 1]], [[2, 2], [255, 2]]])
    pred = torch.tensor([[[0, 0], [1, 0]], [[2, 2], [0, 2]]])
    scores = per_image_scores(per_image_confusion(pred, target, 3))
    # image 0: class 0 IoU 2/3, class 1 IoU 1/2, class 2 absent -> mIoU 7/12; accuracy 3/4
    assert scores[0] == pytest.approx((7 / 12, 3 / 4))
    # image 1: void ignored, class 2 IoU 1 and nothing else present
    assert scores[1] == pytest.approx((1.0, 1.0))


def test_per_image_scores_match_each_images_own_confusion_matrix_and_an_all_void_image_has_none():
    from pixelwise.engine.metrics import confusion_matrix

    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 4, (5, 9, 7), generator=g)
    target[target == 3] = 255  # void, and class 3 is never in the truth
    pred = torch.randint(0, 4, (5, 9, 7), generator=g)
    target[4] = 255  # nothing labelled in the last image
    cms = per_image_confusion(pred, target, 4)
    assert torch.equal(cms.sum(dim=0), confusion_matrix(pred, target, 4))  # evaluation's batch matrix
    scores = per_image_scores(cms)
    for i, (miou, accuracy) in enumerate(scores[:4]):
        cm = confusion_matrix(pred[i : i + 1], target[i : i + 1], 4).double()
        tp, union = cm.diagonal(), cm.sum(0) + cm.sum(1) - cm.diagonal()
        assert miou == pytest.approx(float((tp[union > 0] / union[union > 0]).mean()))
        assert accuracy == pytest.approx(float(tp.sum() / cm.sum()))
    assert scores[4] == (None, None)
    target[0, 0, 0] = 4  # out of range, not void: an error, as in confusion_matrix, not a pixel in image 1's matrix
    with pytest.raises((RuntimeError, IndexError)):
        per_image_confusion(pred, target, 4)


def test_error_map_and_panel_colours():
    image = np.full((4, 6, 3), 200, dtype=np.uint8)
    truth = np.array([[0] * 6, [1] * 6, [255] * 6, [1] * 6], dtype=np.uint8)
    pred = np.array([[0] * 6, [0] * 6, [1] * 6, [1] * 6], dtype=np.uint8)
    err = plots.error_map(image, truth, pred)
    assert tuple(err[1, 0]) == plots.WRONG_RGB
    assert tuple(err[2, 0]) == plots.ERROR_VOID_RGB
    assert tuple(err[0, 0]) == (90, 90, 90)  # correct: the image dimmed to 45 %
    palette = [(10, 20, 30), (40, 50, 60)]
    strip = plots.panel(image, truth, pred, palette)  # a tiny image is enlarged 4x (nearest)
    assert strip.shape == (16, 4 * 24 + 3 * 4, 3)
    assert tuple(strip[4, 24 + 4]) == (40, 50, 60)  # truth panel, row 1: class 1
    assert tuple(strip[8, 24 + 4]) == plots.VOID_RGB
    assert tuple(strip[4, 2 * (24 + 4)]) == (10, 20, 30)  # prediction panel, row 1: class 0
    assert tuple(strip[4, 3 * (24 + 4)]) == plots.WRONG_RGB
    large = plots.panel(np.zeros((360, 480, 3), np.uint8), np.zeros((360, 480), np.uint8),
                        np.zeros((360, 480), np.uint8), palette)
    assert large.shape == (240, 4 * 320 + 3 * 4, 3)


def test_plots_are_pngs():
    cm = np.array([[5, 1], [0, 3]])
    for png in (plots.plot_confusion(cm, ["a", "b"]),
                plots.plot_class_bars({"a": 0.5, "b": None}, "t", "IoU", 0.5),
                plots.plot_frequencies({"train": [0.7, 0.3], "val": [0.6, 0.4]}, ["a", "b"]),
                plots.plot_curves([{"epoch": "1", "train_loss": "0.5", "val_loss": "", "val_miou": "",
                                    "val_pixel_accuracy": "", "lr": "0.001"},
                                   {"epoch": 2, "train_loss": 0.4, "val_loss": 0.45, "val_miou": 0.6,
                                    "val_pixel_accuracy": 0.8, "lr": 0.0005}])):
        assert png.startswith(b"\x89PNG") and min(_png_size(png)) > 100


@pytest.fixture(scope="module")
def tiny_run(synthetic_data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("report") / "run"
    cfg = load_config(None, tiny_overrides(synthetic_data) + ["train.epochs=2"])
    Trainer(cfg, run, callbacks=default_callbacks(cfg)).fit()  # what `pixelwise train` runs: report, TensorBoard
    return run


def test_training_writes_a_self_contained_report(tiny_run):
    page = (tiny_run / "report.html").read_text()
    for section in ("curves", "classes", "confusion", "data", "gallery", "trust", "config"):
        assert f'id="{section}"' in page
    assert "http://" not in page and "https://" not in page and 'src="plots' not in page  # nothing external
    before_trust, trust = page.split('<h2 id="trust">')
    images = re.findall(r'<img src="data:image/png;base64,', before_trust)
    assert (tiny_run / "plots" / "trust_reliability.png").is_file()  # the trust section's own figures
    assert 1 <= len(re.findall(r'<img src="data:image/png;base64,', trust)) <= 3  # reliability + <= 2 explanations
    result = json.loads((tiny_run / "eval_val.json").read_text())
    shown = min(4, len(result["per_image"]) // 2)
    assert len(images) == 4 + 2 * shown  # curves, class IoU, confusion, frequencies + the gallery
    names = list(result["classes"])
    rows = re.findall(r"<tr><td><span class=\"swatch\"[^>]*></span>([^<]+)</td>", page)
    assert rows == names
    assert f"{result['miou']:.4f}" in page
    for name in ("curves", "confusion", "class_iou", "frequencies"):
        assert (tiny_run / "plots" / f"{name}.png").stat().st_size > 1000
    assert len(list((tiny_run / "plots" / "gallery").glob("val_worst_*.png"))) == shown
    # per-image scores are sorted into the gallery: worst first, best second
    captions = [float(x) for x in re.findall(r"mIoU ([0-9.]+), pixel accuracy", page)]
    worst, best = captions[:shown], captions[shown:]
    assert worst == sorted(worst) and best == sorted(best, reverse=True) and max(worst) <= min(best)


def test_report_rebuild_reuses_the_evaluation(tiny_run):
    eval_json = tiny_run / "eval_val.json"
    before = eval_json.read_text()
    (tiny_run / "report.html").unlink()
    _, path = report_run(tiny_run, reuse=True)
    assert path.is_file() and eval_json.read_text() == before


def test_tensorboard_events_hold_scalars_and_images(tiny_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tiny_run / "tensorboard"))
    events.Reload()
    tags = events.Tags()
    assert {"train/loss", "val/miou", "train/lr"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("val/miou")] == [1, 2]
    assert tags["images"], "prediction images per epoch"


def test_no_tensorboard_flag(synthetic_data, tmp_path):
    from typer.testing import CliRunner

    from pixelwise.cli import app

    run = tmp_path / "run"
    args = ["train", "--out", str(run), "--no-tensorboard", "--no-report"]
    for o in tiny_overrides(synthetic_data) + ["train.epochs=1"]:
        args += ["--set", o]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert not (run / "tensorboard").exists() and not (run / "report.html").exists()
    assert (run / "best.safetensors").is_file()


def test_data_preview_sheet(synthetic_data, tmp_path):
    cfg = load_config(None, tiny_overrides(synthetic_data) + ["augment.preset=strong"])
    out = preview_sheet(cfg, tmp_path / "preview.png", samples=4)
    image = Image.open(out)
    assert image.size[0] > 400 and image.size[1] > 150


def test_report_renders_in_headless_chromium(tiny_run, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium not installed (Debian: apt-get install chromium); the report was not rendered")
    shot = tmp_path / "report.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
                    f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,2400", f"--screenshot={shot}",
                    (tiny_run / "report.html").as_uri()], check=True, capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (2400, 1280)
    # rendered, not blank: text, plots and gallery give many distinct colours
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200


def test_report_and_preview_commands(tiny_run, synthetic_data, tmp_path):
    from typer.testing import CliRunner

    from pixelwise.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["report", str(tiny_run)])
    assert result.exit_code == 0, result.output
    assert "report written to" in result.output and (tiny_run / "report.html").is_file()
    out = tmp_path / "sheet.png"
    args = ["data", "preview", str(synthetic_data), "--augment", "default", "--samples", "2", "--crop-size", "32",
            "--out", str(out), "--set", "data.num_workers=0"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert Image.open(out).size[0] > 300
    result = runner.invoke(app, ["data", "preview", str(tmp_path / "missing")])
    assert result.exit_code != 0


def test_report_evaluates_again_when_the_weights_changed(tiny_run, tmp_path):
    """`pixelwise report` reuses eval_val.json only while best.safetensors is the file it evaluated: after the
    weights changed (trained further, replaced) or for an eval JSON written without a fingerprint, it evaluates."""
    from safetensors.torch import load_file, save_file

    from pixelwise.inference.evaluation import evaluate_run
    from pixelwise.report.build import FINGERPRINT, current_evaluation, model_fingerprint

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    light = {"trust": (), "explain_worst": False}
    first, _ = report_run(run, **light)
    assert first[FINGERPRINT] == model_fingerprint(run) and current_evaluation(run, "val") is not None
    weights = load_file(str(run / "best.safetensors"))
    for key in weights:
        weights[key] = weights[key] * 0.5 if weights[key].is_floating_point() else weights[key]
    save_file(weights, str(run / "best.safetensors"))  # new weights, as a resumed run writes them
    assert current_evaluation(run, "val") is None
    again, _ = report_run(run, reuse=True, **light)
    now = evaluate_run(run)
    assert again["miou"] == pytest.approx(now["miou"]) and again[FINGERPRINT] == model_fingerprint(run)
    assert json.loads((run / "eval_val.json").read_text())[FINGERPRINT] == model_fingerprint(run)
    stale = {k: v for k, v in again.items() if k != FINGERPRINT}  # as written before fingerprints were recorded
    (run / "eval_val.json").write_text(json.dumps({**stale, "miou": 0.987654}))
    rebuilt, _ = report_run(run, reuse=True, **light)
    assert rebuilt["miou"] == pytest.approx(now["miou"]) and "0.9877" not in (run / "report.html").read_text()
