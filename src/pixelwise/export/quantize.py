"""Static int8 quantization of an exported model with ONNX Runtime's tools, calibrated on training images.

QDQ format, per-channel signed int8 weights, unsigned int8 activations with min-max ranges from whole training
images (the graph's uint8 input and its normalisation stay as they are). The result is checked on the
validation split: pixel agreement with the fp32 model and the mIoU of each.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pixelwise.config import load_run_config
from pixelwise.data.build import build_eval_dataset
from pixelwise.data.classes import IGNORE
from pixelwise.engine.metrics import metrics_from_confusion
from pixelwise.errors import PixelwiseError
from pixelwise.export.onnx import sample_images
from pixelwise.inference.onnx_backend import METADATA_KEY, OnnxBackend, pad_to_multiple
from pixelwise.progress import track


def _reader(images: list[np.ndarray], name: str, multiple: int, min_size: int) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(images)

        def get_next(self) -> dict[str, np.ndarray] | None:
            image = next(self.items, None)
            if image is None:
                return None
            return {name: pad_to_multiple(np.ascontiguousarray(image.transpose(2, 0, 1)[None]), multiple, min_size)}

    return Reader()


@contextlib.contextmanager
def _working_dir(path: Path) -> Iterator[None]:
    """Run in ``path``: onnxruntime's symbolic shape inference, when it fails, saves the half-inferred model as
    ``sym_shape_infer_temp.onnx`` plus a ``<uuid>.data`` file into the working directory (the user's) before it
    raises; in a temporary folder they go with it. Paths handed over must be absolute."""
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def int8_path(fp32: Path) -> Path:
    """Where the int8 model of ``fp32`` goes by default: beside it, NAME.int8.onnx."""
    return fp32.with_name(fp32.stem + ".int8.onnx")


def quantize(run_dir: Path, fp32: Path, out: Path | None = None, calibration_images: int = 32,
             data_root: Path | None = None) -> Path:
    """Write the int8 model (default: beside ``fp32`` as NAME.int8.onnx); metadata carried over."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    cfg = load_run_config(run_dir)
    out = Path(out) if out is not None else int8_path(fp32)
    backend = OnnxBackend(fp32)
    images = sample_images(cfg, cfg.data.train_split, calibration_images, data_root)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        prepared, quantized = Path(tmp).resolve() / "prepared.onnx", Path(tmp).resolve() / "int8.onnx"
        try:
            try:
                with _working_dir(Path(tmp)):  # where a failing symbolic pass dumps its model (see _working_dir)
                    quant_pre_process(str(fp32.resolve()), str(prepared))
            except Exception:  # onnxruntime's symbolic shape inference gives up on some graphs (timm's
                # EfficientNet-Lite encoders: "Incomplete symbolic shape inference"); ONNX's own is enough for QDQ
                quant_pre_process(str(fp32.resolve()), str(prepared), skip_symbolic_shape=True)
            quantize_static(str(prepared), str(quantized), _reader(images, backend.input, backend.multiple,
                                                                    backend.min_size),
                            quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                            nodes_to_exclude=size_nodes(onnx.load(str(prepared)).graph))
        except Exception as e:  # onnxruntime's tools raise bare exceptions of many kinds
            raise PixelwiseError(f"{fp32}: onnxruntime could not quantize this model to int8 ({type(e).__name__}: "
                                 f"{e}); the fp32 model is written and unaffected: use it as it is") from None
        proto = onnx.load(str(quantized))
        del proto.metadata_props[:]
        for prop in onnx.load(str(fp32)).metadata_props:  # the class table etc. travel with the int8 model too
            entry = proto.metadata_props.add()
            entry.key, entry.value = prop.key, prop.value
        assert any(p.key == METADATA_KEY for p in proto.metadata_props)
        onnx.save(proto, str(quantized))
        _check_runs(quantized, fp32, images[0].shape[:2] if images else (backend.min_size, backend.min_size))
        os.replace(quantized, out)
    return out


# Ops whose inputs after the first are sizes, indices or shapes: a size computed from Shape stops there.
_SIZE_INPUTS = {"Pad", "Reshape", "Resize", "Upsample", "Slice", "Expand", "Tile", "ConstantOfShape", "Range"}


def size_nodes(graph: Any) -> list[str]:
    """The nodes that compute sizes from ``Shape`` (timm's TF-"same" padding in EfficientNet-Lite, interpolation to
    a skip connection's size), up to the Pad/Resize/Reshape/Slice they feed. Quantized, their float arithmetic
    rounds pad and resize amounts to uint8 steps of the calibration range, and the int8 model then adds maps of
    different sizes (ONNX Runtime: "Attempting to broadcast an axis by a dimension other than 1"); they stay fp32.
    """
    consumers: dict[str, list[tuple[Any, int]]] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, i))
    marked: set[str] = set()
    todo = [out for node in graph.node if node.op_type == "Shape" for out in node.output]
    while todo:
        for node, i in consumers.get(todo.pop(), []):
            if (node.op_type in _SIZE_INPUTS and (i > 0 or node.op_type in ("ConstantOfShape", "Range"))) or \
                    node.name in marked:
                continue
            marked.add(node.name)
            todo.extend(node.output)
    return sorted(marked)


