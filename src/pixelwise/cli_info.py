"""The reference commands: ``models`` (architectures, encoders, a model's size) and ``config`` (every key with its
default and description, or a config merged with its overrides).

Registered on ``cli.app`` by ``cli.py`` after the deployment commands.
"""

from __future__ import annotations

from pathlib import Path

import typer

from pixelwise.errors import PixelwiseError
from pixelwise.progress import stdout as out


def models(
    pattern: str | None = typer.Argument(None, help="With --encoders: only names matching this (wildcards such as "
                                                    "'convnext*', or a part of the name); timm's are listed then."),
    encoders: bool = typer.Option(False, "--encoders", help="List encoder names (model.encoder) and their weights."),
    info: str | None = typer.Option(None, help="Show parameters and GFLOPs of this architecture."),
    encoder: str = typer.Option("resnet18", help="Encoder for --info."),
    size: str = typer.Option("320x320", help="Input HxW for --info."),
    in_channels: int = typer.Option(3, min=1, help="Input channels for --info."),
    classes: int = typer.Option(12, min=1, max=254, help="Output classes for --info."),
) -> None:
    """List the architectures, the encoders (--encoders [PATTERN]), or one model's size and cost (--info NAME)."""
    from rich.table import Table

    if pattern is not None and not encoders:
        raise PixelwiseError(f"'{pattern}': a pattern filters encoder names: pixelwise models --encoders {pattern}")
    if encoders:
        from pixelwise.models.factory import list_encoders

        rows = list_encoders(pattern)
        if not rows:
            raise PixelwiseError(f"no encoder name matches '{pattern}'")
        table = Table(title="encoders (model.encoder)" + ("" if pattern else ": smp's; any timm model as "
                                                           "tu-<name> (pixelwise models --encoders PATTERN)"))
        for column in ("name", "pretrained (model.encoder_weights: imagenet)", "offline weights"):
            table.add_column(column)
        for row in rows:
            table.add_row(row["name"], row["pretrained"], row["offline"])
        out.print(table)
        return
    from pixelwise.models.factory import ARCHITECTURES

    if info is None:
        table = Table(title="architectures (use any smp encoder or tu-<timm model> as model.encoder)")
        table.add_column("name")
        table.add_column("what")
        for name in ARCHITECTURES.names():
            table.add_row(name, ARCHITECTURES.get(name).summary)
        out.print(table)
        return
    from pixelwise.config_sections import parse_hw
    from pixelwise.models.info import model_info

    try:
        h, w = parse_hw(size)
    except ValueError as e:
        raise PixelwiseError(f"--size: {e}") from None
    result = model_info(info, encoder, in_channels, classes, (h, w))
    rh, rw = result["input"][2:]
    padded = f", padded to {rh}x{rw} as prediction pads it" if (rh, rw) != (h, w) else ""
    out.print(f"{info}" + (f" ({encoder})" if result["encoder"] else "") + f": {result['params_millions']:.2f} M "
              f"parameters, {result['gflops']:.2f} GFLOPs per {h}x{w} image ({in_channels} channel(s) in, "
              f"{classes} classes out{padded})")


def config(
    key: str | None = typer.Argument(None, help="Only the keys starting with this, e.g. train or optim.lr."),
    resolve: Path | None = typer.Option(None, "--resolve", help="A config file: print it merged with the defaults "
                                                                "and --set, as training would read it."),
    set_: list[str] = typer.Option([], "--set", help="Override a key, e.g. --set optim.lr=3e-4 (repeatable); with "
                                                     "or without --resolve, prints the merged result."),
) -> None:
    """Every config key with its default and description, as YAML; or a config merged with overrides (--resolve)."""
    from pixelwise.config import suggest_key

    if resolve is not None or set_:
        import yaml

        from pixelwise.config import load_config

        # keys and values are checked; names (encoder, loss, ...) are checked by train, which imports torch
        tree = _starting_with(load_config(resolve, set_).model_dump(mode="json"), key or "")
        if not tree:
            raise PixelwiseError(f"no config key starts with '{key}'{suggest_key(key or '')}")
        out.print(yaml.safe_dump(tree, sort_keys=False), markup=False, highlight=False, soft_wrap=True, end="")
        return
    from pixelwise.config_keys import reference_yaml

    text = reference_yaml(key or "")
    if not text.strip():
        raise PixelwiseError(f"no config key starts with '{key}'{suggest_key(key or '')}")
    out.print(text, markup=False, highlight=False, soft_wrap=True, end="")


def _starting_with(tree: dict, prefix: str) -> dict:
    """The keys of a config tree (``name`` and ``section.key``, as the reference lists them) starting with
    ``prefix``; sections keep their order."""
    kept: dict = {}
    for name, value in tree.items():
        if isinstance(value, dict):
            leaves = {leaf: v for leaf, v in value.items() if f"{name}.{leaf}".startswith(prefix)}
            if leaves:
                kept[name] = leaves
        elif name.startswith(prefix):
            kept[name] = value
    return kept
