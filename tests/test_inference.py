"""Sliding-window inference, test-time augmentation, probabilities/uncertainty outputs, ONNX export and backend."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_overrides
from PIL import Image

from pixelwise.config import load_config
from pixelwise.errors import PixelwiseError
from pixelwise.inference.files import entropy_image
from pixelwise.inference.onnx_backend import softmax
from pixelwise.inference.sliding_window import (
    gaussian_window,
    sliding_window,
    sliding_window_mask,
    sliding_window_probs,
    tile_starts,
)
from pixelwise.inference.tta import tta_probs


def constant_model(values: list[float]):
    def fn(batch: np.ndarray) -> np.ndarray:
        n, _, h, w = batch.shape
        return np.broadcast_to(np.asarray(values, np.float32)[None, :, None, None], (n, len(values), h, w)).copy()
    return fn


def pixel_model(batch: np.ndarray) -> np.ndarray:
    """Each pixel's probabilities depend on that pixel alone: tiling must not change anything."""
    x = batch[:, :1].astype(np.float32) / 255.0
    return softmax(np.concatenate([4 * x, 4 * (1 - x), np.sin(6 * x)], axis=1))


def column_ramp(image: np.ndarray) -> np.ndarray:
    """Probabilities that encode the column within the input: p0 = x / (W - 1)."""
    h, w = image.shape[:2]
    ramp = np.tile(np.linspace(0.0, 1.0, w, dtype=np.float32), (h, 1))
    return np.stack([ramp, 1 - ramp])


@pytest.mark.parametrize(("length", "tile", "overlap"), [(100, 32, 0.25), (64, 32, 0.5), (20, 32, 0.25), (33, 32, 0)])
def test_tile_starts_cover_the_length(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    covered = np.zeros(length, bool)
    for s in starts:
        covered[s : s + tile] = True
    assert covered.all() and starts[0] == 0 and starts == sorted(set(starts))
    assert starts[-1] + min(tile, length) == length


def test_gaussian_window_peaks_in_the_middle_with_a_floor():
    w = gaussian_window(32, 48)
    assert w.shape == (32, 48) and w.max() == pytest.approx(1.0, abs=1e-3)
    assert w[16, 24] > w[0, 24] > w[0, 0] > 0 and w.min() >= 1e-6  # the floor is per axis: corners stay lowest
    assert np.allclose(w, w[::-1, ::-1])


@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
def test_constant_model_is_reconstructed_exactly(overlap):
    image = np.random.default_rng(0).integers(0, 256, (70, 45, 3), dtype=np.uint8)
    probs = sliding_window_probs(constant_model([0.2, 0.3, 0.5]), image, (32, 32), overlap)
    assert probs.shape == (3, 70, 45)
    assert np.allclose(probs, np.array([0.2, 0.3, 0.5])[:, None, None], atol=1e-6)


def test_tiling_leaves_no_seams_and_streams_rows():
    image = np.random.default_rng(1).integers(0, 256, (97, 83, 1), dtype=np.uint8)
    whole = pixel_model(image.transpose(2, 0, 1)[None])[0]
    tiled = sliding_window_probs(pixel_model, image, (32, 24), 0.25, batch_size=3)
    assert np.allclose(tiled, whole, atol=1e-5)
    assert (sliding_window_mask(pixel_model, image, (32, 24), 0.25) == whole.argmax(axis=0)).all()
    blocks = [(y0, y1) for y0, y1, _ in sliding_window(pixel_model, image, (32, 24), 0.25)]
    assert blocks[0][0] == 0 and blocks[-1][1] == 97
    assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:], strict=False))  # each row handed out once
    assert max(y1 - y0 for y0, y1 in blocks) <= 32  # only a band of rows is held


def box_model(batch: np.ndarray) -> np.ndarray:
    """A 5x5 mean with zero padding before the per-pixel classifier: like a CNN, it sees the tile's border."""
    x = batch[:, :1].astype(np.float32) / 255.0
    n, _, h, w = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)))
    mean = sum(padded[:, :, dy : dy + h, dx : dx + w] for dy in range(5) for dx in range(5)) / 25
    return softmax(np.concatenate([8 * mean, 8 * (1 - mean), np.sin(12 * mean)], axis=1))


