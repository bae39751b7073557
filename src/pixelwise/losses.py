"""Registered losses on logits (N, C, H, W) and class-index targets (N, H, W); void pixels never count.

A run's loss is a weighted sum of named terms (``loss: {ce: 1.0, dice: 1.0}``).
"""

from __future__ import annotations

from collections.abc import Callable

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import nn

from pixelwise.config import LossConfig
from pixelwise.data.classes import IGNORE
from pixelwise.errors import ConfigError
from pixelwise.registry import Registry

LossBuilder = Callable[[int, LossConfig], nn.Module]
LOSSES: Registry[LossBuilder] = Registry("loss")


def _class_weights(num_classes: int, cfg: LossConfig) -> torch.Tensor | None:
    if cfg.class_weights is None:
        return None
    if len(cfg.class_weights) != num_classes:
        raise ConfigError(f"loss.class_weights has {len(cfg.class_weights)} values for {num_classes} classes")
    return torch.tensor(cfg.class_weights, dtype=torch.float32)


class CrossEntropy(nn.Module):
    """Cross-entropy averaged over labelled pixels (weighted like torch's mean); an all-void batch gives 0.

    torch's ``reduction='mean'`` divides by zero when a crop holds only void pixels and returns NaN.
    """

    def __init__(self, weight: torch.Tensor | None, label_smoothing: float) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = F.cross_entropy(logits, target, weight=self.weight, ignore_index=IGNORE, reduction="sum",
                                label_smoothing=self.label_smoothing)
        keep = target != IGNORE
        count = self.weight[target[keep]].sum() if self.weight is not None else keep.sum()
        return total / count.clamp(min=1e-6)


@LOSSES.register("ce")
def _ce(num_classes: int, cfg: LossConfig) -> nn.Module:
    return CrossEntropy(_class_weights(num_classes, cfg), cfg.label_smoothing)


@LOSSES.register("dice")
def _dice(num_classes: int, cfg: LossConfig) -> nn.Module:
    return smp.losses.DiceLoss("multiclass", ignore_index=IGNORE)


@LOSSES.register("jaccard")
def _jaccard(num_classes: int, cfg: LossConfig) -> nn.Module:
    return smp.losses.JaccardLoss("multiclass", ignore_index=IGNORE)


class VoidSafe(nn.Module):
    """Returns 0 (with a graph) for a batch without labelled pixels, where ``loss`` would average nothing: NaN."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if not (target != IGNORE).any():  # one host sync; only losses that need it are wrapped
            return logits.sum() * 0.0
        return self.loss(logits, target)


@LOSSES.register("focal")
def _focal(num_classes: int, cfg: LossConfig) -> nn.Module:
    return VoidSafe(smp.losses.FocalLoss("multiclass", ignore_index=IGNORE))


class ProbabilityError(nn.Module):
    """Mean absolute (p=1) or squared (p=2) error between softmax probabilities and the one-hot target."""

    def __init__(self, power: int) -> None:
        super().__init__()
        self.power = power

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        keep = target != IGNORE
        probs = logits.softmax(dim=1).permute(0, 2, 3, 1)[keep]  # (P, C)
        onehot = F.one_hot(target[keep].long(), logits.shape[1]).to(probs.dtype)
        err = (probs - onehot).abs() if self.power == 1 else (probs - onehot).square()
        # Sum over classes, mean over labelled pixels; an all-void batch gives 0, not NaN.
        return err.sum(dim=1).sum() / keep.sum().clamp(min=1)


LOSSES.register("mae", lambda num_classes, cfg: ProbabilityError(1))
LOSSES.register("mse", lambda num_classes, cfg: ProbabilityError(2))


class CompoundLoss(nn.Module):
    """Weighted sum of named losses; logits are cast to float32 so bf16 autocast cannot hurt the loss."""

    def __init__(self, terms: dict[str, nn.Module], weights: dict[str, float]) -> None:
        super().__init__()
        self.terms = nn.ModuleDict(terms)
        self.weights = weights

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, target = logits.float(), target.long()
        return sum(self.weights[name] * term(logits, target) for name, term in self.terms.items())


def create_loss(cfg: LossConfig, num_classes: int) -> CompoundLoss:
    """The run's loss from its config."""
    return CompoundLoss({n: LOSSES.get(n)(num_classes, cfg) for n in cfg.terms}, dict(cfg.terms))
