"""What ``Segmenter`` takes: arrays of any channel count and pixel type, each reaching the model once converted and
never re-checked as if the caller had passed it; and uncertainty maps computed as the probabilities are (tiled)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixelwise.data.classes import ClassTable
from pixelwise.data.pixels import ImageSpec
from pixelwise.inference.predictor import Segmenter, as_model_input, to_channels
from pixelwise.inference.uncertainty import uncertainty_maps


class Recording:
    """A backend that remembers what reached the model; class 1 where the first channel is above ``cut``."""

    def __init__(self, cut: float = 100.0) -> None:
        self.inputs: list[np.ndarray] = []
        self.cut = cut

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.inputs.append(batch.copy())
        p = (batch[:, :1].astype(np.float32) > self.cut).astype(np.float32) * 0.8 + 0.1
        return np.concatenate([1 - p, p], axis=1)


def seg_of(channels: int, dtype: str | None = None, crop: tuple[int, int] = (512, 512), backend=None) -> Segmenter:
    return Segmenter(backend or Recording(), ClassTable(names=["a", "b"]), channels, crop,
                     ImageSpec(dtype=dtype))


def u16_image(h: int = 20, w: int = 30) -> np.ndarray:
    return (np.arange(h * w, dtype=np.uint16).reshape(h, w) * 97)


# -- a 16-bit model: converted input goes to the internal path, not back through predict's checks --

def test_a_16_bit_model_predicts_lists_tiled_and_with_tta():
    seg = seg_of(1, "uint16", backend=Recording(cut=30000.0))
    a = u16_image()
    one = seg.predict(a)
    assert one.shape == (20, 30) and 0 < one.mean() < 1
    for options in ({"tile": 8}, {"tta": True}, {"scales": (0.5, 1.0)}, {}):
        masks = seg.predict([a, a], **options)
        assert len(masks) == 2 and all(np.array_equal(m, seg.predict(a, **options)) for m in masks), options
        streamed = list(seg.predict(iter([a]), **options))  # a generator: masks as it is consumed
        assert np.array_equal(streamed[0], masks[0]), options
    seen = seg.backend.inputs[-1]
    assert seen.dtype == np.float32 and seen.max() == a.max()  # 16-bit values reach the model unscaled
    with pytest.raises(ValueError, match="trained on uint16 images, got uint8"):
        seg.predict([a.astype(np.uint8)], tile=8)  # the caller's arrays are still checked


def test_a_16_bit_model_overlays_arrays_and_files(tmp_path):
    seg = seg_of(1, "uint16", backend=Recording(cut=30000.0))
    a = u16_image()
    path = tmp_path / "deep.png"
    Image.fromarray(a).save(path)  # a 16-bit gray PNG
    mask = seg.predict(a)
    for image in (a, path, str(path)):
        shown = seg.overlay(image)
        assert shown.shape == (20, 30, 3) and shown.dtype == np.uint8
        assert np.array_equal(shown, seg.overlay(image, mask))  # the predicted mask is predict's


def test_a_16_bit_model_serves_batches_with_tta_and_tiles():
    pytest.importorskip("fastapi", reason="the 'serve' extra is not installed")
    from fastapi.testclient import TestClient

    from pixelwise.serve.app import create_app
    from pixelwise.serve.settings import ServedModel, make_settings

    seg = seg_of(1, "uint16", crop=(32, 32), backend=Recording(cut=30000.0))
    buf = io.BytesIO()
    Image.fromarray(u16_image(40, 40)).save(buf, format="PNG")
    served = ServedModel(seg, Path("deep.onnx"), "onnxruntime", 10**8)
    files = [("files", ("a.png", buf.getvalue())), ("files", ("b.png", buf.getvalue()))]
    with TestClient(create_app(make_settings(model="deep.onnx"), served)) as client:
        for query in ("tta=true", "tile=32", "scales=0.5,1", ""):
            r = client.post(f"/predict/batch?shapes=none&{query}", files=files)
            assert r.status_code == 200, (query, r.text)
            assert [set(x) >= {"file", "classes"} for x in r.json()["results"]] == [True, True], r.json()


# -- 8-bit arrays: the channel rules of image files (fit_channels) --

@pytest.mark.parametrize("channels", [2, 4, 5, 7])
def test_an_8_bit_model_of_any_channel_count_takes_arrays_of_its_count(channels):
    seg = seg_of(channels)
    image = np.random.default_rng(channels).integers(0, 256, (12, 16, channels), dtype=np.uint8)
    assert np.array_equal(as_model_input(image, seg.spec), image)
    assert seg.predict(image).shape == (12, 16)
    assert np.array_equal(seg.backend.inputs[-1][0], image.transpose(2, 0, 1))  # every channel, as given
    probs, maps = uncertainty_maps(seg, image, ["entropy", "tta"])  # the trust path takes them too
    assert probs.shape == (2, 12, 16) and maps["tta"].shape == (12, 16)


@pytest.mark.parametrize(("shape", "channels"), [((12, 16, 3), 4), ((12, 16), 4), ((12, 16, 1), 2), ((12, 16, 4), 5),
                                                 ((12, 16, 2), 3), ((12, 16, 2), 1), ((12, 16, 5), 3),
                                                 ((12, 16, 5), 4)])
def test_other_channel_counts_are_refused_never_dropped_or_copied(shape, channels):
    found = 1 if len(shape) == 2 else shape[2]
    with pytest.raises(ValueError, match=rf"has {found} channel\(s\), but the model takes {channels}"):
        to_channels(np.zeros(shape, np.uint8), channels)
    with pytest.raises(ValueError, match="channel"):
        seg_of(channels).predict(np.zeros(shape, np.uint8))


def test_gray_colour_and_alpha_convert_as_for_files():
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (6, 7, 4), dtype=np.uint8)
    gray = rgba[:, :, 0]
    assert np.array_equal(to_channels(gray, 3), np.repeat(gray[:, :, None], 3, axis=2))
    assert np.array_equal(to_channels(gray[:, :, None], 1), gray[:, :, None])
    assert np.array_equal(to_channels(rgba, 3), rgba[:, :, :3])  # alpha dropped for a colour model
    luminance = np.asarray(Image.fromarray(np.ascontiguousarray(rgba[:, :, :3])).convert("L"))[:, :, None]
    assert np.array_equal(to_channels(rgba[:, :, :3], 1), luminance)
    assert np.array_equal(to_channels(rgba, 1), luminance)  # as an RGBA file is read for a gray model
    with pytest.raises(ValueError, match="uint8"):
        to_channels(np.zeros((4, 5), np.float32), 3)
    with pytest.raises(ValueError, match=r"channel-first.*transpose\(1, 2, 0\)"):
        to_channels(np.zeros((3, 16, 20), np.uint8), 3)  # CHW is refused with a hint
    with pytest.raises(ValueError, match="HxW"):
        to_channels(np.zeros((2, 3, 4, 3), np.uint8), 3)


# -- uncertainty: the flipped passes are tiled as the unflipped one is --

class Context:
    """Flip-equivariant, but each pixel's class depends on the mean of its input (tile): tiling changes it."""

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        x = batch.astype(np.float32)[:, :1]
        p = 1 / (1 + np.exp(-(x - x.mean(axis=(2, 3), keepdims=True)) / 20))
        return np.concatenate([1 - p, p], axis=1)


