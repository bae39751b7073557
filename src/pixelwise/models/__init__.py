"""Models: every architecture is built through ``create_model``."""

from pixelwise.models.factory import ARCHITECTURES, Normalized, build_network, create_model, encoder_normalization

__all__ = ["ARCHITECTURES", "Normalized", "build_network", "create_model", "encoder_normalization"]
