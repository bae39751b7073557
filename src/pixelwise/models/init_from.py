"""``model.init_from``: start training from a whole model (encoder, decoder and head), i.e. fine-tuning.

The source is a run directory (its ``best.safetensors`` and, for the class names, its ``config.yaml``), a
``.safetensors`` file of such weights, or ``hf://USER/REPO`` (downloaded through ``pixelwise.hubfiles``). Names
and shapes are compared before anything is copied, as ``engine.checkpoint`` does for a run's own weights, but
here a difference is allowed where fine-tuning needs it:

- tensors of the same name and shape are loaded;
- the head's tensors, whose first dimension is the class count, are rebuilt for the new classes: rows of classes
  the source knew by the same name are carried over (so continuing with one class more keeps what the others
  learnt), the others keep their fresh initialisation;
- a first convolution built for RGB is adapted to other input channels as pretrained encoders are (summed for
  one channel, cycled and rescaled for more), and one built for gray input is shared out over the new channels
  (each gets 1/N of it: ``models.weights.adapt_first_conv``);
- any other tensor of another shape is re-initialised, and missing or unexpected ones are listed;
- the normalisation buffers (``mean``, ``std``) are the new run's own (its config decides them).

Every category is printed, so a fine-tuning run says exactly what it started from. Fewer than half of the
network's weights (by number) fitting is an error: the source is another network (architecture or encoder);
so is a source whose config.yaml names another ``model.arch`` or ``model.encoder``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from pixelwise.errors import PixelwiseError
from pixelwise.models.weights import adapt_first_conv
from pixelwise.progress import console

OWN_BUFFERS = ("mean", "std")  # Normalized's: from the new run's config, never from the source


@dataclass
class InitReport:
    """What ``load_init`` did with each tensor."""

    source: str
    loaded: list[str] = field(default_factory=list)
    reinitialised: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    carried: list[str] = field(default_factory=list)  # class names whose head rows came from the source
    adapted: list[str] = field(default_factory=list)  # first convolutions fitted to other input channels
    source_classes: list[str] | None = None

    def lines(self) -> list[str]:
        def keys(items: list[str]) -> str:
            return ", ".join(items[:4]) + (f", ... ({len(items) - 4} more)" if len(items) > 4 else "")

        out = [f"model.init_from {self.source}: {len(self.loaded)} tensors loaded"]
        if self.adapted:
            out.append(f"  adapted to the input channels (as pretrained encoders are): {keys(self.adapted)}")
        if self.reinitialised:
            out.append(f"  re-initialised ({len(self.reinitialised)}, another shape here): {keys(self.reinitialised)}")
        if self.carried:
            out.append(f"  head rows carried over by class name ({len(self.carried)}): {keys(self.carried)}")
        if self.missing:
            out.append(f"  missing from the source, left as initialised ({len(self.missing)}): {keys(self.missing)}")
        if self.unexpected:
            out.append(f"  unexpected in the source, ignored ({len(self.unexpected)}): {keys(self.unexpected)}")
        return out


def class_names_of(config: Path) -> list[str] | None:
    """The class names in a run's config.yaml (read with the safe loader), or None when it has none."""
    from pixelwise.config import read_yaml

    classes = (read_yaml(config).get("data") or {}).get("classes")
    names = classes.get("names") if isinstance(classes, dict) else None
    return [str(n) for n in names] if isinstance(names, list) else None


def source_network(config: Path) -> tuple[str | None, str | None]:
    """(model.arch, model.encoder) in a run's config.yaml, None where it names none."""
    from pixelwise.config import read_yaml

    model = read_yaml(config).get("model") or {}
    arch, encoder = model.get("arch"), model.get("encoder")
    return (str(arch) if arch is not None else None), (str(encoder) if encoder is not None else None)


def check_same_network(ref: str, config: Path, arch: str, encoder: str) -> None:
    """Refuse a source run of another architecture or encoder than ``arch`` on ``encoder``."""
    from pixelwise.models.factory import ARCHITECTURES

    their_arch, their_encoder = source_network(config)
    uses_encoder = arch in ARCHITECTURES and ARCHITECTURES.get(arch).uses_encoder
    if (their_arch is not None and their_arch.lower() != arch.lower()) or (
            uses_encoder and their_encoder is not None and their_encoder != encoder):
        raise PixelwiseError(f"model.init_from {ref}: that run trained {their_arch} on {their_encoder}, this one is "
                             f"{arch} on {encoder}; init_from needs the same model.arch and model.encoder (use "
                             "model.encoder_weights to start from a pretrained encoder alone)")


