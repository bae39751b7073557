"""The small network of each registered architecture the tests build: resnet18 where it takes an encoder, timm's
test ViT for DPT (it needs a ViT)."""

from pixelwise.config import ModelConfig
from pixelwise.models import Normalized, build_network

SMALL_ENCODER = {"dpt": "tu-test_vit"}


def small_network(arch: str, in_channels: int = 3, classes: int = 3) -> Normalized:
    return build_network(ModelConfig(arch=arch, encoder=SMALL_ENCODER.get(arch, "resnet18")), in_channels, classes)
