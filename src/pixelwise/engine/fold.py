"""BatchNorm folded into the convolution before it, for evaluation: one pass over each activation less.

In evaluation mode a BatchNorm with running statistics is a fixed per-channel scale and shift, so a convolution
whose only consumer is that BatchNorm can carry both in its weights and bias. torch.fx finds the pairs: the
network is traced where it can be, and where it cannot (shape-dependent Python in a forward), each child is
traced instead. The pairs are then folded in a copy of the network with its own classes and forward methods
kept: the convolution becomes the folded one (torch's ``fuse_conv_bn_eval``), the BatchNorm an ``Identity`` (of
timm's BatchNorm-and-activation, its activation stays). On the bf16 CPU this is about 10% of an evaluation pass of
Unet-resnet18 on CamVid (docs/performance.md). The copy is made for each evaluation, from the weights as they
are, so training never sees it.
"""

from __future__ import annotations

import copy
from collections import Counter

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
LOW_PRECISION = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)  # autocast runs these in its low precision
PAIRS = {nn.Conv1d: nn.BatchNorm1d, nn.Conv2d: nn.BatchNorm2d, nn.Conv3d: nn.BatchNorm3d}  # exact types only


def _timm_layers() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """timm's layers that fold: its BatchNorm with the activation after it (EfficientNet, MobileNet, ...
    encoders; ``forward``: batch_norm, then ``drop``, then ``act``, so the BatchNorm part folds and the rest stays)
    and its 'same'-padded convolution (padding, then the plain convolution with its weight and bias)."""
    try:
        from timm.layers import BatchNormAct2d, Conv2dSame
    except ImportError:
        return (), ()
    return (BatchNormAct2d,), (Conv2dSame,)


NORM_ACT, CONV_2D_SAME = _timm_layers()


class _Tracer(fx.Tracer):
    """torch.fx's tracer, with timm's two layers above kept as one call each, as torch's own layers are (traced
    into, their shape-dependent padding would fail the trace of every block that holds one)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return type(m) in NORM_ACT or type(m) in CONV_2D_SAME or super().is_leaf_module(m, qualname)


def count_batch_norms(model: nn.Module) -> int:
    return sum(isinstance(m, BATCH_NORMS) for m in model.modules())


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    kind = nn.Conv2d if type(conv) in CONV_2D_SAME else type(conv)
    pair = PAIRS.get(kind) is type(bn) or (kind is nn.Conv2d and type(bn) in NORM_ACT)
    return pair and bn.running_mean is not None and bn.running_var is not None


def _after_fold(bn: nn.Module) -> nn.Module:
    """What stays of a folded BatchNorm: nothing, or timm's dropout and activation."""
    return nn.Sequential(bn.drop, bn.act) if type(bn) in NORM_ACT else nn.Identity()


def conv_bn_pairs(module: nn.Module, prefix: str = "") -> list[tuple[str, str]]:
    """Qualified names of (convolution, BatchNorm) pairs where the BatchNorm takes the convolution's output and
    nothing else does, and each is called once; ``module`` must be in evaluation mode."""
    if count_batch_norms(module) == 0:
        return []
    try:
        graph = _Tracer().trace(module)
    except Exception:  # noqa: BLE001 - anything torch.fx cannot trace: look inside its children instead
        return [pair for name, child in module.named_children() for pair in conv_bn_pairs(child, f"{prefix}{name}.")]
    calls = Counter(node.target for node in graph.nodes if node.op == "call_module")
    pairs = []
    for node in graph.nodes:
        source = node.args[0] if node.op == "call_module" and len(node.args) == 1 and not node.kwargs else None
        if not (isinstance(source, fx.Node) and source.op == "call_module" and len(source.users) == 1):
            continue
        if calls[node.target] == 1 and calls[source.target] == 1 and _foldable(
                module.get_submodule(source.target), module.get_submodule(node.target)):
            pairs.append((prefix + source.target, prefix + node.target))
    return pairs


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


def _cast_on_first_call(module: nn.Module, dtype: torch.dtype) -> None:
    """Hold ``module``'s weights in ``dtype`` from its first call on, if that call runs under autocast to ``dtype``.

    Decided per layer at its first call, not for every layer up front: a network may turn autocast off around a
    part of it (a classifier kept in fp32, say), and a layer there gets fp32 input, which bf16 weights would fail
    ("Input type (float) and bias type (c10::BFloat16) should be the same"). Such a layer keeps its fp32 weights,
    as autocast would have. The hook removes itself, so later calls cost nothing.
    """
    def cast(m: nn.Module, args: tuple) -> None:
        handle.remove()
        device = next(m.parameters()).device.type
        if torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) == dtype:
            m.to(dtype)

    handle = module.register_forward_pre_hook(cast)


def fold_batch_norms(model: nn.Module, channels_last: bool = False, dtype: torch.dtype | None = None) -> nn.Module:
    """An evaluation-mode copy of ``model`` with its conv -> BatchNorm pairs folded, or ``model`` itself when there
    are none. The original keeps its weights and the mode it was in.

    ``dtype``: the autocast dtype the copy will run under. Its convolutions and linear layers then hold their
    weights in it (from each one's first call under that autocast on; see ``_cast_on_first_call``), the very values
    autocast would cast them to on every call.
    """
    if count_batch_norms(model) == 0:
        return model
    was_training = model.training
    model.eval()
    pairs = conv_bn_pairs(model)
    model.train(was_training)
    if not pairs:
        return model
    folded = copy.deepcopy(model)
    folded.eval()  # not chained: .eval() returns what .train() does, and a caller may have replaced that
    with torch.no_grad():
        for conv, bn in pairs:
            norm = folded.get_submodule(bn)
            _replace(folded, conv, fuse_conv_bn_eval(folded.get_submodule(conv), norm))
            _replace(folded, bn, _after_fold(norm))
    if dtype is not None:
        for m in folded.modules():
            if type(m) in LOW_PRECISION or type(m) in CONV_2D_SAME:
                _cast_on_first_call(m, dtype)
    if channels_last:
        folded = folded.to(memory_format=torch.channels_last)
    return folded