def resolve_source(ref: str) -> tuple[Path, list[str] | None, Path | None]:
    """(weights file, the source's class names or None, its config.yaml or None) of a run directory, a
    .safetensors file or hf:// id."""
    if ref.startswith("hf://"):
        from pixelwise.hubfiles import hub_model

        path = hub_model(ref)
        if path.suffix == ".onnx":
            raise PixelwiseError(f"model.init_from {ref}: holds an ONNX export only; fine-tuning needs the run's "
                                 "best.safetensors and config.yaml")
    else:
        path = Path(ref).expanduser()
    if path.is_dir():
        weights, config = path / "best.safetensors", path / "config.yaml"
        if not weights.is_file():
            raise PixelwiseError(f"model.init_from {ref}: no best.safetensors in that folder; give a run directory "
                                 "that has finished an evaluation, a .safetensors file, or hf://USER/REPO")
    elif path.is_file() and path.suffix == ".safetensors":
        weights, config = path, path.with_name("config.yaml")
    elif path.exists():
        raise PixelwiseError(f"model.init_from {ref}: expected a run directory or a .safetensors file")
    else:
        raise PixelwiseError(f"model.init_from {ref}: not found (a run directory, a .safetensors file, or "
                             "hf://USER/REPO)")
    if not config.is_file():
        return weights, None, None
    return weights, class_names_of(config), config


def _head_rows(own: torch.Tensor, theirs: torch.Tensor, names: list[str], source_names: list[str],
               ) -> tuple[torch.Tensor, list[str]] | None:
    """``own`` with the rows of classes ``theirs`` knew by name, when these are head tensors (class count first)."""
    if (own.shape[0], theirs.shape[0]) != (len(names), len(source_names)) or own.shape[1:] != theirs.shape[1:]:
        return None
    index = {n.casefold(): i for i, n in enumerate(source_names)}
    out, carried = own.clone(), []
    for row, name in enumerate(names):
        if name.casefold() in index:
            out[row] = theirs[index[name.casefold()]]
            carried.append(name)
    return out, carried


def _first_conv(own: torch.Tensor, theirs: torch.Tensor) -> bool:
    """A convolution taking 3 (RGB) or 1 (gray) channels in the source and another count here, otherwise alike."""
    return (own.ndim == 4 and theirs.ndim == 4 and theirs.shape[1] in (1, 3) and own.shape[1] != theirs.shape[1]
            and own.shape[0] == theirs.shape[0] and own.shape[2:] == theirs.shape[2:])


def head_keys(state: dict[str, torch.Tensor], classes: int) -> set[str]:
    """The head's tensors: the last ones of the network whose first dimension is the class count."""
    keys = set()
    for key in reversed(list(state)):
        if state[key].shape[:1] != (classes,):
            break
        keys.add(key)
    return keys


def load_init(model: nn.Module, ref: str, class_names: list[str], arch: str | None = None,
              encoder: str | None = None) -> InitReport:
    """Load the model ``ref`` names into ``model`` (see the module's rules); prints and returns the report.

    With ``arch`` and ``encoder`` (the new run's), a source whose config.yaml names others is refused.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights, source_names, config = resolve_source(ref)
    if config is not None and arch is not None and encoder is not None:
        check_same_network(ref, config, arch, encoder)
    try:
        state = load_file(str(weights))
    except (OSError, SafetensorError) as e:
        raise PixelwiseError(f"model.init_from {weights}: cannot read the weights ({e})") from None
    report = InitReport(str(ref), source_classes=source_names)
    own = model.state_dict()
    renamed = source_names is not None and [n.casefold() for n in source_names] != [n.casefold() for n in class_names]
    head = head_keys(own, len(class_names)) if renamed else set()
    new: dict[str, torch.Tensor] = {}
    for key, value in own.items():
        theirs = state.get(key)
        if key in OWN_BUFFERS:
            continue
        if theirs is None:
            if not key.endswith("num_batches_tracked"):
                report.missing.append(key)
        elif key not in head and theirs.shape == value.shape:
            new[key] = theirs.to(value.dtype)
            report.loaded.append(key)
        elif key not in head and _first_conv(value, theirs):  # RGB filters for gray or multispectral input
            new[key] = adapt_first_conv(theirs.to(value.dtype), value.shape[1])
            report.adapted.append(key)
        else:
            rows = _head_rows(value, theirs.to(value.dtype), class_names, source_names) if key in head else None
            if rows is not None:
                new[key], report.carried = rows
            report.reinitialised.append(key)
    report.unexpected = [k for k in state if k not in own and k not in OWN_BUFFERS]
    total = sum(v.numel() for k, v in own.items() if k not in OWN_BUFFERS)
    fitted = sum(own[k].numel() for k in report.loaded + report.adapted)
    if fitted < total / 2:
        raise PixelwiseError(
            f"model.init_from {ref}: only {fitted / total:.0%} of the network's weights fit ({len(report.loaded)} "
            f"tensors; e.g. {', '.join((report.reinitialised + report.missing)[:3])} do not): it is another "
            "network. Use the source's model.arch, model.encoder and model.options, or model.encoder_weights for "
            "an encoder alone")
    model.load_state_dict(new, strict=False)
    for line in report.lines():
        console.print(line, soft_wrap=True)
    return report