@pytest.mark.parametrize("overlap", [0.25, 0.5])
def test_gaussian_blending_hides_tile_borders_of_a_model_with_context(overlap):
    # each tile sees zeros beyond its border; the neighbour, which sees the true pixels there, must win
    rng = np.random.default_rng(2)
    image = (np.kron(rng.integers(0, 256, (20, 24)), np.ones((6, 6))) + rng.integers(-20, 20, (120, 144)))
    image = image.clip(0, 255).astype(np.uint8)[..., None]
    whole = box_model(image.transpose(2, 0, 1)[None])[0]
    tiled = sliding_window_probs(box_model, image, (48, 48), overlap)
    assert (tiled.argmax(axis=0) == whole.argmax(axis=0)).mean() > 0.999
    # a plain average of overlapping tiles (or a floor on the 2-D weights, at image borders) is off by up to ~0.4
    assert np.abs(tiled - whole).max() < 0.02


def test_tta_maps_every_variant_back():
    image = np.zeros((20, 30, 3), np.uint8)
    ramp = column_ramp(image)
    # a horizontal flip, mapped back, mirrors the ramp: the mean of both is flat at 0.5
    assert np.allclose(tta_probs(column_ramp, image, flips=("h",)), 0.5, atol=1e-6)
    # a vertical flip does not touch columns: the ramp survives
    assert np.allclose(tta_probs(column_ramp, image, flips=("v",)), ramp, atol=1e-6)
    # another scale is resized back to the image's size
    both = tta_probs(column_ramp, image, flips=(), scales=(0.5, 1.0))
    assert both.shape == ramp.shape and np.abs(both - ramp).max() < 0.05
    with pytest.raises(ValueError):
        tta_probs(column_ramp, image, flips=("x",))


@pytest.mark.parametrize("shape", [(40, 1), (1, 40), (40, 2), (1, 1)])
def test_tta_on_an_image_one_pixel_wide_or_tall(shape):
    """A flipped side 1 pixel long keeps a negative stride through np.ascontiguousarray (numpy counts the array
    as contiguous), which torch.from_numpy refused: TTA failed on such an image or on a copy scaled down to one."""
    import torch

    from pixelwise.data.classes import ClassTable
    from pixelwise.engine.runtime import resolve_runtime
    from pixelwise.inference.predictor import Segmenter
    from pixelwise.inference.torch_backend import TorchBackend
    from pixelwise.models import Normalized

    torch.manual_seed(0)
    net = Normalized(torch.nn.Conv2d(3, 2, 3, padding=1), [0.5] * 3, [0.25] * 3)
    backend = TorchBackend(net, resolve_runtime("cpu", "off"))
    seg = Segmenter(backend, ClassTable(names=["a", "b"]), 3)
    image = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    plain = seg.probabilities(image)
    for scales in ((1.0,), (0.5, 1.0)):
        probs = seg.probabilities(image, tta=True, scales=scales)
        assert probs.shape == (2, *shape) and np.isfinite(probs).all() and np.allclose(probs.sum(0), 1, atol=1e-5)
    # a flip along a side 1 pixel long changes nothing: its TTA is the plain prediction
    for flip, axis in (("v", 0), ("h", 1)):
        if shape[axis] == 1:
            assert np.allclose(seg.probabilities(image, tta=True, flips=(flip,)), plain, atol=1e-6)
            flipped = np.flip(image.transpose(2, 0, 1)[None], axis=axis + 2)  # the backend called directly
            assert np.allclose(backend(flipped), plain[None], atol=1e-6)


def test_entropy_image():
    uniform = np.full((4, 2, 2), 0.25, np.float32)
    certain = np.zeros((4, 2, 2), np.float32)
    certain[1] = 1.0
    assert (entropy_image(uniform) == 255).all() and (entropy_image(certain) == 0).all()


