"""Checkpoints written atomically (temp file, fsync, rename) and loaded without running pickled code.

``best.safetensors`` holds weights only; ``last.ckpt`` holds the resume state (weights, optimizer, counters),
saved with torch.save and loaded with ``weights_only=True``. Both are serialised in memory and written by Python:
safetensors' and torch's own file writers report a full disk as ``SafetensorError`` or ``RuntimeError:
basic_ios::clear`` (seen when /tmp filled up), which the atomic writer could not tell from a bug; a Python write
raises ``OSError(ENOSPC)``, which becomes one message saying the previous file is intact. It costs one copy of the
checkpoint in memory while it is written.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn

from pixelwise.atomic import (  # noqa: F401  (re-exported: checkpoints and run files share them)
    atomic_write,
    atomic_write_bytes,
    atomic_write_text,
    remove_stale_temp_files,
)
from pixelwise.errors import PixelwiseError
from pixelwise.progress import notice


def save_weights(model: nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    data = safetensors_bytes(tensors, metadata=metadata)
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def load_model_state(model: nn.Module, state: dict[str, Any], path: Path) -> None:
    """Load ``state`` into ``model`` only when every name and shape fits; else one error, the model untouched.

    torch's ``load_state_dict`` copies the tensors that fit before it raises about the rest, so a run whose
    config.yaml was edited (another encoder, classes or channels) would leave a half-loaded model behind a
    RuntimeError; the comparison comes first instead.
    """
    own = model.state_dict()
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PixelwiseError(f"{path}: does not hold a model's tensors")
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} where the model has {tuple(v.shape)}" for k, v in own.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        found = "; ".join(f"{len(keys)} {label}, e.g. {', '.join(keys[:3])}" for label, keys in (
            ("missing", missing), ("unexpected", unexpected), ("of another shape", shapes)) if keys)
        raise PixelwiseError(
            f"{path}: these weights do not fit the network the run's config.yaml describes ({found}). Was "
            f"config.yaml edited after training (model.arch, model.encoder, model.options, classes or channels)? "
            f"Restore it as training wrote it, or train a new run with the new settings"
        )
    model.load_state_dict(state)


def load_weights(model: nn.Module, path: Path) -> None:
    """Load safetensors weights into ``model`` (every name and shape must match)."""
    try:
        state = load_file(str(path))
    except (OSError, SafetensorError) as e:
        raise PixelwiseError(f"{path}: cannot read the weights ({e})") from None
    load_model_state(model, state, path)


# Keys of an optimizer's parameter group that are not the user's settings: set per step, or chosen per device.
NOT_SETTINGS = ("params", "param_names", "lr", "initial_lr", "foreach", "fused", "capturable", "differentiable")


def _setting(value: Any) -> Any:
    """A parameter group's setting in a form that compares by value (betas as a tuple or a list, tensors)."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return [_setting(v) for v in value] if isinstance(value, (list, tuple)) else value


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any], path: Path) -> None:
    """Restore the optimizer of a resumed run, or say why the config no longer matches the checkpoint.

    Only the state comes from the checkpoint (moment buffers, step counts). The settings of each parameter group
    (weight decay, betas, momentum, ``lr_scale`` from optim.encoder_lr_mult, ...) stay those of ``optimizer``, built
    from the config as resumed: torch's ``load_state_dict`` would bring back the old ones, and the run would train
    with other settings than its config.yaml records. The learning rate is set before every step anyway.
    """
    groups, own = state.get("param_groups", []) if isinstance(state, dict) else [], optimizer.param_groups
    same = len(groups) == len(own) and all(
        len(g["params"]) == len(o["params"]) and set(g) == set(o) for g, o in zip(groups, own, strict=False))
    if not same:
        raise PixelwiseError(
            f"{path}: saved with another optimizer or parameter groups than the run's config.yaml now describes "
            f"({type(optimizer).__name__}); restore optim.name and optim.encoder_lr_mult as they were to resume, "
            "or start a new run"
        )
    fresh = optimizer.state_dict()["param_groups"]  # the config's settings; "params" are the indices of its state
    changed = sorted({k for g, f in zip(groups, fresh, strict=True) for k in f
                      if k not in NOT_SETTINGS and _setting(g.get(k)) != _setting(f[k])})
    if changed:
        named = ", ".join(changed).replace("lr_scale", "lr_scale (optim.encoder_lr_mult)")
        notice("note", f"optimizer settings changed since {path.name}, used from now on as the run's config.yaml "
                       f"says: {named}")
    # The saved "params" map the saved state to this optimizer's parameters, group by group, in order.
    optimizer.load_state_dict({**state, "param_groups": [{**f, "params": g["params"]}
                                                         for g, f in zip(groups, fresh, strict=True)]})


def save_state(path: Path, state: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(path, lambda tmp: tmp.write_bytes(buf.getbuffer()))


RESUME_KEYS = ("model", "optimizer", "state", "history")


def load_state(path: Path) -> dict[str, Any]:
    """Resume state; ``weights_only=True`` refuses anything but tensors and plain containers."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise PixelwiseError(f"{path}: no resume checkpoint in this run directory") from None
    except Exception as e:  # unpickling errors come in many types; none may run code with weights_only
        raise PixelwiseError(f"{path}: cannot load the checkpoint safely ({type(e).__name__}: {e})") from None
    if not isinstance(saved, dict) or any(k not in saved for k in RESUME_KEYS):
        raise PixelwiseError(f"{path}: not a pixelwise resume checkpoint (it needs {', '.join(RESUME_KEYS)})")
    return saved


def load_run_network(run_dir: Path, cfg: Any, weights: str = "best.safetensors", into: nn.Module | None = None
                     ) -> nn.Module:
    """A run's network, built from its resolved config (no downloads) with its saved weights loaded.

    ``cfg``: the run's config (``load_run_config``); ``into``: a network to load them into instead (a run of the
    user's own ``nn.Module``). The error names the file when training has not written it yet.
    """
    from pixelwise.models.factory import build_network

    path = Path(run_dir) / weights
    if not path.is_file():
        raise PixelwiseError(f"{path}: no weights yet (training writes them after its first evaluation)")
    model = into if into is not None else build_network(cfg.model, int(cfg.model.in_channels),
                                                        cfg.data.classes.num_classes, pretrained=False)
    load_weights(model, path)
    return model
