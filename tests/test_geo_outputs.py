"""Raster prediction outputs: nodata kept as nodata, read errors reported per file, TIFF orientation, RPCs, and
inputs on another scale than the training data (``inference.geo``, ``inference.range_check``).

A fake backend stands in for a trained network (no training here): class 1 where the first channel is above the
middle of its training range, so every expected mask is known exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scientific_data as sd
import tifffile

from pixelwise.data.classes import ClassTable
from pixelwise.data.pixels import ImageSpec
from pixelwise.inference.files import PredictOptions, predict_files
from pixelwise.inference.predictor import Segmenter

LOW, HIGH = 1000.0, 1200.0  # the fake model's training range (model.clip) in every channel


class Threshold:
    """(N, C, h, w) -> probabilities of class 1 rising with channel 1 around the middle of the training range."""

    def __init__(self, channels: int) -> None:
        self.meta = {"clip": [[LOW, HIGH]] * channels}  # as an ONNX model's metadata holds it

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        p1 = 1 / (1 + np.exp(-np.clip((batch[:, :1].astype(np.float32) - (LOW + HIGH) / 2) / 10, -50, 50)))
        return np.concatenate([1 - p1, p1], axis=1).astype(np.float32)


def _seg(channels: int = 3, dtype: str = "uint16", nan_fill: float | None = None) -> Segmenter:
    spec = ImageSpec(dtype=dtype, nan_fill=nan_fill)
    return Segmenter(Threshold(channels), ClassTable(names=["background", "object"]), channels, (32, 32), spec)


def _pixels(h: int = 40, w: int = 56, channels: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, C) uint16 in the training range, and the class the fake model gives each pixel."""
    truth = np.zeros((h, w), bool)
    truth[8:30, 20:50] = True
    img = np.repeat(np.where(truth, 1150, 1050)[:, :, None], channels, axis=2).astype(np.uint16)
    return img, truth.astype(np.uint8)


def _read(path: Path) -> tuple[np.ndarray, object]:
    with sd.rasterio().open(path) as f:
        return f.read(), f.nodata


@pytest.mark.parametrize("kind", ["nodata value", "internal mask", "float NaN"])
def test_nodata_pixels_are_nodata_in_the_mask_probabilities_and_entropy(tmp_path, kind):
    rio = sd.rasterio()
    img, truth = _pixels()
    nodata = np.zeros(truth.shape, bool)
    nodata[:, :6] = nodata[-5:, :] = True  # a border without data, as a scene's footprint leaves
    img[nodata] = 0
    img[20, 10, 1] = 0  # one band at the nodata value: the pixel still has data (GDAL's dataset mask)
    path, seg = tmp_path / "scene.tif", _seg()
    if kind == "float NaN":
        data = img.astype(np.float32)
        data[nodata] = np.nan
        sd.write_geotiff(path, data)
        seg = _seg(dtype="float32", nan_fill=0.0)
    else:
        sd.write_geotiff(path, img)
        with rio.open(path, "r+") as f:
            if kind == "nodata value":
                f.nodata = 0
            else:
                with rio.Env(GDAL_TIFF_INTERNAL_MASK=True):
                    f.write_mask(~nodata)
    report = predict_files(seg, [path], tmp_path / "out", options=PredictOptions(tile=32, save_probs=True))
    assert not report.failed and not report.warnings, report
    (mask,), mask_nodata = _read(tmp_path / "out" / "scene.tif")
    assert mask_nodata == 255 and (mask[nodata] == 255).all()
    assert (mask[~nodata] == truth[~nodata]).all()  # the partly-nodata pixel included
    probs, probs_nodata = _read(tmp_path / "out" / "scene_probs.tif")
    assert np.isnan(probs_nodata) and np.isnan(probs[:, nodata]).all() and np.isfinite(probs[:, ~nodata]).all()
    (entropy,), entropy_nodata = _read(tmp_path / "out" / "scene_entropy.tif")
    assert entropy_nodata == 255 and (entropy[nodata] == 255).all() and (entropy[~nodata] <= 254).all()
    with rio.open(tmp_path / "out" / "scene.tif") as f:
        assert f.colormap(1)[255][3] == 0  # drawn as no class
        assert f.colormap(1)[1][:3] == seg.table.palette[1]