# --- the trained tiny model: backends, export, int8 ------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_run(synthetic_data, tmp_path_factory) -> Path:
    from pixelwise.engine.trainer import Trainer

    run = tmp_path_factory.mktemp("infer") / "run"
    cfg = load_config(None, tiny_overrides(synthetic_data) + ["train.epochs=2", "train.report=false",
                                                               "train.tensorboard=false"])
    Trainer(cfg, run).fit()
    return run


@pytest.fixture(scope="module")
def onnx_model(tiny_run) -> tuple[Path, dict]:
    pytest.importorskip("onnxruntime")
    from pixelwise.export.onnx import export_onnx

    result = export_onnx(tiny_run)
    return Path(result["path"]), result


def test_segmenter_tiles_large_images_and_agrees_with_whole_image(tiny_run, synthetic_data):
    from pixelwise.inference.predictor import Segmenter

    seg = Segmenter.load(tiny_run, device="cpu")
    image = np.asarray(Image.open(sorted((synthetic_data / "val" / "images").iterdir())[0]).convert("RGB"))
    big = np.tile(image, (3, 3, 1))  # 192x192 > 16 crops of 32x32: tiled automatically
    assert seg._tile(big.shape, None) is not None and seg._tile(image.shape, None) is None
    whole = seg.predict(big, tile=0)
    tiled = seg.predict(big, tile=64, overlap=0.5)
    assert tiled.shape == whole.shape == big.shape[:2]
    assert (tiled == whole).mean() > 0.9
    probs = seg.probabilities(image, tta=True, scales=(1.0, 1.5))
    assert probs.shape == (seg.table.num_classes, *image.shape[:2])
    assert np.allclose(probs.sum(axis=0), 1.0, atol=1e-4)


def test_onnx_export_parity_and_metadata(onnx_model, tiny_run):
    import onnx

    path, result = onnx_model
    assert result["argmax_agreement"] >= 0.999 and result["max_abs_logit_diff"] < 1e-2
    proto = onnx.load(str(path))
    meta = json.loads({p.key: p.value for p in proto.metadata_props}["pixelwise"])
    assert meta["classes"]["names"] == ["background", "disc", "square", "triangle"] and meta["channels"] == 3
    graph_input = proto.graph.input[0]
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    assert dims[0] == "batch" and dims[2] == "height" and dims[3] == "width"


def test_onnx_segmenter_matches_pytorch_and_needs_no_torch(onnx_model, tiny_run, synthetic_data, tmp_path):
    from pixelwise.inference.predictor import Segmenter

    path, _ = onnx_model
    image_path = sorted((synthetic_data / "val" / "images").iterdir())[0]
    torch_mask = Segmenter.load(tiny_run, device="cpu", amp="off").predict(image_path)  # fp32, like the export
    onnx_seg = Segmenter.load(path)
    assert onnx_seg.backend.name == "onnxruntime"
    assert (onnx_seg.predict(image_path) == torch_mask).mean() > 0.999
    assert onnx_seg.predict(image_path, tile=32, tta=True).shape == torch_mask.shape
    # in a fresh interpreter where importing torch fails
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import numpy as np, pixelwise as pw\n"
        f"seg = pw.Segmenter.load({str(path)!r})\n"
        f"m = seg.predict({str(image_path)!r}, tile=32, tta=True)\n"
        f"np.save({str(tmp_path / 'm.npy')!r}, m)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert np.load(tmp_path / "m.npy").shape == torch_mask.shape


