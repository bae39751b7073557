"""Files pixelwise writes are ordinary files: the user's umask decides who may read them."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from conftest import tiny_overrides

import pixelwise as pw
from pixelwise.atomic import atomic_write_text, current_umask
from pixelwise.config import parse_override


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(old)


def test_umask_is_read_without_changing_it(umask_027):
    assert current_umask() == 0o027 and current_umask() == 0o027


def test_every_file_of_a_run_its_predictions_and_its_export_follows_the_umask(synthetic_data, tmp_path, umask_027):
    from pixelwise.inference.files import PredictOptions, predict_files

    overrides = dict(parse_override(t) for t in tiny_overrides(synthetic_data))
    overrides.pop("data.root")
    run = pw.train(data=synthetic_data, out=tmp_path / "run", **overrides, **{"train.max_steps": 1})
    run.export()
    images = sorted((synthetic_data / "val" / "images").iterdir())[:2]
    predict_files(run.segmenter(device="cpu"), images, tmp_path / "pred", options=PredictOptions(save_probs=True))
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    kinds = {p.suffix for p in files}
    assert {".yaml", ".json", ".csv", ".safetensors", ".ckpt", ".html", ".png", ".onnx", ".npz", ".jpg"} <= kinds
    wrong = {str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.stat().st_mode)) for p in files
             if stat.S_IMODE(p.stat().st_mode) != 0o640}
    assert not wrong, wrong
    folders = {str(p): oct(stat.S_IMODE(p.stat().st_mode)) for p in tmp_path.rglob("*") if p.is_dir()
               if stat.S_IMODE(p.stat().st_mode) != 0o750}
    assert not folders, folders


def test_replacing_a_file_keeps_the_mode_its_owner_gave_it(tmp_path: Path):
    target = tmp_path / "config.yaml"
    target.write_text("old")
    target.chmod(0o600)
    atomic_write_text(target, "new")
    assert target.read_text() == "new" and stat.S_IMODE(target.stat().st_mode) == 0o600
