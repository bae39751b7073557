"""Registered losses on logits (N, C, H, W) and class-index targets (N, H, W); void pixels never count.

A run's loss is a weighted sum of named terms (``loss: {ce: 1.0, dice: 1.0}``). Each builder gets a
``LossContext``: the number of classes, the mode and the resolved class weights.

Modes. ``multiclass``: softmax over the C logits; region losses (dice, jaccard, tversky, lovasz) average
over classes. ``binary`` (two-class tasks): the foreground probability is sigmoid(l1 - l0), which equals
the two-class softmax, so models keep two outputs and every downstream step (argmax, metrics, export) is
unchanged; region losses then score the foreground only (smp's binary mode), ``lovasz`` is the Lovász
hinge and ``bce`` is binary cross-entropy. ``auto`` (default) is binary for two classes.

No loss returns NaN when a batch holds only void pixels or when a class is absent from it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import nn

from pixelwise.config import LossConfig
from pixelwise.counts import count_bins
from pixelwise.data.classes import IGNORE
from pixelwise.errors import ConfigError
from pixelwise.registry import Registry


@dataclass(frozen=True)
class LossContext:
    num_classes: int
    binary: bool
    class_weights: torch.Tensor | None  # (C,) float32, resolved (never 'auto')
    cfg: LossConfig


LossBuilder = Callable[[LossContext], nn.Module]
LOSSES: Registry[LossBuilder] = Registry("loss")


def median_frequency_weights(per_image_counts: np.ndarray) -> np.ndarray:
    """Median-frequency balancing (Eigen & Fergus 2015, used by SegNet on CamVid).

    freq(c) = pixels of class c / labelled pixels of the images where c is present; weight(c) =
    median(freq) / freq(c). A class absent from every image gets weight 1 (it never occurs as a target).

    Args:
        per_image_counts: (images, classes) labelled pixels per class in each training mask.
    """
    counts = np.asarray(per_image_counts, dtype=np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    present = counts > 0
    class_pixels = counts.sum(axis=0)
    area = (present * totals).sum(axis=0)
    seen = class_pixels > 0
    weights = np.ones(counts.shape[1])
    if seen.any():
        freq = class_pixels[seen] / area[seen]
        weights[seen] = np.median(freq) / freq
    return weights


def resolve_class_weights(cfg: LossConfig, num_classes: int) -> torch.Tensor | None:
    """Explicit class weights as a tensor; 'auto' must have been resolved from the data before this."""
    if cfg.class_weights is None:
        return None
    if cfg.class_weights == "auto":
        raise ConfigError("loss.class_weights 'auto' is computed from the training masks; build the loss "
                          "through the trainer, or give the weights as a list")
    if len(cfg.class_weights) != num_classes:
        raise ConfigError(f"loss.class_weights has {len(cfg.class_weights)} values for {num_classes} classes")
    return torch.tensor(cfg.class_weights, dtype=torch.float32)


def takes_weights(name: str, binary: bool) -> bool:
    """Whether term ``name`` uses loss.class_weights (the others are reported as unweighted, not failed)."""
    return name in {"ce", "bce"} or (not binary and name in {"focal", "dice", "jaccard", "tversky"})


def margin(logits: torch.Tensor) -> torch.Tensor:
    """(N, 2, H, W) logits -> (N, 1, H, W) foreground logit l1 - l0: sigmoid of it is the 2-class softmax."""
    return logits[:, 1:2] - logits[:, 0:1]


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
def _ce(ctx: LossContext) -> nn.Module:
    return CrossEntropy(ctx.class_weights, ctx.cfg.label_smoothing)


class BinaryCrossEntropy(nn.Module):
    """BCE of the foreground logit over labelled pixels; class weights [w0, w1] weight pixels by their class.

    Label smoothing moves the targets to eps/2 and 1 - eps/2.
    """

    def __init__(self, weight: torch.Tensor | None, label_smoothing: float) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        keep = target != IGNORE
        z = margin(logits)[:, 0][keep]
        y = target[keep]
        soft = y.to(z.dtype) * (1 - self.label_smoothing) + self.label_smoothing / 2
        per_pixel = F.binary_cross_entropy_with_logits(z, soft, reduction="none")
        if self.weight is None:
            return per_pixel.sum() / keep.sum().clamp(min=1)
        w = self.weight[y]
        return (per_pixel * w).sum() / w.sum().clamp(min=1e-6)


@LOSSES.register("bce")
def _bce(ctx: LossContext) -> nn.Module:
    if ctx.num_classes != 2:
        raise ConfigError(f"loss 'bce' is for binary (two-class) tasks; this data has {ctx.num_classes} classes: "
                          "use 'ce' (softmax cross-entropy) instead")
    return BinaryCrossEntropy(ctx.class_weights, ctx.cfg.label_smoothing)


class OnMargin(nn.Module):
    """Applies an smp binary-mode loss to the foreground logit of two-class logits."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss(margin(logits), target.unsqueeze(1))


class VoidSafe(nn.Module):
    """Returns 0 (with a graph) for a batch without labelled pixels, where ``loss`` would average nothing: NaN."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if not (target != IGNORE).any():  # one host sync; only losses that need it are wrapped
            return logits.sum() * 0.0
        return self.loss(logits, target)


def _weights_list(ctx: LossContext) -> list[float] | None:
    """Class weights for smp's multiclass losses (binary mode scores the foreground only: no weights)."""
    return None if ctx.class_weights is None or ctx.binary else ctx.class_weights.tolist()


def _smp(make: Callable[[str], nn.Module], ctx: LossContext, void_safe: bool = False) -> nn.Module:
    """An smp loss in the context's mode (binary losses see the foreground logit)."""
    loss = OnMargin(make("binary")) if ctx.binary else make("multiclass")
    return VoidSafe(loss) if void_safe else loss


