"""ONNX export of a run: image input, preprocessing inside the graph, metadata, and a parity check against PyTorch.

The graph takes (N, C, H, W) images (any N, H, W; H and W padded to the stride by the caller, as ``OnnxBackend``
does) and returns float32 logits (N, K, H, W). The input is uint8 for 8-bit data and float32 in the data's own
units for any other type (16-bit, signed, float: the values as decoded, not rescaled). Clipping, scaling and
normalisation are the first nodes (the ``Normalized`` wrapper is exported with the network), so a deployment
feeds decoded pixels as they are. A calibrated run's temperature (RUN/calibration.json) divides the logits as
the graph's last node, so its probabilities are the calibrated ones (argmax is unchanged). The class table,
channels, pixel type, reading rules (bands, pages, NaN fill), normalisation, stride, training crop and temperature
travel in the metadata (``pixelwise`` key).
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pixelwise.atomic import file_mode
from pixelwise.config import Config, load_run_config
from pixelwise.data.build import build_eval_dataset
from pixelwise.data.pixels import model_dtype, model_input
from pixelwise.engine.padding import pad_to_multiple
from pixelwise.errors import PixelwiseError
from pixelwise.inference.calibration import read_temperature
from pixelwise.inference.onnx_backend import METADATA_KEY, OnnxBackend
from pixelwise.inference.torch_backend import TorchBackend, load_torch_backend

MIN_AGREEMENT = 0.999  # argmax agreement with PyTorch below this fails the export
OPSET = 18


class Tempered(torch.nn.Module):
    """The network's logits divided by the run's temperature: the calibration folded into the exported graph."""

    def __init__(self, model: torch.nn.Module, temperature: float) -> None:
        super().__init__()
        self.model, self.temperature = model, float(temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) / self.temperature


def metadata(cfg: Config, backend: TorchBackend, temperature: float = 1.0) -> dict[str, Any]:
    model = backend.model
    input_dtype = model_dtype(cfg.data.dtype or "uint8")
    return {
        "format_version": 1,
        "classes": cfg.data.classes.model_dump(mode="json"),
        "channels": int(cfg.model.in_channels),
        "dtype": cfg.data.dtype or "uint8",  # the training images' pixel type
        "input_dtype": input_dtype,
        "read": {"bands": cfg.data.bands, "pages_as_channels": cfg.data.pages_as_channels,
                 "channel_axis": cfg.data.channel_axis, "nan_fill": cfg.data.nan_fill},
        "normalization": cfg.model.normalization,
        "mean": (model.mean.flatten() / model.scale).tolist(),  # on the scale of model.mean (0-1 for 'encoder')
        "std": (model.std.flatten() / model.scale).tolist(),
        "clip": cfg.model.clip,
        "pad_multiple": int(model.pad_multiple),
        "min_size": int(model.min_size),
        "crop_size": list(cfg.data.crop_size),
        "temperature": temperature,  # already divided into the logits (1: not calibrated)
        "arch": cfg.model.arch,
        "encoder": cfg.model.encoder,
        "input": f"{input_dtype} (N, C, H, W), H and W multiples of pad_multiple; output: float32 logits (N, K, H, W)",
    }


def _export_graph(model: torch.nn.Module, channels: int, side: int, path: Path, info: dict[str, Any]) -> None:
    import onnx

    model = model.to(memory_format=torch.contiguous_format).float().eval()
    example = torch.zeros(1, channels, side, side, dtype=getattr(torch, info["input_dtype"]))
    axes = {0: "batch", 2: "height", 3: "width"}
    try:
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            # The TorchScript exporter is deprecated in favour of torch.export's (dynamo=True), which we measured
            # and do not use yet: it fails on reseg, exports upernet with the example's size baked in (wrong on
            # other sizes) and its graphs defeat the int8 tools' shape inference (DESIGN.md, "ONNX export").
            warnings.filterwarnings("ignore", "You are using the legacy TorchScript", DeprecationWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
            torch.onnx.export(model, (example,), str(path), input_names=["image"], output_names=["logits"],
                              dynamic_axes={"image": axes, "logits": axes}, opset_version=OPSET, dynamo=False)
    except Exception as e:  # the exporter's own error types, several lines each
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PixelwiseError(
            f"{info['arch']} ({info['encoder']}) cannot be exported to ONNX with free image sizes: {first[:300]}. "
            "pspnet and upernet pool to a fixed grid of bins, which needs the input size; serve the run with "
            "PyTorch (pixelwise serve RUN, Segmenter.load(RUN)) or train another architecture for ONNX") from None
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(info)
    proto.producer_name = "pixelwise"
    onnx.save(proto, str(path))


def sample_images(cfg: Config, split: str, count: int, data_root: Path | None = None) -> list[np.ndarray]:
    """Up to ``count`` images (H, W, C model input: uint8, or float32) of a split of the run's data, evenly spread."""
    dataset, _ = build_eval_dataset(cfg.data, split, cfg.data.classes, int(cfg.model.in_channels), root=data_root)
    picks = np.linspace(0, len(dataset) - 1, num=min(count, len(dataset))).round().astype(int)
    return [model_input(dataset.load(int(i))[0]) for i in dict.fromkeys(picks.tolist())]


