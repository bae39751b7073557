"""model.init_from / train --init-from: fine-tuning from a whole model, with a report of every tensor."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import yaml
from conftest import tiny_overrides
from safetensors.torch import load_file

from pixelwise.config import load_config
from pixelwise.engine.setup import prepare
from pixelwise.errors import PixelwiseError
from pixelwise.inference.predictor import Segmenter


def test_init_from_reproduces_the_source_exactly_when_classes_match(served_run, synthetic_data, capsys):
    p = prepare(load_config(overrides=[*tiny_overrides(synthetic_data), f"model.init_from={served_run}"]))
    assert p.cfg.model.init_from == str(served_run.resolve()) and p.cfg.model.encoder_weights is None
    source = Segmenter.load(served_run, device="cpu", amp="off")
    mine = Segmenter(type(source.backend)(p.net.eval(), source.runtime), p.cfg.data.classes, 3, (32, 32))
    image = np.random.default_rng(0).integers(0, 256, (48, 40, 3), dtype=np.uint8)
    assert np.array_equal(source.probabilities(image), mine.probabilities(image))  # bit for bit: no step taken
    printed = " ".join(capsys.readouterr())
    n = len(load_file(str(served_run / "best.safetensors"))) - 2  # less the normalisation buffers
    assert f": {n} tensors loaded" in printed and "re-initialised" not in printed


def test_other_classes_reinitialise_the_head_and_carry_rows_by_name(served_run, synthetic_data, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(synthetic_data, data)
    # five classes, two of the source's swapped and one new: masks 0-3 keep their meaning under these names
    names = ["background", "square", "disc", "triangle", "new"]
    (data / "classes.yaml").write_text(yaml.safe_dump({"names": names}))
    p = prepare(load_config(overrides=[*tiny_overrides(data), f"model.init_from={served_run}"]))
    source = load_file(str(served_run / "best.safetensors"))
    head = p.net.state_dict()["net.segmentation_head.0.weight"]
    theirs = source["net.segmentation_head.0.weight"]
    assert head.shape[0] == 5 and theirs.shape[0] == 4
    for row, source_row in enumerate([0, 2, 1, 3]):  # carried over by name, in the new order
        assert torch.equal(head[row], theirs[source_row])
    assert not any(torch.equal(head[4], t) for t in theirs)  # the new class starts fresh
    assert torch.equal(p.net.state_dict()["net.decoder.blocks.0.conv1.0.weight"],
                       source["net.decoder.blocks.0.conv1.0.weight"])
    printed = " ".join(capsys.readouterr())
    assert "re-initialised (2, another shape here): net.segmentation_head.0.weight, net.segmentation_head.0.bias" \
        in printed
    assert "head rows carried over by class name (4): background, square, disc, triangle" in printed


def test_another_network_or_a_missing_source_is_refused(served_run, synthetic_data, tmp_path):
    with pytest.raises(PixelwiseError, match="that run trained unet on resnet18, this one is unet on tu-resnet10t; "
                                             "init_from needs the same model.arch and model.encoder"):
        prepare(load_config(overrides=[*tiny_overrides(synthetic_data), "model.encoder=tu-resnet10t",
                                       f"model.init_from={served_run}"]))
    bare = tmp_path / "bare" / "weights.safetensors"  # no config.yaml beside it: told by the weights that fit
    bare.parent.mkdir()
    shutil.copy(served_run / "best.safetensors", bare)
    with pytest.raises(PixelwiseError, match="it is another network"):
        prepare(load_config(overrides=[*tiny_overrides(synthetic_data), "model.encoder=tu-resnet10t",
                                       f"model.init_from={bare}"]))
    with pytest.raises(PixelwiseError, match="not found"):
        prepare(load_config(overrides=[*tiny_overrides(synthetic_data), f"model.init_from={tmp_path / 'none'}"]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(PixelwiseError, match="no best.safetensors"):
        prepare(load_config(overrides=[*tiny_overrides(synthetic_data), f"model.init_from={tmp_path / 'empty'}"]))


def test_an_rgb_source_is_adapted_to_gray_input(served_run, synthetic_data, capsys):
    p = prepare(load_config(overrides=[*tiny_overrides(synthetic_data), "data.channels=1",
                                       f"model.init_from={served_run}"]))
    source = load_file(str(served_run / "best.safetensors"))
    own = p.net.state_dict()["net.encoder.conv1.weight"]
    assert own.shape[1] == 1 and torch.allclose(own, source["net.encoder.conv1.weight"].sum(1, keepdim=True))
    assert "adapted to the input channels (as pretrained encoders are): net.encoder.conv1.weight" in \
        " ".join(capsys.readouterr())


def test_a_gray_source_is_shared_out_over_rgb_input(served_run, synthetic_data, tmp_path, capsys):
    """A membrane (1-channel) run fine-tuned on RGB: its first convolution's filters are divided among the three
    channels instead of being thrown away."""
    from safetensors.torch import save_file

    source = load_file(str(served_run / "best.safetensors"))
    source["net.encoder.conv1.weight"] = source["net.encoder.conv1.weight"][:, :1].contiguous()
    save_file(source, str(tmp_path / "gray.safetensors"))
    p = prepare(load_config(overrides=[*tiny_overrides(synthetic_data),
                                       f"model.init_from={tmp_path / 'gray.safetensors'}"]))
    own = p.net.state_dict()["net.encoder.conv1.weight"]
    assert own.shape[1] == 3
    assert torch.allclose(own, source["net.encoder.conv1.weight"].expand_as(own) / 3)
    assert "adapted to the input channels (as pretrained encoders are): net.encoder.conv1.weight" in \
        " ".join(capsys.readouterr())


def test_resume_does_not_read_the_init_from_source_again(served_run, synthetic_data, tmp_path):
    """A fine-tuned run resumes from its own last.ckpt even when the run it started from is gone."""
    from pixelwise.engine.trainer import Trainer

    source = tmp_path / "source"
    shutil.copytree(served_run, source)
    overrides = [*tiny_overrides(synthetic_data), f"model.init_from={source}"]
    run = tmp_path / "run"
    Trainer(load_config(overrides=[*overrides, "train.max_steps=2"]), run).fit()
    shutil.rmtree(source)
    summary = Trainer(load_config(overrides=[*overrides, "train.max_steps=4"]), run, resume=True).fit()
    assert summary["steps"] == 4
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["init_from"] == str(source.resolve())


@pytest.mark.parametrize("change, message", [
    (["model.arch=fpn", "model.options={}"], "that run trained unet on resnet18, this one is fpn on resnet18"),
    (["model.encoder=resnet34"], "that run trained unet on resnet18, this one is unet on resnet34"),
])
def test_a_run_of_another_architecture_or_encoder_is_refused_even_when_much_fits(served_run, synthetic_data, change,
                                                                                 message):
    # unet/resnet18 into fpn or unet/resnet34 fits more than half the weights: the run's config.yaml tells
    with pytest.raises(PixelwiseError, match=f"{message}; init_from needs the same model.arch and model.encoder "
                                             r"\(use model.encoder_weights"):
        prepare(load_config(overrides=[*tiny_overrides(synthetic_data), *change, f"model.init_from={served_run}"]))