def _check_runs(int8: Path, fp32: Path, size: tuple[int, int]) -> None:
    """Run the int8 model once at a calibration image's size and once at another: ONNX Runtime can write an int8
    graph that its own fused kernels then refuse at every size (QLinearAdd in Linknet's decoder: "Attempting to
    broadcast an axis by a dimension other than 1"), where the fp32 graph runs."""
    model = OnnxBackend(int8, threads=1)
    for h, w in (size, (4 * model.multiple + 1, 3 * model.multiple + 1)):
        try:
            model(np.zeros((1, model.meta["channels"], h, w), dtype=model.input_dtype))
        except Exception as e:  # onnxruntime's own error types
            reason = str(e).split("Status Message:")[-1].strip().splitlines()[0][-200:]
            raise PixelwiseError(f"{fp32}: onnxruntime wrote an int8 model of this network that it cannot run "
                                 f"({reason}); the fp32 model is written and unaffected: use it as it is") from None


def compare_on_split(run_dir: Path, fp32: Path, int8: Path, split: str = "val",
                     data_root: Path | None = None) -> dict[str, Any]:
    """mIoU of the fp32 and int8 models on ``split``, and the share of pixels where they agree."""
    cfg = load_run_config(run_dir)
    table = cfg.data.classes
    dataset, _ = build_eval_dataset(cfg.data, split, table, int(cfg.model.in_channels), root=data_root)
    models = {"fp32": OnnxBackend(fp32), "int8": OnnxBackend(int8)}
    k = table.num_classes
    cms = {name: np.zeros((k, k), dtype=np.int64) for name in models}
    agree = total = 0
    for i in track(range(len(dataset)), total=len(dataset), label=f"Comparing fp32 and int8 on {split}"):
        image, truth = dataset.load(i)
        batch = image.transpose(2, 0, 1)[None]
        preds = {name: m.logits(batch)[0].argmax(axis=0) for name, m in models.items()}
        keep = truth != IGNORE
        for name, pred in preds.items():
            cms[name] += np.bincount(truth[keep].astype(np.int64) * k + pred[keep], minlength=k * k).reshape(k, k)
        agree += int((preds["fp32"] == preds["int8"]).sum())
        total += truth.size
    miou = {name: metrics_from_confusion(cm, table.names)["miou"] for name, cm in cms.items()}
    return {"split": split, "images": len(dataset), "fp32_miou": miou["fp32"], "int8_miou": miou["int8"],
            "miou_change_points": 100 * (miou["int8"] - miou["fp32"]), "pixel_agreement": agree / max(total, 1)}