def test_an_onnx_model_without_onnx_runtime_says_which_extra_to_install(onnx_model, tiny_run, tmp_path):
    # ONNX Runtime is an extra (onnx or onnx-gpu, which clash): without it the CLI answers in one line
    path, _ = onnx_model
    code = (
        "import sys; sys.modules['onnxruntime'] = None\n"
        "from pixelwise.cli import main\n"
        f"sys.argv = ['pixelwise', 'predict', {str(path)!r}, {str(path)!r}, '--out', {str(tmp_path / 'p')!r}]\n"
        "main()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 1, done.stderr
    said = " ".join(done.stderr.split())  # the console wraps long lines
    assert "pip install 'pixelwise[onnx]'" in said and "'pixelwise[onnx-gpu]'" in said
    assert "Traceback" not in said


def test_int8_quantization_is_compared_with_fp32(onnx_model, tiny_run):
    from pixelwise.export.quantize import compare_on_split, quantize
    from pixelwise.inference.predictor import Segmenter

    path, _ = onnx_model
    int8 = quantize(tiny_run, path, calibration_images=8)
    assert int8.name == "model.int8.onnx" and int8.stat().st_size < path.stat().st_size
    cmp = compare_on_split(tiny_run, path, int8)
    assert cmp["images"] == 4 and 0 <= cmp["pixel_agreement"] <= 1
    assert cmp["miou_change_points"] == pytest.approx(100 * (cmp["int8_miou"] - cmp["fp32_miou"]))
    assert Segmenter.load(int8).table.names[0] == "background"  # metadata carried over


def test_predict_cli_with_tiles_tta_and_probabilities(onnx_model, tiny_run, synthetic_data, tmp_path):
    from typer.testing import CliRunner

    from pixelwise.cli import app

    images = synthetic_data / "val" / "images"
    for model in (str(tiny_run), str(onnx_model[0])):
        out = tmp_path / Path(model).name
        result = CliRunner().invoke(app, ["predict", model, str(images), "--out", str(out), "--tile", "32",
                                          "--tta", "--scales", "1,1.25", "--save-probs", "--device", "cpu"])
        assert result.exit_code == 0, result.output
        stem = sorted(images.iterdir())[0].stem
        probs = np.load(out / f"{stem}_probs.npz")
        assert probs["probabilities"].dtype == np.float16 and probs["probabilities"].shape == (4, 64, 64)
        assert list(probs["classes"]) == ["background", "disc", "square", "triangle"]
        mask = np.asarray(Image.open(out / f"{stem}.png"))
        assert (mask == probs["probabilities"].astype(np.float32).argmax(axis=0)).mean() > 0.99
        assert Image.open(out / f"{stem}_entropy.png").mode == "L"
        assert "smaller than the training crops" not in result.output  # tile 32 = crop 32
    small = CliRunner().invoke(app, ["predict", str(onnx_model[0]), str(images), "--out", str(tmp_path / "small"),
                                     "--tile", "16"])
    assert small.exit_code == 0 and "--tile 16 is smaller than the training crops (32x32)" in small.output


def test_bench_cli_table(onnx_model, tiny_run):
    from typer.testing import CliRunner

    from pixelwise.cli import app

    result = CliRunner().invoke(app, ["bench", str(tiny_run), "--images", "4", "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    rows = json.loads((tiny_run / "bench.json").read_text())
    assert [r["backend"] for r in rows] == ["pytorch-fp32", "pytorch-bf16", "onnx-fp32", "onnx-int8"]
    assert all(r.get("images_per_second", 1) > 0 for r in rows)


def test_an_architecture_onnx_cannot_export_is_one_clear_error(tmp_path):
    # pspnet pools to a fixed grid of bins: the exporter cannot keep the image size free (measured for upernet too)
    from pixelwise.config import ModelConfig
    from pixelwise.export.onnx import _export_graph
    from pixelwise.models.factory import build_network

    cfg = ModelConfig(arch="pspnet", encoder="resnet18", normalization="encoder", mean=[0.5] * 3, std=[0.2] * 3)
    model = build_network(cfg, 3, 3, pretrained=False)
    info = {"arch": "pspnet", "encoder": "resnet18", "input_dtype": "uint8"}
    with pytest.raises(PixelwiseError, match=r"pspnet \(resnet18\) cannot be exported to ONNX.*pixelwise serve RUN"):
        _export_graph(model, 3, 64, tmp_path / "m.onnx", info)


def test_export_command_with_int8(tiny_run, tmp_path):
    pytest.importorskip("onnxruntime")
    from typer.testing import CliRunner

    from pixelwise.cli import app

    out = tmp_path / "m.onnx"
    result = CliRunner().invoke(app, ["export", str(tiny_run), "--out", str(out), "--int8"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout[result.stdout.index("{"):])
    assert payload["argmax_agreement"] >= 0.999 and out.is_file()
    assert Path(payload["int8"]["path"]) == tmp_path / "m.int8.onnx" and "miou_change_points" in payload["int8"]
    result = CliRunner().invoke(app, ["export", str(tiny_run), "--to", "tflite"])
    assert result.exit_code != 0


@pytest.mark.parametrize("arch", ["unet", "fpn"])
def test_int8_export_of_an_efficientnet_lite_network(arch, synthetic_data, tmp_path, monkeypatch):
    """The encoder `train --auto` picks when the offline weights are installed: onnxruntime's symbolic shape
    inference gives up on its graph, and the int8 export fell over with a raw traceback. Its TF-"same" padding
    computes pad sizes from Shape: quantized, they came out wrong, and FPN's int8 model failed at every size but
    the calibration images' (Unet's lost 3 mIoU points on CamVid)."""
    pytest.importorskip("onnxruntime")
    from pixelwise.engine.trainer import Trainer
    from pixelwise.export.onnx import export_onnx
    from pixelwise.export.quantize import quantize
    from pixelwise.inference.predictor import Segmenter

    run = tmp_path / "lite"
    cfg = load_config(None, tiny_overrides(synthetic_data) + [
        "model.encoder=tu-tf_efficientnet_lite0", "model.options={}", "train.max_steps=1", "train.report=false",
        "train.tensorboard=false", f"model.arch={arch}"])
    Trainer(cfg, run).fit()
    fp32 = Path(export_onnx(run)["path"])
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    int8 = quantize(run, fp32, calibration_images=4)
    assert list(cwd.iterdir()) == []  # onnxruntime's failed symbolic pass dumps its model into the working folder
    image = np.asarray(Image.open(sorted((synthetic_data / "val" / "images").iterdir())[0]))
    assert Segmenter.load(int8).predict(image).shape == image.shape[:2]
    other = np.random.default_rng(0).integers(0, 256, (100, 150, 3), dtype=np.uint8)  # not the calibration size
    assert Segmenter.load(int8).predict(other).shape == (100, 150)


def test_size_computations_stay_out_of_int8():
    """Shape -> arithmetic -> Pad's pads: those nodes are excluded from quantization; the data path is not."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from pixelwise.export.quantize import size_nodes

    const = [helper.make_tensor(n, TensorProto.FLOAT, [], [v]) for n, v in (("s", 32.0), ("h", 2.0))]
    nodes = [helper.make_node("Shape", ["x"], ["shape"], name="shape"),
             helper.make_node("Gather", ["shape", "two"], ["hi"], name="gather"),
             helper.make_node("Cast", ["hi"], ["hf"], to=TensorProto.FLOAT, name="cast"),
             helper.make_node("Div", ["hf", "s"], ["d"], name="div"),
             helper.make_node("Ceil", ["d"], ["c"], name="ceil"),
             helper.make_node("Mul", ["c", "s"], ["m"], name="mul"),
             helper.make_node("Sub", ["m", "hf"], ["extra"], name="sub"),
             helper.make_node("Cast", ["extra"], ["pad_i"], to=TensorProto.INT64, name="cast_back"),
             helper.make_node("Concat", ["zeros6", "pad_i", "zero1"], ["pads"], axis=0, name="concat"),
             helper.make_node("Pad", ["x", "pads"], ["padded"], name="pad"),
             helper.make_node("Mul", ["padded", "h"], ["y"], name="scale")]  # a Mul on the data path
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, None, None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, None, None])],
        initializer=[*const, helper.make_tensor("two", TensorProto.INT64, [], [2]),
                     helper.make_tensor("zeros6", TensorProto.INT64, [6], [0] * 6),
                     helper.make_tensor("zero1", TensorProto.INT64, [1], [0])])
    onnx.checker.check_model(helper.make_model(graph))
    assert size_nodes(graph) == ["cast", "cast_back", "ceil", "concat", "div", "gather", "mul", "sub"]
