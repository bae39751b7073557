"""Names in a config checked against the registries: architecture, encoder, losses, optimizer, augmentations,
dataset format.

``config`` is a pure schema that imports no component; this layer sits above both, so a typo fails with its
key's path and the close names before any data is scanned (``pixelwise.load_config``, ``prepare``).
"""

from __future__ import annotations

from collections.abc import Callable

from pixelwise.config import Config
from pixelwise.errors import ConfigError


def check_names(cfg: Config) -> Config:
    """Raise one ConfigError listing every unknown name in ``cfg`` (key path: message); returns ``cfg``."""
    from pixelwise.data.formats import FORMATS
    from pixelwise.data.transforms import build_transform_list
    from pixelwise.losses import LOSSES
    from pixelwise.models.factory import ARCHITECTURES, CUSTOM_ARCH, check_encoder
    from pixelwise.optim import OPTIMIZERS

    checks: list[tuple[str, Callable[[], object]]] = []
    arch = cfg.model.arch
    if arch != CUSTOM_ARCH:  # a run that trained the user's own nn.Module
        checks.append(("model.arch", lambda: ARCHITECTURES.get(arch)))
        if arch in ARCHITECTURES and ARCHITECTURES.get(arch).uses_encoder:
            checks.append(("model.encoder", lambda: check_encoder(cfg.model.encoder)))
    checks += [(f"loss.terms.{name}", lambda n=name: LOSSES.get(n)) for name in cfg.loss.terms]
    checks.append(("optim.name", lambda: OPTIMIZERS.get(cfg.optim.name)))
    if cfg.augment.transforms is not None:
        checks.append(("augment.transforms", lambda: build_transform_list(cfg.augment.transforms, ignore_index=255)))
    if cfg.data.format != "auto":
        checks.append(("data.format", lambda: FORMATS.get(cfg.data.format)))
    problems = []
    for path, check in checks:
        try:
            check()
        except ConfigError as e:
            problems.append(f"  {path}: {e}")
    if problems:
        raise ConfigError("invalid configuration:\n" + "\n".join(problems))
    return cfg
