"""Optimizers by name, parameter groups, and learning-rate schedules as functions of training progress.

Schedules take progress p in [0, 1] rather than a step count: with a time budget the number of steps is
not known in advance, so progress is max(step / planned steps, elapsed / time budget).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from pixelwise.config import OptimConfig
from pixelwise.registry import Registry

OptimizerBuilder = Callable[[list[dict], OptimConfig], torch.optim.Optimizer]
OPTIMIZERS: Registry[OptimizerBuilder] = Registry("optimizer")

OPTIMIZERS.register(
    "sgd",
    lambda groups, c: torch.optim.SGD(groups, lr=c.lr, momentum=c.momentum, nesterov=c.nesterov and c.momentum > 0,
                                      foreach=True),
)
OPTIMIZERS.register("adam", lambda groups, c: torch.optim.Adam(groups, lr=c.lr, foreach=True))
OPTIMIZERS.register("adamw", lambda groups, c: torch.optim.AdamW(groups, lr=c.lr, foreach=True))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weights of convolutions and linear layers only, not on norms and biases."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def create_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    return OPTIMIZERS.get(cfg.name)(param_groups(model, cfg.weight_decay), cfg)


def lr_factor(progress: float, cfg: OptimConfig) -> float:
    """Multiplier of ``cfg.lr`` at ``progress`` in [0, 1]: linear warm-up, then the schedule."""
    p = min(max(progress, 0.0), 1.0)
    if cfg.warmup > 0 and p < cfg.warmup:
        return max(p / cfg.warmup, 1e-3)
    q = (p - cfg.warmup) / (1.0 - cfg.warmup)
    low = cfg.min_lr_ratio
    if cfg.scheduler == "cosine":
        return low + (1 - low) * 0.5 * (1 + math.cos(math.pi * q))
    if cfg.scheduler == "poly":
        return low + (1 - low) * (1 - q) ** 0.9
    if cfg.scheduler == "step":  # x0.1 at 1/3 and 2/3 of training
        return max(0.1 ** math.floor(q * 3 if q < 1 else 2), low)
    return 1.0


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