def test_nodata_in_a_plain_tiff_read_whole(tmp_path, monkeypatch):
    from pixelwise.data import raster
    from pixelwise.errors import PixelwiseError

    img, truth = _pixels()
    img[:4] = 7
    path = tmp_path / "plain.tif"  # GDAL_NODATA as GDAL writes it; read by tifffile without the geo extra
    tifffile.imwrite(path, img, photometric="minisblack", planarconfig="contig", extratags=[(42113, "s", 0, "7", True)])

    def missing(*args, **kwargs):
        raise PixelwiseError(f"rasterio is needed; install the geo extra: {raster.GEO_INSTALL}")

    monkeypatch.setattr(raster, "rasterio_module", missing)
    predict_files(_seg(), [path], tmp_path / "out", options=PredictOptions(save_probs=True))
    with tifffile.TiffFile(tmp_path / "out" / "plain.tif") as tif:
        mask = tif.asarray()
        assert tif.pages[0].tags["GDAL_NODATA"].value == "255"
    assert (mask[:4] == 255).all() and (mask[4:] == truth[4:]).all()
    assert np.isnan(tifffile.imread(tmp_path / "out" / "plain_probs.tif")[:, :4]).all()
    assert (tifffile.imread(tmp_path / "out" / "plain_entropy.tif")[:4] == 255).all()


def test_unreadable_rasters_are_reported_and_the_next_file_is_predicted(tmp_path):
    rio = sd.rasterio()
    img, _ = _pixels(256, 256)
    good, broken = tmp_path / "b_good.tif", tmp_path / "a_truncated.tif"
    sd.write_geotiff(good, img)
    rng = np.random.default_rng(0)  # noise: blocks that deflate cannot shrink, spread over the whole file
    sd.write_geotiff(broken, rng.integers(1000, 1200, (512, 512, 3)).astype(np.uint16), tiled=True)
    data = broken.read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    vrt = tmp_path / "mixed.vrt"  # a uint16 band beside a float32 one: GDAL cannot read them as one array
    sd.write_geotiff(tmp_path / "f32.tif", img[:, :, :1].astype(np.float32))
    bands = [("UInt16", "b_good.tif"), ("Float32", "f32.tif")]
    vrt.write_text(f'<VRTDataset rasterXSize="256" rasterYSize="256"><SRS>{sd.UTM33N}</SRS>' + "".join(
        f'<VRTRasterBand dataType="{t}" band="{i + 1}"><SimpleSource><SourceFilename relativeToVRT="1">{f}'
        "</SourceFilename><SourceBand>1</SourceBand></SimpleSource></VRTRasterBand>" for i, (t, f) in enumerate(bands)
    ) + "</VRTDataset>")
    with rio.open(vrt) as f:
        assert f.dtypes == ("uint16", "float32")
    report = predict_files(_seg(), [broken, good], tmp_path / "out", options=PredictOptions(tile=64))
    assert [p.name for p in report.written] == ["b_good.tif"]
    (failure,) = report.failed
    assert str(broken) in failure and "cannot be read" in failure and "written" not in failure
    assert not list((tmp_path / "out").glob(".*.tmp"))  # nothing half-written left behind
    report = predict_files(_seg(2), [vrt], tmp_path / "out2")
    (failure,) = report.failed
    assert str(vrt) in failure and "bands of different types (float32, uint16)" in failure


def test_tiff_orientation_is_applied_to_a_plain_tiff_as_training_applies_it(tmp_path):
    sd.rasterio()
    img, _ = _pixels(24, 40)
    img[:, :10] = 1150  # not symmetric: a turned mask differs from an unturned one
    path = tmp_path / "o6.tif"
    tifffile.imwrite(path, img, photometric="minisblack", planarconfig="contig", extratags=[(274, 3, 1, 6, True)])
    seg = _seg()
    off = tmp_path / "o6_x16.tif"  # read whole, it is checked against the training range too
    tifffile.imwrite(off, img * 16, photometric="minisblack", planarconfig="contig", extratags=[(274, 3, 1, 6, True)])
    report = predict_files(seg, [path, off], tmp_path / "out")
    assert not report.failed, report
    mask = tifffile.imread(tmp_path / "out" / "o6.tif")
    assert mask.shape == (40, 24) and (mask == seg.predict(path)).all()
    (warning,) = report.warnings
    assert warning.startswith(f"{off}: ") and "channel 1: trained on 1000..1200" in warning