class SoftOverlap(nn.Module):
    """Multiclass Tversky loss (Dice: alpha = beta = 0.5; Jaccard: alpha = beta = 1) scored as smp's losses score
    it: soft scores of the softmax over the batch's labelled pixels, one per class, 0 for a class absent from
    the labels, averaged over classes (weighted by class weights if given).

    The per-class sums are taken without a one-hot target or smp's L1 norm: the true positives of class c are
    the probabilities of c gathered at the pixels labelled c; the predicted total is one batched product with
    the labelled-pixel mask. Same value and gradient as smp's, about 3x less time on a CamVid batch
    (docs/performance.md). The gather and the scatters are one-dimensional (deterministic on CUDA too) and
    nothing waits for the device.
    """

    def __init__(self, alpha: float, beta: float, weight: torch.Tensor | None, eps: float = 1e-7) -> None:
        super().__init__()
        self.alpha, self.beta, self.eps = alpha, beta, eps
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        n, c = logits.shape[:2]
        p = logits.to(memory_format=torch.contiguous_format).softmax(1).view(n, c, -1)
        keep = (target != IGNORE).view(n, -1)
        label = torch.where(keep, target.view(n, -1), 0)
        mask = keep.to(p.dtype)
        with torch.autocast(p.device.type, enabled=False):  # a loss called under autocast keeps float32 sums
            total = torch.bmm(p, mask.unsqueeze(2)).sum((0, 2))  # sum of p_c over labelled pixels
        pixels = p.shape[2]
        where = (torch.arange(n, device=p.device).unsqueeze(1) * c + label) * pixels + torch.arange(
            pixels, device=p.device)
        hit = p.reshape(-1).gather(0, where.view(-1)) * mask.view(-1)  # p of each pixel's own class
        tp = p.new_zeros(c).scatter_add_(0, label.view(-1), hit)
        # labelled pixels per class, void ones in an extra bin (boolean indexing would wait for a GPU)
        count = count_bins(torch.where(keep, label, c), c + 1)[:c].to(p.dtype)
        score = tp / (tp + self.alpha * (total - tp) + self.beta * (count - tp)).clamp_min(self.eps)
        loss = (1 - score) * (count > 0)
        if self.weight is None:
            return loss.mean()
        return (loss * self.weight).sum() / self.weight.sum()


def _overlap(ctx: LossContext, alpha: float, beta: float, binary: Callable[[], nn.Module]) -> nn.Module:
    """Multiclass: SoftOverlap; binary: smp's loss on the foreground logit."""
    return OnMargin(binary()) if ctx.binary else SoftOverlap(alpha, beta, ctx.class_weights)


@LOSSES.register("dice")
def _dice(ctx: LossContext) -> nn.Module:
    return _overlap(ctx, 0.5, 0.5, lambda: smp.losses.DiceLoss("binary", ignore_index=IGNORE))


@LOSSES.register("jaccard")
def _jaccard(ctx: LossContext) -> nn.Module:
    return _overlap(ctx, 1.0, 1.0, lambda: smp.losses.JaccardLoss("binary", ignore_index=IGNORE))


@LOSSES.register("tversky")
def _tversky(ctx: LossContext) -> nn.Module:
    a, b = ctx.cfg.tversky_alpha, ctx.cfg.tversky_beta
    return _overlap(ctx, a, b, lambda: smp.losses.TverskyLoss("binary", ignore_index=IGNORE, alpha=a, beta=b))


@LOSSES.register("focal")
def _focal(ctx: LossContext) -> nn.Module:
    w = _weights_list(ctx)
    gamma = ctx.cfg.focal_gamma
    return _smp(lambda mode: smp.losses.FocalLoss(mode, gamma=gamma, ignore_index=IGNORE, class_weights=w), ctx,
                void_safe=True)


@LOSSES.register("lovasz")
def _lovasz(ctx: LossContext) -> nn.Module:
    return _smp(lambda mode: smp.losses.LovaszLoss(mode, ignore_index=IGNORE), ctx, void_safe=True)


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


LOSSES.register("mae", lambda ctx: ProbabilityError(1))
LOSSES.register("mse", lambda ctx: ProbabilityError(2))


class CompoundLoss(nn.Module):
    """Weighted sum of named losses; logits are cast to float32 so bf16 autocast cannot hurt the loss, and to
    the contiguous (N, C, H, W) layout in the same copy: softmax and cross-entropy over classes run faster on it
    than on a channels_last model's output."""

    def __init__(self, terms: dict[str, nn.Module], weights: dict[str, float], unweighted: list[str] = ()) -> None:
        super().__init__()
        self.terms = nn.ModuleDict(terms)
        self.weights = weights
        self.unweighted = list(unweighted)  # terms that do not use the configured class weights

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, target = logits.to(torch.float32, memory_format=torch.contiguous_format), target.long()
        return sum(self.weights[name] * term(logits, target) for name, term in self.terms.items())


def create_loss(cfg: LossConfig, num_classes: int) -> CompoundLoss:
    """The run's loss from its config (class weights given as a list or already resolved from 'auto')."""
    if cfg.mode == "binary" and num_classes != 2:
        raise ConfigError(f"loss.mode is binary but the data has {num_classes} classes; use multiclass or auto")
    binary = cfg.mode == "binary" or (cfg.mode == "auto" and num_classes == 2)
    ctx = LossContext(num_classes, binary, resolve_class_weights(cfg, num_classes), cfg)
    unweighted = [n for n in cfg.terms if ctx.class_weights is not None and not takes_weights(n, binary)]
    return CompoundLoss({n: LOSSES.get(n)(ctx) for n in cfg.terms}, dict(cfg.terms), unweighted)
