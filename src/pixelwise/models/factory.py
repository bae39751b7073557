"""One factory for every model: smp architectures on any smp/timm encoder (and, later, own architectures).

The network a run trains is ``Normalized(create_model(...))``: it takes uint8 (or 0-255 float) images, so
the data path moves uint8 and the saved model carries its own normalisation.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

import segmentation_models_pytorch as smp
import torch
from torch import nn

from pixelwise.config import ModelConfig
from pixelwise.errors import ConfigError, PixelwiseError
from pixelwise.registry import Registry

ModelBuilder = Callable[..., nn.Module]
ARCHITECTURES: Registry[ModelBuilder] = Registry("architecture")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _smp_builder(cls: type[nn.Module]) -> ModelBuilder:
    def build(encoder: str, in_channels: int, classes: int, encoder_weights: str | None, **options: Any) -> nn.Module:
        return cls(encoder_name=encoder, encoder_weights=encoder_weights, in_channels=in_channels, classes=classes,
                   **options)

    build.__doc__ = f"segmentation-models-pytorch {cls.__name__}"
    return build


for _name, _cls in smp.MODEL_ARCHITECTURES_MAPPING.items():
    ARCHITECTURES.register(_name, _smp_builder(_cls))


def _check_encoder(encoder: str) -> None:
    if encoder.startswith("tu-"):
        import timm

        if timm.is_model(encoder[3:]):
            return
        valid = timm.list_models()
        close = difflib.get_close_matches(encoder[3:], valid, n=3, cutoff=0.6)
    else:
        valid = smp.encoders.get_encoder_names()
        if encoder in valid:
            return
        close = difflib.get_close_matches(encoder, valid, n=3, cutoff=0.6)
    prefix = "tu-" if encoder.startswith("tu-") else ""
    hint = f" Did you mean {', '.join(repr(prefix + c) for c in close)}?" if close else ""
    raise ConfigError(
        f"unknown encoder '{encoder}'.{hint} Use an smp encoder name (resnet18, efficientnet-b0, mit_b0, ...) "
        "or a timm model as 'tu-<name>' (tu-convnext_tiny, ...)."
    )


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
        encoder: smp encoder name or ``tu-<timm model>``.
        in_channels: input channels (1 grayscale, 3 RGB, more for multispectral).
        classes: number of output classes.
        encoder_weights: pretrained weights ('imagenet' needs the network), or None.
        options: passed to the architecture (e.g. ``decoder_channels``).
    """
    builder = ARCHITECTURES.get(arch)
    _check_encoder(encoder)
    try:
        return builder(encoder=encoder, in_channels=in_channels, classes=classes, encoder_weights=encoder_weights,
                       **options)
    except TypeError as e:
        raise ConfigError(f"model.options for '{arch}': {e}") from None
    except (OSError, RuntimeError, ConnectionError) as e:
        if encoder_weights is None:
            raise
        raise PixelwiseError(
            f"could not load encoder_weights '{encoder_weights}' for '{encoder}' ({type(e).__name__}: {e}). "
            "Downloading weights needs the network; offline, train without them (model.encoder_weights: null)."
        ) from None


class Normalized(nn.Module):
    """Scales 0-255 input and normalises per channel, then runs ``net``. Input: (N, C, H, W) uint8 or float."""

    def __init__(self, net: nn.Module, in_channels: int) -> None:
        super().__init__()
        self.net = net
        mean = IMAGENET_MEAN if in_channels == 3 else (sum(IMAGENET_MEAN) / 3,) * in_channels
        std = IMAGENET_STD if in_channels == 3 else (sum(IMAGENET_STD) / 3,) * in_channels
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1) * 255.0)
        self.pad_multiple = 32  # inputs are padded to a multiple of the network stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x.float() - self.mean) / self.std)


def build_network(cfg: ModelConfig, in_channels: int, classes: int, pretrained: bool = True) -> Normalized:
    """The run's network from its config; ``pretrained=False`` skips weight downloads (weights are loaded after)."""
    net = create_model(
        cfg.arch,
        encoder=cfg.encoder,
        in_channels=in_channels,
        classes=classes,
        encoder_weights=cfg.encoder_weights if pretrained else None,
        **cfg.options,
    )
    return Normalized(net, in_channels)
