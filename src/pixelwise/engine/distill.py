"""Knowledge distillation (``loss.distill``): a trained run teaches a new one.

The student's loss is its ground-truth loss plus ``weight * T^2 * KL(p_teacher^T || p_student^T)``, where p^T is
the softmax of the logits divided by the temperature T (Hinton et al. 2015; the T^2 keeps the soft term's gradients
on the scale of the hard one's as T grows). The KL is summed over classes and averaged over pixels: every pixel by
default (``pixels: all``, void ones included, since the teacher has an answer where the annotator had none; pad
regions of small images are void too and are then distilled towards the teacher's view of the padding), or only
the labelled ones (``pixels: labelled``).

The teacher is loaded once, in ``engine.setup.prepare``, from its run directory (config.yaml and best.safetensors:
no pickle), in eval mode with gradients off, and runs on the training batch under the run's autocast (the fast
precision). It is part of the loss, not of the trained model: DDP never wraps it, so under torchrun every rank runs
its own copy on its own batch. Evaluation calls the loss without images: there it is the ground-truth loss alone, so
val loss stays comparable with runs trained without a teacher. Teacher outputs are not cached: augmentation makes
every batch new.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pixelwise.config import Config, load_run_config
from pixelwise.config_sections import DistillConfig
from pixelwise.data.classes import IGNORE, ClassTable
from pixelwise.engine.checkpoint import load_run_network
from pixelwise.engine.runtime import Runtime
from pixelwise.errors import PixelwiseError
from pixelwise.models.factory import CUSTOM_ARCH


def teacher_config(run_dir: Path) -> Config:
    """The teacher run's resolved config, or an error naming loss.distill.teacher and what is missing."""
    key = "loss.distill.teacher"
    try:
        cfg = load_run_config(run_dir)
    except PixelwiseError as e:  # ConfigError too: an edited or unresolved config.yaml
        raise type(e)(f"{key}: {e}") from None
    if cfg.model.arch == CUSTOM_ARCH:
        raise PixelwiseError(f"{key}: {run_dir} trained your own nn.Module, which its config cannot rebuild; "
                             "distil from a run of a registered architecture")
    return cfg


def check_teacher(teacher: Config, run_dir: Path, table: ClassTable, channels: int, dtype: str | None) -> None:
    """Refuse a teacher whose classes, channels or pixel type differ from the student's data."""
    key = f"loss.distill.teacher {run_dir}"
    names = teacher.data.classes.names
    if names != table.names:
        raise PixelwiseError(f"{key}: the teacher was trained on the classes {names}, the student's data has "
                             f"{table.names}; a teacher's probabilities only teach the same classes in the same "
                             "order: distil on the teacher's data (or its class table), or train a teacher on these")
    if int(teacher.model.in_channels) != channels:
        raise PixelwiseError(f"{key}: the teacher takes {teacher.model.in_channels} channel(s), the student's images "
                             f"have {channels}; both must see the same images")
    if teacher.data.dtype is not None and dtype is not None and teacher.data.dtype != dtype:
        raise PixelwiseError(f"{key}: the teacher was trained on {teacher.data.dtype} images, the student's are "
                             f"{dtype}; both must see the same images")


def load_teacher(run_dir: Path, table: ClassTable, channels: int, dtype: str | None, runtime: Runtime) -> nn.Module:
    """The teacher network (with its own normalisation inside) on the run's device, eval mode, no gradients."""
    cfg = teacher_config(run_dir)
    check_teacher(cfg, run_dir, table, channels, dtype)
    try:
        net = load_run_network(run_dir, cfg)
    except PixelwiseError as e:  # no best.safetensors yet
        raise PixelwiseError(f"loss.distill.teacher: {e}") from None
    memory_format = torch.channels_last if runtime.channels_last else torch.preserve_format
    net = net.to(runtime.device, memory_format=memory_format).eval()
    net.requires_grad_(False)
    return net


def distill_kl(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor, temperature: float,
               labelled_only: bool) -> torch.Tensor:
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)), summed over classes, averaged over the pixels used.

    Args:
        student, teacher: logits (N, K, H, W); target: (N, H, W) class indices, 255 = void.
    """
    t = temperature
    log_p_student = F.log_softmax(student.float() / t, dim=1)
    log_p_teacher = F.log_softmax(teacher.float() / t, dim=1)
    per_pixel = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=1)  # (N, H, W)
    if labelled_only:
        keep = target != IGNORE
        return per_pixel[keep].sum() / keep.sum().clamp(min=1) * t * t
    return per_pixel.mean() * t * t


class DistillLoss(nn.Module):
    """The ground-truth loss plus the distillation term; called with the batch's images during training.

    ``needs_images`` tells the trainer to pass them; without images (evaluation) it is the ground-truth loss.
    """

    needs_images = True

    def __init__(self, loss: nn.Module, teacher: nn.Module, cfg: DistillConfig, runtime: Runtime) -> None:
        super().__init__()
        self.loss = loss
        self.teacher = teacher
        self.cfg = cfg
        self.runtime = runtime
        self.unweighted = getattr(loss, "unweighted", [])

    def train(self, mode: bool = True) -> DistillLoss:
        super().train(mode)
        self.teacher.eval()  # the teacher's BatchNorm statistics and dropout stay as they were trained
        return self

    def teacher_logits(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), self.runtime.autocast():
            return self.teacher(images)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, images: torch.Tensor | None = None) -> torch.Tensor:
        hard = self.loss(logits, target)
        if images is None:
            return hard
        soft = distill_kl(logits, self.teacher_logits(images), target.long(), self.cfg.temperature,
                          self.cfg.pixels == "labelled")
        return hard + self.cfg.weight * soft


def with_teacher(criterion: nn.Module, cfg: DistillConfig, table: ClassTable, channels: int, dtype: str | None,
                 runtime: Runtime) -> DistillLoss:
    """Wrap the run's loss with distillation from ``cfg.teacher`` (checked against the student's data)."""
    teacher = load_teacher(Path(cfg.teacher).expanduser(), table, channels, dtype, runtime)
    return DistillLoss(criterion, teacher, cfg, runtime)
