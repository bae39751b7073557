"""Issue 16's evidence: non-8-bit data trains, predicts, exports and streams without losing a bit.

Each dataset's classes differ only where an 8-bit pipeline cannot see them: 1100 vs 1140 on a 12-bit scale (one
8-bit level), 0.40 vs 0.44 in float reflectance (0 in 8 bits), band 4 of 5 (pixelwise read only 1 or 3 channels).
A small U-Net (ResNet-18 cut after its second stage) trains 25-40 steps on 32x32 crops: a few seconds each.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import scientific_data as sd
from PIL import Image
from rasterio.crs import CRS
from typer.testing import CliRunner

from pixelwise.api import default_callbacks
from pixelwise.cli import app
from pixelwise.config import load_config
from pixelwise.data.io import read_image, read_mask
from pixelwise.engine.trainer import Trainer
from pixelwise.inference.files import PredictOptions, predict_files
from pixelwise.inference.predictor import Segmenter

SMALL = ["data.crop_size=32", "train.batch_size=4", "data.num_workers=0", "augment.preset=light", "train.epochs=1000",
         "train.eval_every=1000", "optim.lr=3e-3", "loss=ce", "train.amp=off", "train.tensorboard=false",
         "train.report=false", "model.options={encoder_depth: 3, decoder_channels: [16, 16, 16]}"]


def _train(root: Path, kind: str, steps: int, *extra: str) -> tuple[Path, Path, dict]:
    data = sd.write_dataset(root / "data", kind)
    run = root / "run"
    cfg = load_config(overrides=[f"data.root={data}", f"train.max_steps={steps}", *SMALL, *extra])
    return data, run, Trainer(cfg, run, callbacks=default_callbacks(cfg)).fit()  # as `pixelwise train` runs


def _predicted_miou(run: Path, data: Path) -> float:
    """mIoU of ``Segmenter.predict`` on the val image files (decoded as a user's files are)."""
    seg = Segmenter.load(run, device="cpu")
    inter, union = np.zeros(2), np.zeros(2)
    for image in sorted((data / "val" / "images").iterdir()):
        pred, truth = seg.predict(image), read_mask(data / "val" / "masks" / f"{image.stem}.png")
        for k in range(2):
            inter[k] += ((pred == k) & (truth == k)).sum()
            union[k] += ((pred == k) | (truth == k)).sum()
    return float((inter / union).mean())


@pytest.fixture(scope="module")
def run12(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    return _train(tmp_path_factory.mktemp("twelve_bit"), "12bit", 25)


def test_12_bit_classes_one_8_bit_level_apart_train_and_predict(run12, tmp_path):
    data, run, summary = run12
    assert summary["best_miou"] > 0.9, summary
    assert _predicted_miou(run, data) > 0.9
    cfg = load_config(run / "config.yaml")  # the numbers predict, eval and export use
    assert cfg.data.dtype == "uint16" and cfg.model.normalization == "zscore"
    (low, high), = cfg.model.clip
    assert 1000 < low < 1100 and 1140 < high < 1200  # dead (0) and hot (4095) pixels clipped away
    assert 1100 < cfg.model.mean[0] < 1140 and cfg.model.std[0] < 40
    runner = CliRunner()  # the commands a user runs next: eval (with its report) and predict (with overlays)
    result = runner.invoke(app, ["eval", str(run), "--device", "cpu", "--out", str(tmp_path / "eval.json")])
    assert result.exit_code == 0, result.output
    assert (run / "report.html").is_file()
    result = runner.invoke(app, ["predict", str(run), str(data / "val" / "images"), "--out", str(tmp_path / "p"),
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "p" / "s0.png").is_file() and (tmp_path / "p" / "s0_overlay.jpg").is_file()


def test_float32_reflectance_trains_and_predicts(tmp_path):
    # with the report and TensorBoard panels this time: float images shown stretched, not as black squares
    data, run, summary = _train(tmp_path, "float", 25, "train.report=true", "train.tensorboard=true")
    assert summary["best_miou"] > 0.9, summary
    assert _predicted_miou(run, data) > 0.9
    assert load_config(run / "config.yaml").data.dtype == "float32"
    gallery = sorted((run / "plots" / "gallery").glob("*.png"))
    assert gallery and np.asarray(Image.open(gallery[0]).convert("L")).std() > 20


def test_five_bands_with_the_class_in_band_4_only(tmp_path):
    data, run, summary = _train(tmp_path, "5band", 40)
    assert summary["best_miou"] > 0.9, summary
    assert _predicted_miou(run, data) > 0.9
    cfg = load_config(run / "config.yaml")
    assert cfg.model.in_channels == 5 and len(cfg.model.mean) == 5 and cfg.data.channels == 5


def test_onnx_export_takes_float32_and_agrees_with_pytorch(run12, tmp_path):
    from pixelwise.export.onnx import export_onnx

    data, run, _ = run12
    result = export_onnx(run, tmp_path / "model.onnx")
    assert result["argmax_agreement"] >= 0.999
    onnx_seg, torch_seg = Segmenter.load(tmp_path / "model.onnx"), Segmenter.load(run, device="cpu")
    assert onnx_seg.backend.input_dtype == np.float32 and onnx_seg.spec.dtype == "uint16"
    assert onnx_seg.backend.session.get_inputs()[0].type == "tensor(float)"
    image = next((data / "val" / "images").iterdir())
    assert (onnx_seg.predict(image) == torch_seg.predict(image)).mean() > 0.999
    with pytest.raises(ValueError, match="trained on uint16 images, got uint8"):
        onnx_seg.predict(np.zeros((32, 32), np.uint8))  # 8-bit pixels into a 12-bit model: refused


def _scene(tmp_path: Path, crs: str | None = sd.UTM33N) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(3)
    truth = np.concatenate([sd.regions(rng), sd.regions(rng)], axis=1)[:40]  # 40 x 96, not a tile multiple
    path = tmp_path / "scene.tif"
    sd.write_geotiff(path, sd.twelve_bit(rng, truth), crs=crs)
    return path, truth


def test_geotiff_prediction_keeps_crs_transform_and_size_whole_and_tiled(run12, tmp_path):
    _, run, _ = run12
    scene, truth = _scene(tmp_path)
    seg = Segmenter.load(run, device="cpu")
    masks = {}
    for tile in (0, 32):
        out = tmp_path / f"out{tile}"
        report = predict_files(seg, [scene], out, options=PredictOptions(tile=tile, save_probs=True))
        assert sorted(p.name for p in report.written) == ["scene.tif", "scene_entropy.tif", "scene_probs.tif"]
        with rasterio.open(scene) as src, rasterio.open(out / "scene.tif") as mask:
            assert mask.crs == src.crs == CRS.from_epsg(32633)
            assert mask.transform == src.transform and (mask.width, mask.height) == (96, 40)
            assert mask.count == 1 and mask.dtypes[0] == "uint8" and mask.colormap(1)[1][:3] == seg.table.palette[1]
            masks[tile] = mask.read(1)
        with rasterio.open(out / "scene_probs.tif") as probs:
            assert probs.count == 2 and probs.dtypes[0] == "float32" and probs.descriptions == ("background", "object")
            assert probs.crs == CRS.from_epsg(32633) and np.allclose(probs.read().sum(axis=0), 1, atol=1e-4)
    assert (masks[0] == truth).mean() > 0.95 and (masks[0] == masks[32]).mean() > 0.98


def test_geotiff_is_read_and_written_window_by_window(run12, tmp_path, monkeypatch):
    from pixelwise.inference import geo

    _, run, _ = run12
    scene, _ = _scene(tmp_path)
    windows: list[tuple[int, int]] = []
    read = geo.WindowReader.__getitem__

    def spy(self, key):
        windows.append((key[0].stop - key[0].start, key[1].stop - key[1].start))
        return read(self, key)

    monkeypatch.setattr(geo.WindowReader, "__getitem__", spy)
    monkeypatch.setattr(geo, "BLOCK", 16)  # rows reach the file in whole blocks of the output's tiling
    predict_files(Segmenter.load(run, device="cpu"), [scene], tmp_path / "out", options=PredictOptions(tile=32))
    assert windows and max(h * w for h, w in windows) == 32 * 32  # never more than one tile of the raster
    with rasterio.open(tmp_path / "out" / "scene.tif") as mask:
        assert mask.read(1).shape == (40, 96)


def test_geotiff_without_crs_warns_and_plain_tiff_needs_no_geo_extra(run12, tmp_path, monkeypatch):
    _, run, _ = run12
    scene, _ = _scene(tmp_path, crs=None)
    result = CliRunner().invoke(app, ["predict", str(run), str(scene), "--out", str(tmp_path / "a"), "--tile", "32",
                                      "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "GeoTIFF without a CRS" in " ".join(result.output.split())
    from pixelwise.data import raster
    from pixelwise.errors import PixelwiseError

    def missing(*args, **kwargs):
        raise PixelwiseError(f"rasterio is needed; install the geo extra: {raster.GEO_INSTALL}")

    monkeypatch.setattr(raster, "rasterio_module", missing)
    seg = Segmenter.load(run, device="cpu")
    with pytest.raises(PixelwiseError, match="install the geo extra"):  # never a mask without its georeference
        predict_files(seg, [scene], tmp_path / "b")
    plain = tmp_path / "plain.tif"
    import tifffile

    tifffile.imwrite(plain, read_image(scene, 1)[:, :, 0])
    predict_files(seg, [plain], tmp_path / "c")
    assert read_mask(tmp_path / "c" / "plain.tif").shape == (40, 96)


def test_preview_of_five_band_data_shows_a_chosen_triple(tmp_path):
    data = sd.write_dataset(tmp_path / "data", "5band", n_train=4, n_val=1)
    result = CliRunner().invoke(app, ["data", "preview", str(data), "--crop-size", "32", "--samples", "2",
                                      "--augment", "strong", "--bands", "4,3,2", "--out", str(tmp_path / "p.png")])
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "p.png").mode in ("RGB", "RGBA")
