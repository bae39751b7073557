"""Sharing: push to a local stand-in of the Hub, load back with Segmenter.load('hf://...') offline (identical
predictions), the model card, and export --to smp loaded by plain segmentation-models-pytorch."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from huggingface_hub import constants

from pixelwise.errors import ConfigError, PixelwiseError
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
    from pixelwise.report.build import report_run  # a temperature alone (no before/after figures) reports too

    _, page = report_run(run, "val", device="cpu", explain_worst=False)
    assert "T = 2.500 applied" in page.read_text()


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


def test_a_hub_config_with_a_number_past_pythons_limit_is_one_clear_error(served_run, tmp_path, monkeypatch):
    """An hf:// repository's config.yaml is untrusted: a 5,000-digit split_seed (Python refuses to read an int that
    long) is a ConfigError naming the file, not a ValueError traceback."""
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    repo, revision = tmp_path / "hub" / "models--alice--huge", "1" * 40
    (repo / "snapshots" / revision).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    text = (served_run / "config.yaml").read_text()
    assert "split_seed: 0\n" in text
    (repo / "snapshots" / revision / "config.yaml").write_text(text.replace("split_seed: 0\n",
                                                                            f"split_seed: {'9' * 5000}\n"))
    with pytest.raises(ConfigError, match=r"config.yaml: not valid YAML \(a number of more than 4,300 digits"):
        Segmenter.load("hf://alice/huge", device="cpu")


def test_export_smp_replaces_only_its_own_files_with_the_modes_the_umask_gives(served_run, tmp_path):
    """--overwrite emptied the whole --out folder (the run itself, with --out RUN; a user's notes.txt), and the
    staging folder left the export 0700 with a 0600 model.safetensors."""
    from typer.testing import CliRunner

    from pixelwise.cli import app
    from pixelwise.export.smp import EXPORT_FILES, export_smp

    run = Path(shutil.copytree(served_run, tmp_path / "run", copy_function=os.link))  # cheap; served_run stays whole
    before = sorted(p.name for p in run.iterdir())
    result = CliRunner().invoke(app, ["export", str(run), "--to", "smp", "--out", str(run), "--overwrite"])
    assert isinstance(result.exception, PixelwiseError) and "is a pixelwise run folder" in str(result.exception)
    assert sorted(p.name for p in run.iterdir()) == before
    mine = tmp_path / "mymodels"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(PixelwiseError, match=r"holds files the smp export does not write \(notes.txt\)"):
        export_smp(run, mine, overwrite=True)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"] and (mine / "notes.txt").read_text() == "mine"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left behind

    old = os.umask(0o022)
    try:
        out = Path(export_smp(run, tmp_path / "models" / "smp")["path"])
        assert out.stat().st_mode & 0o777 == 0o755
        assert {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()} == dict.fromkeys(EXPORT_FILES, 0o644)
        (out / "preprocessing.json").write_text("{}")  # a previous export's file, replaced
        with pytest.raises(PixelwiseError, match="not empty .a previous smp export"):
            export_smp(run, out)
        export_smp(run, out, overwrite=True)
        assert json.loads((out / "preprocessing.json").read_text())["classes"][0] == "background"
        assert sorted(p.name for p in out.iterdir()) == sorted(EXPORT_FILES)
        push(run, "alice/shapes", smp=True, to_folder=tmp_path / "repo")  # push --smp stages through the export
        staged = tmp_path / "repo" / "smp"
        assert staged.stat().st_mode & 0o777 == 0o755
        assert {p.stat().st_mode & 0o777 for p in staged.iterdir()} == {0o644}
    finally:
        os.umask(old)


def test_pushed_files_name_no_path_of_this_machine(served_run, tmp_path):
    """config.yaml, dataset.json, summary.json and eval_val.json record absolute paths (the data root, evaluated
    images, an init_from run); the pushed copies name them relative to the data root, or by their name alone."""
    run = tmp_path / "run"
    shutil.copytree(served_run, run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    root = config["data"]["root"]
    assert Path(root).is_absolute()
    config["model"]["init_from"] = "/home/alice/private/runs/teacher"
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    from pixelwise.report.build import FINGERPRINT, model_fingerprint

    (run / "eval_val.json").write_text(json.dumps({"split": "val", "worst": [{"image": f"{root}/images/a.png"}],
                                                   FINGERPRINT: model_fingerprint(run)}))
    out = tmp_path / "repo"
    push(run, "alice/shapes", to_folder=out)
    for file in out.rglob("*"):
        if file.suffix in (".yaml", ".json", ".md", ".csv"):
            text = file.read_text()
            assert root not in text and "/home/alice" not in text, file.name
    pushed = yaml.safe_load((out / "config.yaml").read_text())
    assert pushed["data"]["root"] == Path(root).name and pushed["model"]["init_from"] == "teacher"
    worst = json.loads((out / "eval_val.json").read_text())["worst"][0]["image"]
    assert worst == f"{Path(root).name}/images/a.png"
    assert "fine-tuned from teacher" in (out / "README.md").read_text()
    assert Segmenter.load(out, device="cpu").class_names == Segmenter.load(run, device="cpu").class_names


def test_an_evaluation_on_other_data_neither_replaces_the_runs_own_nor_travels_with_it(served_run, synthetic_data,
                                                                                      tmp_path):
    """`eval RUN --data OTHER` writes eval_val-OTHER.json and report_val-OTHER.html: the run's eval_val.json (what
    its card and push describe) stays the run's own. push uploads eval_val.json only when it evaluated these
    weights."""
    from typer.testing import CliRunner

    from pixelwise.cli import app

    run = tmp_path / "run"
    shutil.copytree(served_run, run)
    assert CliRunner().invoke(app, ["eval", str(run), "--uncertainty", "none"]).exit_code == 0
    own = (run / "eval_val.json").read_text()
    other = tmp_path / "other"
    shutil.copytree(synthetic_data, other)
    result = CliRunner().invoke(app, ["eval", str(run), "--data", str(other), "--uncertainty", "none"])
    assert result.exit_code == 0, result.output
    assert (run / "eval_val.json").read_text() == own
    assert json.loads((run / "eval_val-other.json").read_text())["images"] == 4
    assert (run / "report_val-other.html").is_file()
    assert CliRunner().invoke(app, ["eval", str(run), "--data", str(other), "--no-report", "--uncertainty",
                                    "none"]).exit_code == 0
    assert (run / "eval_val.json").read_text() == own  # --no-report too
    push(run, "alice/shapes", to_folder=tmp_path / "a")
    assert (tmp_path / "a" / "eval_val.json").is_file()
    (run / "best.safetensors").write_bytes((run / "best.safetensors").read_bytes() + b" ")  # other weights now
    push(run, "alice/shapes", to_folder=tmp_path / "b")
    assert not (tmp_path / "b" / "eval_val.json").exists()


def test_paths_of_a_run_made_on_windows_are_stripped_too():
    from pixelwise.share.push import _portable

    root = "C:\\Users\\alice\\data\\camvid"
    cleaned = _portable({"image": root + "\\images\\a.png", "init": "D:/runs/teacher", "mine": "/home/al/x.png",
                         "kept": ["relative/x.png", "a class name"]}, root)
    assert cleaned == {"image": "camvid/images/a.png", "init": "teacher", "mine": "x.png",
                       "kept": ["relative/x.png", "a class name"]}


def test_another_datasets_label_is_one_plain_file_name_part(served_run, tmp_path):
    """The dataset folder's name goes into RUN/eval_SPLIT-NAME.json: brackets, spaces and dots-only names never make
    a path or a glob pattern; the run's own data (or none given) keeps the plain split name."""
    from pixelwise.report.build import data_label

    odd = tmp_path / "new [batch] 2*"
    odd.mkdir()
    assert data_label(served_run, "val", odd, None) == "val-new__batch__2_"
    assert data_label(served_run, "val", None, None) is None
    root = yaml.safe_load((served_run / "config.yaml").read_text())["data"]["root"]
    assert data_label(served_run, "val", Path(root), None) is None
    assert data_label(served_run, "val", tmp_path / ".." / tmp_path.name / odd.name, None) == "val-new__batch__2_"