@torch.inference_mode()
def parity(reference: TorchBackend, candidate: OnnxBackend, images: list[np.ndarray], temperature: float = 1.0
           ) -> dict[str, Any]:
    """Max |logit difference| and argmax agreement of ``candidate`` against PyTorch fp32 (logits / ``temperature``)
    over ``images``."""
    max_diff, agree, total = 0.0, 0, 0
    model, rt = reference.model, reference.runtime
    for image in images:
        batch = image.transpose(2, 0, 1)[None]
        h, w = batch.shape[-2:]
        x = pad_to_multiple(torch.from_numpy(np.array(batch)), model.pad_multiple, model.min_size)  # a writable copy
        with rt.autocast():
            ref = model(x.contiguous(memory_format=torch.channels_last))[..., :h, :w].float().numpy() / temperature
        got = candidate.logits(batch)
        max_diff = max(max_diff, float(np.abs(ref - got).max()))
        agree += int((ref.argmax(axis=1) == got.argmax(axis=1)).sum())
        total += h * w
    return {"images": len(images), "max_abs_logit_diff": max_diff, "argmax_agreement": agree / max(total, 1)}


def _images_config(run_dir: Path, cfg: Config) -> Config:
    """The config whose split the parity check reads: a cross-validation parent's first fold (the parent itself
    has no validation split of its own); the graph is the folds' ensemble either way."""
    if (run_dir / "folds.json").is_file():
        from pixelwise.inference.ensemble import fold_runs

        return load_run_config(fold_runs(run_dir)[0])
    return cfg


def export_onnx(run_dir: Path, out: Path | None = None, data_root: Path | None = None, check_images: int = 8,
                split: str = "val", model: Any = None) -> dict[str, Any]:
    """Export ``run_dir``'s best weights to ONNX (default ``RUN/model.onnx``) and check it against PyTorch.
    ``model``: for a run of your own ``nn.Module``, an instance of it to load the weights into.

    The file appears only when the parity check passes (argmax agreement >= 99.9% on real images of the
    run's ``split``); otherwise nothing is written and the error gives the figures.
    """
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    out = Path(out) if out is not None else run_dir / "model.onnx"
    reference = load_torch_backend(run_dir, cfg, device="cpu", amp="off", network=model)
    temperature = read_temperature(run_dir) or 1.0
    info = metadata(cfg, reference, temperature)
    side = max(reference.model.min_size, 64)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp.onnx", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        graph = reference.model if temperature == 1.0 else Tempered(reference.model, temperature)
        _export_graph(graph, int(cfg.model.in_channels), side, tmp, info)
        images = sample_images(_images_config(run_dir, cfg), split, check_images, data_root)
        result = parity(reference, OnnxBackend(tmp), images, temperature)
        if result["argmax_agreement"] < MIN_AGREEMENT:
            raise PixelwiseError(
                f"ONNX export failed its parity check: argmax agreement with PyTorch {result['argmax_agreement']:.4%} "
                f"(< {MIN_AGREEMENT:.1%}), max |logit difference| {result['max_abs_logit_diff']:.3g} over "
                f"{result['images']} images; nothing was written")
        os.chmod(tmp, file_mode(out))  # mkstemp creates 0600; the model is an ordinary file
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    result.update(path=str(out), bytes=out.stat().st_size, opset=OPSET, temperature=temperature)
    return result
