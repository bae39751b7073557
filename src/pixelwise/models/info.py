"""Size and cost of a model: parameters and GFLOPs of one forward pass at a given input size."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from pixelwise.models.factory import ARCHITECTURES, create_model


def _rnn_flops(module: nn.RNNBase, inputs: tuple[torch.Tensor, ...]) -> int:
    """Multiply-adds x 2 of a (bidirectional) GRU/LSTM over its input; the flop counter does not see RNN kernels."""
    x = inputs[0]
    batch, steps = (x.shape[0], x.shape[1]) if module.batch_first else (x.shape[1], x.shape[0])
    gates = {"GRU": 3, "LSTM": 4}.get(module.mode, 1)
    directions = 2 if module.bidirectional else 1
    h = module.hidden_size
    return 2 * batch * steps * directions * gates * h * (module.input_size + h)


def model_info(arch: str, encoder: str = "resnet18", in_channels: int = 3, classes: int = 12,
               size: tuple[int, int] = (320, 320), **options: Any) -> dict[str, Any]:
    """Parameters (millions) and GFLOPs of one forward pass of a (1, in_channels, H, W) input."""
    model = create_model(arch, encoder, in_channels, classes, **options).eval()
    rnn_flops = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: Any) -> None:
        nonlocal rnn_flops
        rnn_flops += _rnn_flops(module, inputs)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.RNNBase)]
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(torch.zeros(1, in_channels, *size))
    for handle in handles:
        handle.remove()
    return {
        "arch": arch,
        "encoder": encoder if ARCHITECTURES.get(arch).uses_encoder else None,
        "params_millions": sum(p.numel() for p in model.parameters()) / 1e6,
        "gflops": (counter.get_total_flops() + rnn_flops) / 1e9,
        "input": [1, in_channels, *size],
    }
