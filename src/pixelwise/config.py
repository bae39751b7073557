"""Typed configuration: validated once at the edge, then passed inward as typed sub-configs.

Every model forbids unknown keys, so a misspelt key fails with its dotted path. ``load_config``
merges a YAML file, ``--set a.b=value`` overrides and CLI shortcuts, then validates.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator

from pixelwise.config_sections import (
    AugmentConfig,
    DataConfig,
    EarlyStoppingConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    Strict,
    TrainConfig,
    parse_duration,
)
from pixelwise.data.classes import ClassTable
from pixelwise.errors import ConfigError, PixelwiseError, did_you_mean
from pixelwise.safe_load import load_yaml, read_text

__all__ = ["AugmentConfig", "Config", "DataConfig", "EarlyStoppingConfig", "LossConfig", "ModelConfig",
           "OptimConfig", "Strict", "TrainConfig", "load_config", "parse_duration"]


class Config(Strict):
    name: str | None = None  # the run directory is runs/NAME; null: DATASET-ARCH-ENCODER (api.run_directory)
    data: DataConfig = Field(default_factory=DataConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str | None) -> str | None:
        # The default run directory is runs/NAME (and lr-find's runs/lr-find-NAME): a name holding a path
        # ('../x', '/tmp/x') would write outside runs/. A different place is what --out is for.
        if v is not None and (v.strip() in ("", ".", "..") or any(c in "/\\" or ord(c) < 32 for c in v)):
            raise ValueError("a run name is one folder name (no '/', '\\', '..' or control characters); to "
                             "write the run elsewhere use --out DIR")
        return v

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


SECTIONS: dict[str, type[BaseModel]] = {name: f.annotation for name, f in Config.model_fields.items()
                                        if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)}


def _suggest(loc: tuple[Any, ...]) -> str:
    """'did you mean' for an unknown key, from the fields of the model at that path."""
    model: type[BaseModel] | None = Config
    for part in loc[:-1]:
        field = model.model_fields.get(str(part)) if model else None
        ann = field.annotation if field else None
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    if model is None:
        return ""
    close = did_you_mean(str(loc[-1]), model.model_fields, n=1, cutoff=0.6)
    return f" ({close})" if close else f" (valid keys: {', '.join(model.model_fields)})"


def suggest_key(name: str) -> str:
    """' (did you mean 'train.epochs'?)' for a key given without its section, or a misspelt section."""
    leaves = {f"{section}.{key}": key for section, model in SECTIONS.items() for key in model.model_fields}
    exact = [path for path, key in leaves.items() if key == name.lower()]
    if exact:
        return f" (did you mean {', '.join(repr(p) for p in exact)}?)"
    close = did_you_mean(name, [*Config.model_fields, *leaves.values()], n=1)
    if close:
        word = close.split("'")[1]
        return f" (did you mean {', '.join(repr(p) for p, k in leaves.items() if k == word) or repr(word)}?)"
    return ""


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        # Union members and validators show up in the path (e.g. 'ClassTable', 'int', 'list[function-before[...]]');
        # keep only real keys.
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and (
            p[:1].isupper() or p in _TYPE_NAMES or _TYPE_PATH.match(p))))
        path = ".".join(str(p) for p in loc) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {path}: unknown key{_suggest(loc)}")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"  {path}: {msg} (got {e.get('input')!r})")
    return f"invalid configuration in {source}:\n" + "\n".join(dict.fromkeys(lines))


_TYPE_NAMES = {"int", "str", "float", "bool", "list", "dict", "tuple", "none", "literal['auto']", "path"}
_TYPE_PATH = re.compile(r"^(function-[a-z-]+|list|tuple|dict|set|lax-or-strict|union|json-or-python|nullable)\[")


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``tree['a']['b'] = value`` for ``dotted='a.b'``, creating dicts on the way."""
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """'optim.lr=3e-4' -> ('optim.lr', 0.0003); values are parsed as YAML (safe loader)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects key.path=value, got '{text}'")
    value = load_yaml(raw, f"--set {text}") if raw.strip() else None
    return key.strip(), value


# Keys that hold file paths: relative ones in a config file are read from the file's folder, as Ultralytics reads
# its data YAML, so a config works from any working folder (paths given on the command line stay the shell's).
PATH_KEYS = (("data", "root"), ("data", "classes"), ("model", "encoder_weights"), ("model", "init_from"))
NOT_PATHS = ("imagenet", "auto")  # encoder_weights' names; an hf:// address is not a path either


def _relative_paths(tree: dict[str, Any]):
    """(section node, key, value) of each relative path among ``PATH_KEYS`` in ``tree``."""
    for section, key in PATH_KEYS:
        node = tree.get(section)
        value = node.get(key) if isinstance(node, dict) else None
        if isinstance(value, Path):
            value = str(value)
        if (isinstance(value, str) and value not in NOT_PATHS and not value.startswith("hf://")
                and not Path(value).expanduser().is_absolute()):
            yield node, key, value


def paths_from(tree: dict[str, Any], folder: Path) -> dict[str, Any]:
    """``tree`` with its relative paths joined to ``folder``; data.classes only when the file is there (otherwise
    it is looked up in the dataset folder, as before)."""
    for node, key, value in _relative_paths(tree):
        if key != "classes" or (folder / value).is_file():
            node[key] = str((folder / value).resolve())
    return tree


def paths_for(tree: dict[str, Any], folder: Path) -> dict[str, Any]:
    """The inverse of ``paths_from``: ``tree``'s relative paths (from the working folder) as seen from ``folder``,
    where a config file holding them will be read from; absolute where no relative path leads there (another
    drive). Absolute paths hold anywhere and stay as they are."""
    for node, key, value in _relative_paths(tree):
        if key == "classes" and not Path(value).is_file():  # a name in the dataset folder, as paths_from reads it
            continue
        try:
            node[key] = os.path.relpath(Path(value).resolve(), folder.resolve())
        except ValueError:
            node[key] = str(Path(value).resolve())
    return tree


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    data = load_yaml(read_text(path, "config file"), str(path))  # bounded: duplicate keys, alias bombs, depth
    if data is None:
        return {}
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise ConfigError(f"{path}: expected a mapping of sections (data, model, train, ...), got {kind}")
    return data


def load_config(
    path: Path | None = None, overrides: list[str] | None = None, values: dict[str, Any] | None = None,
    base: dict[str, Any] | None = None, source: str = "the command line",
) -> Config:
    """Build a validated Config.

    Args:
        path: optional YAML file; relative paths in it are relative to its folder (``PATH_KEYS``).
        overrides: ``key.path=value`` strings (``--set``), applied last.
        values: dotted key -> value (CLI shortcuts such as ``--data``), applied after the file.
        base: the starting tree when there is no file (an automatic plan's).
    """
    tree: dict[str, Any] = paths_from(read_yaml(path), path.parent) if path is not None else dict(base or {})
    for key, value in (values or {}).items():
        set_dotted(tree, key, value)
    for text in overrides or []:
        set_dotted(tree, *parse_override(text))
    try:
        return Config.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, str(path) if path else source)) from None


def load_run_config(run_dir: Path) -> Config:
    """The resolved config of a run directory (written by training)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise PixelwiseError(f"{run_dir}: not a run directory (no config.yaml); give the --out of a training run")
    try:
        cfg = Config.model_validate(read_yaml(run_dir / "config.yaml"))
    except ValidationError as e:  # an edited config.yaml: say which key, as for any config
        raise ConfigError(format_validation_error(e, str(run_dir / "config.yaml"))) from None
    if not isinstance(cfg.data.classes, ClassTable) or cfg.model.in_channels == "auto":
        raise ConfigError(f"{run_dir / 'config.yaml'}: not a resolved run config (classes or in_channels missing)")
    return cfg
