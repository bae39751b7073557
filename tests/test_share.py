"""Sharing: push to a local stand-in of the Hub, load back with Segmenter.load('hf://...') offline (identical
predictions), the model card, and export --to smp loaded by plain segmentation-models-pytorch."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from huggingface_hub import constants

from pixelwise.errors import PixelwiseError
from pixelwise.inference.predictor import Segmenter
from pixelwise.share.push import push


class LocalHub:
    """HfApi's create_repo / upload_folder, committing into huggingface_hub's cache layout instead of the network
    (what a download would leave there): models--USER--REPO/{refs/main, snapshots/REV/...}."""

    def __init__(self, cache):
        self.cache, self.calls = cache, []

    def create_repo(self, repo_id, private=False, exist_ok=False, repo_type=None):
        self.calls.append(("create_repo", repo_id, private))

    def upload_folder(self, repo_id, folder_path, repo_type=None, commit_message=None):
        self.calls.append(("upload_folder", repo_id, commit_message))
        revision = f"{len(self.calls):040d}"
        repo = self.cache / f"models--{repo_id.replace('/', '--')}"
        shutil.copytree(folder_path, repo / "snapshots" / revision)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(revision)
        return type("Commit", (), {"commit_url": f"local://{repo_id}/commit/{revision}"})()


def test_push_then_load_from_the_hub_cache_offline_gives_identical_predictions(served_run, tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    hub = LocalHub(tmp_path / "hub")
    result = push(served_run, "alice/shapes", private=True, api=hub)
    assert hub.calls[0] == ("create_repo", "alice/shapes", True) and hub.calls[1][0] == "upload_folder"
    assert {"README.md", "config.yaml", "best.safetensors", "classes.json", "summary.json"} <= set(result["files"])
    pulled = Segmenter.load("hf://alice/shapes", device="cpu", amp="off")
    local = Segmenter.load(served_run, device="cpu", amp="off")
    image = np.random.default_rng(1).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    assert np.array_equal(pulled.probabilities(image), local.probabilities(image))
    assert pulled.class_names == local.class_names
    with pytest.raises(PixelwiseError, match="could not be downloaded"):  # offline and not in the cache
        Segmenter.load("hf://alice/other", device="cpu")
    with pytest.raises(PixelwiseError, match="expected USER/REPO"):
        push(served_run, "no-namespace", api=hub)


def test_a_calibrated_run_predicts_the_same_probabilities_after_the_round_trip(served_run, tmp_path, monkeypatch):
    """The temperature of `pixelwise calibrate` travels with the run: pushed, downloaded, applied, in the card."""
    run = tmp_path / "run"
    shutil.copytree(served_run, run)
    (run / "calibration.json").write_text(json.dumps({"temperature": 2.5}))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    result = push(run, "alice/calibrated", api=LocalHub(tmp_path / "hub"))
    assert "calibration.json" in result["files"]
    pulled = Segmenter.load("hf://alice/calibrated", device="cpu", amp="off")
    local = Segmenter.load(run, device="cpu", amp="off")
    raw = Segmenter.load(served_run, device="cpu", amp="off")
    image = np.random.default_rng(2).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    assert np.array_equal(pulled.probabilities(image), local.probabilities(image))
    assert not np.allclose(pulled.probabilities(image), raw.probabilities(image))  # the temperature is applied
    card = (tmp_path / "hub" / "models--alice--calibrated").rglob("README.md")
    assert "temperature 2.500" in next(card).read_text()


def test_model_card_and_files_written_to_a_folder(served_run, tmp_path):
    out = tmp_path / "repo"
    result = push(served_run, "alice/shapes", onnx="fp32", smp=True, to_folder=out)
    assert {"model.onnx", "smp/config.json", "smp/model.safetensors", "smp/preprocessing.json"} <= set(result["files"])
    card = (out / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "pixelwise" and front["pipeline_tag"] == "image-segmentation"
    metrics = front["model-index"][0]["results"][0]["metrics"]
    summary = json.loads((served_run / "summary.json").read_text())
    assert metrics[0]["type"] == "mean_iou" and metrics[0]["value"] == pytest.approx(summary["best_miou"], abs=1e-4)
    for text in ("## Classes and validation metrics", "| background |", "| triangle |", "## Intended use",
                 "## Limitations", 'pw.Segmenter.load("hf://alice/shapes")', "max_steps 2", "model.onnx"):
        assert text in card, text
    classes = json.loads((out / "classes.json").read_text())
    assert classes["names"] == ["background", "disc", "square", "triangle"]
    with pytest.raises(PixelwiseError, match="not empty"):
        push(served_run, "alice/shapes", to_folder=out)


def test_export_smp_loads_in_plain_smp_with_the_same_predictions(served_run, tmp_path):
    import segmentation_models_pytorch as smp

    from pixelwise.export.smp import export_smp

    done = export_smp(served_run, tmp_path / "smp")
    model = smp.from_pretrained(done["path"]).eval()
    pre = json.loads((tmp_path / "smp" / "preprocessing.json").read_text())
    image = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    x = (image.astype(np.float32) - np.array(pre["mean"], np.float32)) / np.array(pre["std"], np.float32)
    with torch.inference_mode():
        plain = model(torch.from_numpy(x.transpose(2, 0, 1).copy())[None]).softmax(1)[0].numpy()
    ours = Segmenter.load(served_run, device="cpu", amp="off").probabilities(image)
    assert np.abs(plain - ours).max() < 1e-4 and pre["classes"] == ["background", "disc", "square", "triangle"]
    with pytest.raises(PixelwiseError, match="not empty"):
        export_smp(served_run, tmp_path / "smp")
