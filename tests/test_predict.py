import numpy as np
import pytest
import torch
from conftest import tiny_overrides
from PIL import Image

from pixelwise import Segmenter
from pixelwise.config import load_config
from pixelwise.engine.padding import forward_padded, pad_to_multiple
from pixelwise.engine.runtime import resolve_runtime
from pixelwise.engine.trainer import Trainer
from pixelwise.errors import PixelwiseError
from pixelwise.inference.files import predict_files
from pixelwise.inference.predictor import to_channels


@pytest.fixture(scope="module")
def run(synthetic_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    Trainer(load_config(overrides=[*tiny_overrides(synthetic_data), "train.max_steps=2"]), out).fit()
    return out


@pytest.mark.parametrize("shape", [(37, 53, 3), (64, 64, 3), (5, 7, 3), (33, 100), (20, 31, 4)])
def test_predict_any_size(run, shape):
    seg = Segmenter.load(run, device="cpu")
    image = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    mask = seg.predict(image)
    assert mask.shape == shape[:2] and mask.dtype == np.uint8 and mask.max() < 4
    probs = seg.probabilities(image)
    assert probs.shape == (4, *shape[:2]) and np.allclose(probs.sum(0), 1, atol=1e-3)
    assert (probs.argmax(0) == mask).mean() > 0.99


def test_padding_crops_back_exactly():
    x = torch.arange(2 * 3 * 5 * 7, dtype=torch.float32).view(2, 3, 5, 7)
    padded = pad_to_multiple(x, 4)
    assert padded.shape[-2:] == (8, 8) and torch.equal(padded[..., :5, :7], x)
    padded = pad_to_multiple(x, 4, min_size=12)
    assert padded.shape[-2:] == (12, 12) and torch.equal(padded[..., :5, :7], x)

    class Identity(torch.nn.Module):
        pad_multiple = 32

        def forward(self, t):
            assert t.shape[-1] % 32 == 0 and t.shape[-2] % 32 == 0
            return t

    out = forward_padded(Identity(), x, resolve_runtime("cpu", "off", channels_last=False))
    assert torch.equal(out, x)


def test_to_channels():
    gray = np.zeros((4, 5), np.uint8)
    assert to_channels(gray, 3).shape == (4, 5, 3)
    assert to_channels(np.zeros((4, 5, 3), np.uint8), 1).shape == (4, 5, 1)
    with pytest.raises(ValueError, match="uint8"):
        to_channels(np.zeros((4, 5), np.float32), 3)


def test_predict_files_writes_masks_and_overlays(run, synthetic_data, tmp_path):
    odd = tmp_path / "odd.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (45, 77, 3), dtype=np.uint8)).save(odd)
    (tmp_path / "broken.png").write_bytes(b"nope")
    report = predict_files(Segmenter.load(run), [synthetic_data / "val" / "images", odd, tmp_path / "broken.png"],
                           tmp_path / "out")
    assert (tmp_path / "out" / "odd.png").is_file() and (tmp_path / "out" / "odd_overlay.jpg").is_file()
    mask = Image.open(tmp_path / "out" / "odd.png")
    assert mask.mode == "P" and mask.size == (77, 45)  # class indices with the class palette
    assert len(report.written) == 2 * 5 and len(report.failed) == 1 and "broken.png" in report.failed[0]


def test_load_errors(tmp_path):
    with pytest.raises(PixelwiseError, match="not a run directory"):
        Segmenter.load(tmp_path)


def test_preannotations_refuse_inputs_of_one_name_before_predicting(run, tmp_path):
    from pixelwise.inference.preannotate import Preannotations

    rgb = np.random.default_rng(2).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        Image.fromarray(rgb).save(tmp_path / folder / "x.png")
    seg = Segmenter.load(run)
    inputs = [tmp_path / "a" / "x.png", tmp_path / "b" / "x.png"]
    for tool in ("labelstudio", "cvat", "coco"):  # each would name both entries x.png
        with pytest.raises(PixelwiseError, match="share one") as e:
            predict_files(seg, inputs, tmp_path / "out", preannotate=Preannotations(tool, seg.table))
        assert str(inputs[0]) in str(e.value) and str(inputs[1]) in str(e.value)
        assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # nothing predicted
    report = predict_files(seg, inputs, tmp_path / "out")  # masks alone: the second is named x_2
    assert report.renamed == ["x.png -> x_2.png"]