def test_rpcs_are_carried_to_every_output(tmp_path):
    rio = sd.rasterio()
    from rasterio.rpc import RPC

    img, truth = _pixels()
    h, w = truth.shape
    rpc = RPC(height_off=100, height_scale=500, lat_off=52, lat_scale=0.01, line_den_coeff=[1] + [0] * 19,
              line_num_coeff=[0, 0, -1] + [0] * 17, line_off=h / 2, line_scale=h / 2, long_off=13, long_scale=0.01,
              samp_den_coeff=[1] + [0] * 19, samp_num_coeff=[0, 1] + [0] * 18, samp_off=w / 2, samp_scale=w / 2)
    path = tmp_path / "rpcs.tif"
    with rio.open(path, "w", driver="GTiff", height=h, width=w, count=3, dtype="uint16", rpcs=rpc) as f:
        f.write(img.transpose(2, 0, 1))
    report = predict_files(_seg(), [path], tmp_path / "out", options=PredictOptions(save_probs=True))
    assert not report.failed and not report.warnings, report  # no "GeoTIFF without a CRS" either
    for name in ("rpcs.tif", "rpcs_probs.tif", "rpcs_entropy.tif"):
        with rio.open(tmp_path / "out" / name) as f:
            assert f.rpcs is not None, name
            for key in ("line_off", "samp_scale", "lat_off", "long_scale", "line_num_coeff", "samp_num_coeff"):
                assert np.allclose(getattr(f.rpcs, key), getattr(rpc, key)), (name, key)
            if name == "rpcs.tif":
                assert (f.read(1) == truth).all()


def test_range_warning_flags_channels_on_another_scale_only():
    from pixelwise.inference.range_check import range_warning

    rng = np.random.default_rng(0)
    clip = [(LOW, HIGH), (LOW, HIGH)]
    good = rng.uniform(LOW, HIGH, (64, 64, 2))
    good[::10, ::10] = [0, 4095]  # 1% dead and hot pixels, as in any training image
    assert range_warning("a.tif", clip, good) is None
    assert range_warning("a.tif", clip, good + 90) is None  # a brighter scene, within half the range's width
    assert range_warning("a.tif", None, good * 16) is None  # an 8-bit model has no range to compare
    eight_bit = good.copy()
    eight_bit[:, :, 1] //= 16  # 8-bit values stored as uint16, in the second channel only
    text = range_warning("a.tif", clip, eight_bit, bands=(4, 8))
    assert text.startswith("a.tif: ") and "channel 2 (band 8): trained on 1000..1200" in text
    assert "channel 1" not in text
    border = np.zeros((64, 64), bool)
    border[:, :40] = True  # most of the file is nodata (0): left out, not counted as off-scale
    nodata = np.where(border[:, :, None], good, 0)
    assert range_warning("a.tif", clip, nodata, ~border) is not None
    assert range_warning("a.tif", clip, nodata, border) is None


def test_stored_clip_of_onnx_and_pytorch_backends():
    from types import SimpleNamespace

    from pixelwise.inference.range_check import stored_clip

    assert stored_clip(Threshold(2)) == [(LOW, HIGH), (LOW, HIGH)]
    net = SimpleNamespace(low=np.array([[[[1.0]], [[2.0]]]]), high=np.array([[[[3.0]], [[4.0]]]]))
    assert stored_clip(SimpleNamespace(model=net)) == [(1.0, 3.0), (2.0, 4.0)]
    ensemble = SimpleNamespace(model=SimpleNamespace(members=[net]))
    assert stored_clip(ensemble) == [(1.0, 3.0), (2.0, 4.0)]
    assert stored_clip(SimpleNamespace(model=SimpleNamespace(low=None, high=None))) is None


@pytest.mark.parametrize("scale", [16, 1 / 16])
def test_streamed_prediction_warns_once_for_a_file_on_another_scale(tmp_path, scale):
    img, _ = _pixels(300, 300)
    ok, off = tmp_path / "ok.tif", tmp_path / "off.tif"
    sd.write_geotiff(ok, img)
    sd.write_geotiff(off, (img * scale).astype(np.uint16))
    report = predict_files(_seg(), [ok, off], tmp_path / "out", options=PredictOptions(tile=128))
    assert not report.failed
    (warning,) = report.warnings
    assert warning.startswith(f"{off}: ") and "channel 1: trained on 1000..1200" in warning


def test_a_16_bit_png_on_another_scale_is_warned_about_too(tmp_path):
    """Not a raster: read whole by predict_files, checked against the training range all the same."""
    import cv2

    img, _ = _pixels(64, 64)
    ok, off = tmp_path / "ok.png", tmp_path / "off.png"
    cv2.imwrite(str(ok), img)
    cv2.imwrite(str(off), (img // 16).astype(np.uint16))  # 8-bit values stored in a 16-bit PNG
    report = predict_files(_seg(), [ok, off], tmp_path / "out")
    assert not report.failed
    (warning,) = report.warnings
    assert warning.startswith(f"{off}: ") and "trained on 1000..1200" in warning