def test_tta_uncertainty_is_zero_for_a_flip_equivariant_model_on_a_tiled_image():
    seg = seg_of(1, crop=(8, 8), backend=Context())  # tiled automatically above 16 x 8 x 8 pixels
    rng = np.random.default_rng(0)
    img = np.concatenate([rng.integers(0, 120, (16, 300)), rng.integers(100, 256, (16, 400))], 1).astype(np.uint8)
    assert seg._tile(img[:, :, None].shape, None) is not None
    probs, maps = uncertainty_maps(seg, img, ["tta"])
    assert np.allclose(probs, seg.probabilities(img), atol=1e-6)  # the probabilities predict computes
    assert not np.allclose(probs, seg.backend(img[None, None])[0], atol=1e-3)  # which tiling changes
    assert float(maps["tta"].max()) < 1e-6
    from pixelwise.inference.suggest import score_image  # suggest's tta-disagreement: the same tiles too

    score, _, unc = score_image(seg, img[:, :, None], "tta-disagreement")
    assert score < 1e-6 and float(unc.max()) < 1e-6


def test_tta_uncertainty_still_sees_a_model_that_is_not_flip_equivariant():
    class Leftish:  # class 1 on the left of every input it is given
        def __call__(self, batch: np.ndarray) -> np.ndarray:
            w = batch.shape[3]
            p = np.broadcast_to(np.linspace(0.9, 0.1, w, dtype=np.float32), (batch.shape[0], 1, batch.shape[2], w))
            return np.concatenate([1 - p, p], axis=1)

    for crop in ((8, 8), (512, 512)):  # tiled and whole
        seg = seg_of(1, crop=crop, backend=Leftish())
        maps = uncertainty_maps(seg, np.zeros((16, 700), np.uint8), ["tta"])[1]
        assert maps["tta"].shape == (16, 700) and float(maps["tta"].max()) == 0.5, crop  # the h flip disagrees
