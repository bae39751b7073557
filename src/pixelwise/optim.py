"""Optimizers by name, parameter groups, and learning-rate schedules as functions of training progress.

Schedules take progress p in [0, 1] rather than a step count: with a time budget the number of steps is
not known in advance, so progress is max(step / planned steps, elapsed / time budget). The trainer sets
the rate before every batch, so every schedule steps per iteration.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from pixelwise.config import OptimConfig
from pixelwise.errors import ConfigError
from pixelwise.registry import Registry

OptimizerBuilder = Callable[[list[dict], OptimConfig], torch.optim.Optimizer]
OPTIMIZERS: Registry[OptimizerBuilder] = Registry("optimizer")

# Optimizers that need the whole batch (one update per pass over the training set): the trainer accumulates
# the gradients of every batch of an epoch before stepping.
FULL_BATCH = {"gd"}


def _construct(cls: type[torch.optim.Optimizer], groups: list[dict], cfg: OptimConfig, **defaults: Any):
    """``cls(groups, lr, **defaults, **cfg.options)`` with fused kernels where the class has them for the
    parameters' device (AdamW on a 2-core CPU: 10 ms a step against 47 with foreach), else foreach kernels;
    ``optim.options`` naming either decides instead."""
    params = inspect.signature(cls).parameters
    # Each parameter group carries optim.lr and optim.weight_decay (none on norms and biases), which would override
    # these silently.
    for name in ("lr", "weight_decay"):
        if name in cfg.options:
            raise ConfigError(f"optim.options.{name} is not used: set optim.{name} instead (each parameter group "
                              f"carries optim.{name})")
    kwargs = {**defaults, **cfg.options}
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        valid = [p for p in params if p not in ("params", "lr", "foreach", "differentiable", "capturable")]
        raise ConfigError(f"optim.options: {', '.join(unknown)} not accepted by torch.optim.{cls.__name__} "
                          f"(it takes: {', '.join(valid)})")
    if "foreach" not in kwargs and "fused" not in kwargs:
        if "fused" in params:
            try:
                return cls(groups, lr=cfg.lr, **kwargs, fused=True)
            except (ValueError, TypeError, RuntimeError):
                pass  # no fused kernel for this device or dtype (e.g. Adagrad's is CPU-only): foreach below
        if "foreach" in params:
            kwargs["foreach"] = True
    try:
        return cls(groups, lr=cfg.lr, **kwargs)
    except (ValueError, TypeError, RuntimeError) as e:
        given = ", ".join(f"{k}: {v!r} (default {params[k].default!r})" for k, v in cfg.options.items() if k in params)
        hint = f"; check optim.options ({given})" if given else ""
        raise ConfigError(f"optim ({cfg.name}): {e}{hint}") from None


OPTIMIZERS.register(
    "sgd", lambda g, c: _construct(torch.optim.SGD, g, c, momentum=c.momentum, nesterov=c.nesterov and c.momentum > 0)
)
# Plain full-batch gradient descent: no momentum, one step per epoch over the accumulated gradient.
OPTIMIZERS.register("gd", lambda g, c: _construct(torch.optim.SGD, g, c, momentum=0.0))
for _name, _cls in {
    "adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "nadam": torch.optim.NAdam, "radam": torch.optim.RAdam,
    "adamax": torch.optim.Adamax, "rmsprop": torch.optim.RMSprop, "adagrad": torch.optim.Adagrad,
    "adadelta": torch.optim.Adadelta, "asgd": torch.optim.ASGD,
}.items():
    OPTIMIZERS.register(_name, lambda g, c, cls=_cls: _construct(cls, g, c))
if hasattr(torch.optim, "Adafactor"):
    OPTIMIZERS.register("adafactor", lambda g, c: _construct(torch.optim.Adafactor, g, c))


def encoder_parameter_ids(model: nn.Module) -> set[int]:
    """ids of the parameters of the model's (pretrained) encoder: the first submodule named ``encoder``."""
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] == "encoder":
            return {id(p) for p in module.parameters()}
    return set()


def param_groups(model: nn.Module, weight_decay: float, encoder_lr_mult: float = 1.0) -> list[dict]:
    """Groups by (encoder or not) x (decayed or not); weight decay on conv/linear weights, not on norms and biases.

    Each group carries ``lr_scale``: ``set_lr`` gives it ``lr * lr_scale``.
    """
    encoder = encoder_parameter_ids(model) if encoder_lr_mult != 1.0 else set()
    buckets: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for p in model.parameters():
        if p.requires_grad:
            buckets.setdefault((id(p) in encoder, p.ndim > 1), []).append(p)
    groups = []
    for (in_encoder, decayed), params in sorted(buckets.items()):
        groups.append({"params": params, "weight_decay": weight_decay if decayed else 0.0,
                       "lr_scale": encoder_lr_mult if in_encoder else 1.0})
    return groups


def create_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    if cfg.encoder_lr_mult != 1.0 and not encoder_parameter_ids(model):
        raise ConfigError(f"optim.encoder_lr_mult is {cfg.encoder_lr_mult} but this model has no encoder; "
                          "leave it at 1.0")
    return OPTIMIZERS.get(cfg.name)(param_groups(model, cfg.weight_decay, cfg.encoder_lr_mult), cfg)


ONE_CYCLE_RISE = 0.3  # torch's OneCycleLR defaults: pct_start 0.3, div_factor 25, final_div_factor 1e4
ONE_CYCLE_START = 1 / 25
ONE_CYCLE_END = ONE_CYCLE_START / 1e4


def _cos_between(start: float, end: float, t: float) -> float:
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * t))


def lr_factor(progress: float, cfg: OptimConfig) -> float:
    """Multiplier of ``cfg.lr`` at ``progress`` in [0, 1]: linear warm-up, then the schedule.

    One-cycle has its own warm-up (cosine from lr/25 to lr over the first 30%, then cosine down to lr/25e4),
    as torch's OneCycleLR; ``warmup`` does not apply to it. Cosine and poly decay over the progress after the
    warm-up; step milestones are fractions of the whole training (a milestone inside the warm-up applies from its
    end).
    """
    p = min(max(progress, 0.0), 1.0)
    if cfg.scheduler == "onecycle":
        if p < ONE_CYCLE_RISE:
            return _cos_between(ONE_CYCLE_START, 1.0, p / ONE_CYCLE_RISE)
        return _cos_between(1.0, ONE_CYCLE_END, (p - ONE_CYCLE_RISE) / (1 - ONE_CYCLE_RISE))
    if cfg.warmup > 0 and p < cfg.warmup:
        return max(p / cfg.warmup, 1e-3)
    q = (p - cfg.warmup) / (1.0 - cfg.warmup)
    low = cfg.min_lr_ratio
    if cfg.scheduler == "cosine":
        return _cos_between(1.0, low, q)
    if cfg.scheduler == "poly":
        return low + (1 - low) * (1 - q) ** cfg.poly_power
    if cfg.scheduler == "step":  # x gamma at each milestone: fractions of the whole training, warm-up included
        return cfg.step_gamma ** sum(p >= m for m in cfg.step_milestones)
    return 1.0


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
